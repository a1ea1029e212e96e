"""β-VAE: the KL weight β ∈ {0.5, 1, 2, 4} against reconstruction, KL and the ELBO.

Each model maximizes ``E_q[log p(x|z)] - β KL(q(z|x) ‖ p(z))``; β is applied with
``poutine.scale`` at the latent site in model and guide. All are scored with β = 1 (the ELBO
proper), so larger β trades reconstruction for a smaller KL and usually a lower ELBO; β < 1
does the reverse. The latent scatter shows how β spreads or packs the codes (2-D latent).

    python examples/beta_vae.py --dataset fashion-mnist --epochs 10
    python examples/beta_vae.py --smoke

Writes ``beta_vae.png`` (latent means per β, coloured by label), each run's figures under
``beta<β>/figures/``, and ``results.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

from pyro_vae import Config, train_run
from pyro_vae.infer.evaluation import latent_means
from pyro_vae.lab.reporting import write_results

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _common import SMOKE_DATA, add_run_options


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "mnist",
                                                                  "digits"))
    p.add_argument("--betas", default="0.5,1,2,4", type=lambda s: [float(v) for v in s.split(",")])
    p.add_argument("--latent-dim", type=int, default=2)
    p.add_argument("--epochs", type=int, default=10)
    add_run_options(p, "runs/beta-vae", "a seconds-long run on digits")
    args = p.parse_args()
    data_options = dict(SMOKE_DATA, epochs=1) if args.smoke \
        else dict(dataset=args.dataset, epochs=args.epochs)
    out = Path(args.out)

    fig, axes = plt.subplots(1, len(args.betas), figsize=(4.5 * len(args.betas), 4.5),
                             squeeze=False)
    rows = []
    for ax, beta in zip(axes[0], args.betas, strict=True):
        config = Config(**data_options, beta=beta, latent_dim=args.latent_dim, seed=args.seed,
                        device=args.device)
        start = time.perf_counter()
        run = train_run(config, out / f"beta{beta:g}", progress=False)
        seconds = time.perf_counter() - start
        last = run.history[-1]
        rows.append([f"{beta:g}", last["epoch"], f"{seconds:.0f}",
                     f"{last['test_elbo']:.2f} ± {last['test_elbo_se']:.2f}",
                     last["test_recon"], last["test_kl"], -last["train_loss"]])
        codes = latent_means(run.trainer.vae, run.trainer.data).cpu()
        labels = run.trainer.data.y_test
        ax.scatter(codes[:, 0], codes[:, 1], s=3, cmap="tab10",
                   c=None if labels is None else labels[:codes.shape[0]].cpu())
        ax.set(title=f"β = {beta:g}: μ(x) of test points", xlabel="z₁", ylabel="z₂")
    fig.tight_layout()
    fig.savefig(out / "beta_vae.png", dpi=110)
    write_results(out, f"β-VAE on {config.dataset}, {args.latent_dim}-D latent",
                  ["β", "epochs", "seconds", "test ELBO (β = 1)", "E[log p(x|z)]",
                   "KL(q ‖ p)", "train objective (with β)"], rows)


if __name__ == "__main__":
    main()
