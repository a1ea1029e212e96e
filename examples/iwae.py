"""Importance-weighted objectives side by side, in the form of Burda et al. (2016), Table 1.

The same MLP VAE (784-400-L-400-784 on images, dynamic binarization) trained with: the ELBO
(VAE, k = 1 and k = K draws averaged), IWAE with k = 5 and k = K draws (plain pathwise and DReG
encoder gradients), MIWAE (M groups of K/M), CIWAE (β = 0.5) and PIWAE (decoder on IWAE_K,
encoder on MIWAE). For each run: test log p(x) (IWAE bound with ``--eval-k`` draws, the
literature's 5000 by default), test ELBO, active units (Cov_x E_q[z_u | x] > 0.01), seconds
per training step and its ratio to the ELBO's step at equal K (the cost a user weighs).

Burda et al. report on MNIST: VAE k = 1 −86.76, IWAE k = 50 −84.78 nats (one stochastic layer,
3280 passes); the orderings to look for are IWAE-K > VAE-K > VAE-1 in log p(x), more active
units with IWAE, and DReG ≥ the plain IWAE gradient at equal K.

    python examples/iwae.py --dataset fashion-mnist --max-train 10000 --epochs 10 --particles 50
    python examples/iwae.py --smoke

Writes ``results.md`` and ``iwae.png`` (test ELBO per epoch of every run).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import matplotlib

from pyro_vae import Config, iwae_log_likelihood, train_run
from pyro_vae.infer.evaluation import active_units
from pyro_vae.lab.reporting import write_results

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _common import SMOKE_DATA, add_run_options


def runs(k: int, groups: int) -> dict[str, dict]:
    """Label → the objective options of each run."""
    per_group = max(1, k // groups)
    return {
        "VAE, k = 1": dict(objective="elbo", num_particles=1),
        f"VAE, k = {k} (averaged)": dict(objective="elbo", num_particles=k),
        "IWAE, k = 5": dict(objective="iwae", num_particles=5),
        f"IWAE, k = {k}": dict(objective="iwae", num_particles=k),
        f"IWAE, k = {k}, DReG": dict(objective="iwae", num_particles=k, estimator="dreg"),
        f"MIWAE, {groups} × {per_group}": dict(objective="miwae", num_particles=per_group,
                                               num_groups=groups),
        f"CIWAE, k = {k}, β = 0.5": dict(objective="ciwae", num_particles=k, ciwae_beta=0.5),
        f"PIWAE, {groups} × {per_group}": dict(objective="piwae", num_particles=per_group,
                                               num_groups=groups),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "mnist",
                                                                  "digits"))
    p.add_argument("--latent-dim", type=int, default=50)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-train", type=int, default=None, help="first N training points")
    p.add_argument("--particles", type=int, default=50, help="K of the large-k runs")
    p.add_argument("--groups", type=int, default=5, help="M of MIWAE and PIWAE")
    p.add_argument("--eval-k", type=int, default=5000, help="IWAE draws for test log p(x)")
    p.add_argument("--eval-points", type=int, default=1000, help="test points scored")
    p.add_argument("--only", help="comma-separated substrings: run only matching labels")
    add_run_options(p, "runs/iwae", "a seconds-long run on digits")
    args = p.parse_args()
    data_options = dict(dataset=args.dataset, epochs=args.epochs, max_train=args.max_train)
    if args.smoke:
        data_options = dict(SMOKE_DATA, epochs=1)
        args.particles, args.groups, args.eval_k, args.eval_points = 4, 2, 10, 32
    out = Path(args.out)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    rows, elbo_step, baseline = [], {}, None
    selected = runs(args.particles, args.groups).items()
    if args.only:
        keys = args.only.split(",")
        selected = [(n, o) for n, o in selected if any(k in n for k in keys)]
    for i, (name, objective) in enumerate(selected):
        config = Config(**data_options, **objective, hidden=(400,), latent_dim=args.latent_dim,
                        seed=args.seed, device=args.device, jit=False)
        folder = out / name.split(",")[0].lower().replace(" ", "") / str(i)
        start = time.perf_counter()
        run = train_run(config, folder, progress=False, figures=False)
        seconds = time.perf_counter() - start
        trainer, history = run.trainer, run.history
        step = statistics.median(h["seconds"] for h in history) / trainer.steps_per_epoch
        particles = objective["num_particles"] * objective.get("num_groups", 1)
        if objective["objective"] == "elbo":
            elbo_step[particles] = step
        x = trainer.data.x_test[: args.eval_points]
        log_px = iwae_log_likelihood(trainer.vae, x, num_samples=args.eval_k)
        baseline = log_px if baseline is None else baseline
        diff = log_px - baseline  # paired over the same test points
        last = history[-1]
        ratio = step / elbo_step[particles] if particles in elbo_step else float("nan")
        rows.append([name, f"{float(log_px.mean()):.2f} ± {float(log_px.std()) / len(x)**.5:.2f}",
                     f"{float(diff.mean()):+.2f} ± {float(diff.std()) / len(x)**.5:.2f}",
                     f"{last['test_elbo']:.2f} ± {last['test_elbo_se']:.2f}",
                     f"{active_units(trainer.vae, trainer.data)} / {args.latent_dim}",
                     f"{step * 1e3:.1f}", f"{ratio:.2f}", f"{seconds:.0f}"])
        ax.plot([h["epoch"] for h in history], [h["test_elbo"] for h in history],
                color=f"C{i}", label=name)
    ax.set(xlabel="epoch", ylabel="test ELBO, nats", title="importance-weighted objectives")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "iwae.png", dpi=110)
    write_results(
        out, f"Importance-weighted objectives on {config.dataset} "
        f"({config.max_train or 'all'} training points, {args.epochs} epochs, L = "
        f"{args.latent_dim})",
        ["run", f"test log p(x), IWAE k = {args.eval_k}", "Δ log p(x) vs the first run, paired",
         "test ELBO", "active units",
         "ms / step", "step / ELBO step at equal k", "seconds"], rows,
        notes=f"log p(x) on the first {args.eval_points} test points (± standard error).")


if __name__ == "__main__":
    main()
