"""KL annealing (warm-up): β rises linearly from 0 to 1 over the first epochs, or stays at 1.

Warm-up (Bowman et al. 2016; Sønderby et al. 2016) lets the decoder learn to use z before the
KL term pulls q(z|x) towards the prior, which can leave more latent units active. Both runs use
the same 50-D MLP VAE; the curves show the test ELBO (always scored with β = 1) per epoch, and
active units are counted as in Burda et al. (2016): ``Cov_x(E_q[z_u | x]) > 0.01``.
``--schedule cyclical`` adds the cyclical schedule of Fu et al. (2019).

    python examples/kl_annealing.py --dataset fashion-mnist --epochs 20 --warmup-epochs 10
    python examples/kl_annealing.py --smoke

Writes ``kl_annealing.png`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

from pyro_vae import Config, train_run
from pyro_vae.infer.evaluation import active_units
from pyro_vae.lab.reporting import write_results

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _common import SMOKE_DATA, add_run_options


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "mnist",
                                                                  "digits"))
    p.add_argument("--latent-dim", type=int, default=50)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--warmup-epochs", type=int, default=10)
    p.add_argument("--cyclical", action="store_true", help="also run 4 cycles of β")
    add_run_options(p, "runs/kl-annealing", "a seconds-long run on digits")
    args = p.parse_args()
    data_options = dict(dataset=args.dataset, epochs=args.epochs)
    if args.smoke:
        data_options = dict(SMOKE_DATA, epochs=2)
        args.warmup_epochs = 1
    schedules = {"constant β = 1": dict(kl_schedule="constant"),
                 f"linear warm-up, {args.warmup_epochs} epochs":
                     dict(kl_schedule="linear", warmup_epochs=args.warmup_epochs)}
    if args.cyclical:
        schedules["cyclical, 4 cycles"] = dict(kl_schedule="cyclical", cycles=4)
    out = Path(args.out)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    rows = []
    for i, (name, schedule) in enumerate(schedules.items()):
        config = Config(**data_options, **schedule, latent_dim=args.latent_dim, seed=args.seed,
                        device=args.device)
        start = time.perf_counter()
        run = train_run(config, out / schedule["kl_schedule"], progress=False, figures=False)
        seconds = time.perf_counter() - start
        history, last = run.history, run.history[-1]
        active = active_units(run.trainer.vae, run.trainer.data)
        best = max(history, key=lambda h: h["test_elbo"])
        rows.append([name, last["epoch"], f"{seconds:.0f}",
                     f"{last['test_elbo']:.2f} ± {last['test_elbo_se']:.2f}",
                     last["test_recon"], last["test_kl"], best["epoch"],
                     f"{active} / {args.latent_dim}"])
        epochs = [h["epoch"] for h in history]
        axes[0].plot(epochs, [h["test_elbo"] for h in history], color=f"C{i}", label=name)
        axes[1].plot(epochs, [h["beta"] for h in history], color=f"C{i}", label=name)
    axes[0].set(xlabel="epoch", ylabel="test ELBO (β = 1), nats", title="convergence")
    axes[1].set(xlabel="epoch", ylabel="β at the end of the epoch", title="KL weight")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "kl_annealing.png", dpi=110)
    write_results(out, f"KL annealing on {config.dataset}, {args.latent_dim}-D latent",
                  ["schedule", "epochs", "seconds", "final test ELBO", "E[log p(x|z)]", "KL",
                   "best epoch", "active units"], rows)


if __name__ == "__main__":
    main()
