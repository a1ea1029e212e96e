"""Variance of score-function (with and without baselines) and STL gradients relative to the
reparameterized gradient, on trained VAEs, as a function of S (samples of z per estimate) and
of the latent dimension.

For each data set and latent dimension it trains a VAE with the library's trainer (or reuses
the run folder), runs the estimator lab at the trained parameters on a batch of 64 training
points with R = 100 estimates per setting, and prints a Markdown table of the ratio

    tr Cov[ĝ_estimator] / tr Cov[ĝ_reparam]     (encoder gradient, same KL mode and S)

    python benchmarks/estimator_variance.py --out runs/bench-variance > docs/estimator_variance.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import Config, load_run, train_run
from pyro_vae.lab.variance import run_lab, write_report

SETTINGS = {
    "moons": dict(dataset="moons", epochs=200),
    "fashion-mnist": dict(dataset="fashion-mnist", epochs=10),
}
ESTIMATORS = ("reparam", "score", "score-avg", "score-nn", "stl")


def trained(name: str, latent: int, root: Path) -> Path:
    out = root / f"{name}-L{latent}"
    if not (out / "checkpoint.pt").exists():
        config = Config(latent_dim=latent, **SETTINGS[name])
        train_run(config, out, progress=False, figures=False)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench-variance")
    p.add_argument("--datasets", default="moons,fashion-mnist")
    p.add_argument("--latent-dims", default="2,10,20,50")
    p.add_argument("--samples", default="1,4,16")
    p.add_argument("--repeats", type=int, default=100)
    args = p.parse_args()
    root = Path(args.out)
    samples = tuple(int(s) for s in args.samples.split(","))
    print("| data | L | KL | S | score | score-avg | score-nn | stl | reparam tr Cov | "
          "lab seconds |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in args.datasets.split(","):
        for latent in (int(d) for d in args.latent_dims.split(",")):
            run = load_run(trained(name, latent, root))
            torch.manual_seed(0)
            x = run.data.x_train[:64]
            if run.config.binarize == "dynamic":
                x = torch.bernoulli(x)
            pyro.set_rng_seed(0)
            start = time.perf_counter()
            results = run_lab(run.vae, x, None, ESTIMATORS, samples=samples,
                              repeats=args.repeats)
            seconds = time.perf_counter() - start
            write_report(results, root / f"{name}-L{latent}" / "variance",
                         {"dataset": name, "latent_dim": latent})
            table = {(r.estimator, r.kl, r.num_samples): r.groups["encoder"].total_variance
                     for r in results}
            for kl in ("mc", "analytic"):
                for s in samples:
                    ref = table[("reparam", kl, s)]
                    ratios = " | ".join(f"{table[(e, kl, s)] / ref:.3g}" for e in ESTIMATORS[1:])
                    print(f"| {name} | {latent} | {kl} | {s} | {ratios} | {ref:.3g} | "
                          f"{seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
