"""Latent dimension sweep: reconstruction, KL and test log-likelihood for L ∈ {2, 10, 20, 50, 100}.

The same MLP VAE (784-400-L, Bernoulli likelihood on dynamically binarized pixels) is trained
for each latent dimension L. The ELBO splits into ``E_q[log p(x|z)]`` (improves with L) and
``KL(q ‖ p)`` (grows with L); the test log-likelihood is estimated with IWAE. Beyond some L
the extra units stay inactive (their posterior equals the prior), counted as in Burda et al.
(2016): unit u is active when ``Cov_x(E_q[z_u | x]) > 0.01``.

    python examples/latent_sweep.py --dataset fashion-mnist --epochs 10
    python examples/latent_sweep.py --smoke

Writes ``latent_sweep.png`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

from pyro_vae import Config, iwae_log_likelihood, train_run
from pyro_vae.infer.evaluation import Estimate, active_units
from pyro_vae.lab.reporting import write_results

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _common import SMOKE_DATA, add_run_options


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "mnist",
                                                                  "digits"))
    p.add_argument("--latent-dims", default="2,10,20,50,100",
                   type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iw-samples", type=int, default=1000)
    p.add_argument("--iw-points", type=int, default=1000)
    add_run_options(p, "runs/latent-sweep", "a seconds-long run on digits")
    args = p.parse_args()
    data_options = dict(dataset=args.dataset, epochs=args.epochs)
    if args.smoke:
        data_options = dict(SMOKE_DATA, epochs=1)
        args.latent_dims, args.iw_samples, args.iw_points = [2, 5], 10, 16
    out = Path(args.out)

    rows, curves = [], {"E[log p(x|z)]": [], "-KL": [], "ELBO": [], "IWAE": []}
    for dim in args.latent_dims:
        config = Config(**data_options, latent_dim=dim, seed=args.seed, device=args.device)
        start = time.perf_counter()
        run = train_run(config, out / f"latent{dim}", progress=False, figures=False)
        seconds = time.perf_counter() - start
        vae, data, last = run.trainer.vae, run.trainer.data, run.history[-1]
        iwae = Estimate.of(iwae_log_likelihood(vae, data.x_test[:args.iw_points],
                                               num_samples=args.iw_samples))
        active = active_units(vae, data)
        rows.append([dim, last["epoch"], f"{seconds:.0f}", last["test_recon"], last["test_kl"],
                     f"{last['test_elbo']:.2f} ± {last['test_elbo_se']:.2f}", str(iwae),
                     f"{active} / {dim}"])
        for key, value in (("E[log p(x|z)]", last["test_recon"]), ("-KL", -last["test_kl"]),
                           ("ELBO", last["test_elbo"]), ("IWAE", iwae.mean)):
            curves[key].append(value)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for key in ("E[log p(x|z)]", "ELBO", "IWAE"):
        axes[0].plot(args.latent_dims, curves[key], "o-", label=key)
    axes[1].plot(args.latent_dims, [-v for v in curves["-KL"]], "o-", color="C3")
    axes[0].set(xscale="log", xlabel="latent dimension L", ylabel="nats per image",
                title="test reconstruction and log-likelihood")
    axes[1].set(xscale="log", xlabel="latent dimension L", ylabel="nats per image",
                title="test KL(q(z|x) ‖ p(z))")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "latent_sweep.png", dpi=110)
    write_results(out, f"Latent dimension sweep on {config.dataset}",
                  ["L", "epochs", "seconds", "E[log p(x|z)]", "KL", "test ELBO",
                   f"test IWAE (K={args.iw_samples}, {args.iw_points} points)",
                   "active units"], rows)


if __name__ == "__main__":
    main()
