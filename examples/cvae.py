"""Conditional VAE: generate a chosen class, and move between classes with the style held fixed.

The model is ``p(z) p_θ(x | z, y)`` and the guide ``q_φ(z | x, y)``: the label y (one-hot) goes
into both networks, so z is free to encode what the label does not (style: thickness, slant,
shape within a class). Two figures:

* ``classes.png``: row c holds samples ``x ~ p(x | z, y = c)`` for the same 10 draws of z per
  column, so a column keeps its style across classes;
* ``interpolation.png``: with z fixed, the decoder's class input moves linearly from one class's
  one-hot vector to another's (``decode_mean`` takes rows of class weights).

    python examples/cvae.py --dataset fashion-mnist --epochs 20
    python examples/cvae.py --smoke
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib
import torch
from pyro.infer import Predictive

from pyro_vae import LATENT_SITE, Config, train_run
from pyro_vae.lab.reporting import write_results
from pyro_vae.models import evaluating
from pyro_vae.plots import show_grid

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _common import SMOKE_DATA, add_run_options


def show(images: torch.Tensor, nrow: int, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(0.8 * nrow, 0.8 * images.shape[0] / nrow + 0.6))
    show_grid(ax, images, nrow, title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "mnist",
                                                                  "digits"))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--pairs", default="0-9,1-7,5-7", help="class pairs to interpolate between")
    add_run_options(p, "runs/cvae", "a seconds-long run on digits")
    args = p.parse_args()
    data_options = dict(SMOKE_DATA, epochs=1) if args.smoke \
        else dict(dataset=args.dataset, epochs=args.epochs)
    config = Config(**data_options, conditional=True, latent_dim=args.latent_dim,
                    seed=args.seed, device=args.device)
    out = Path(args.out)

    start = time.perf_counter()
    run = train_run(config, out / "run", progress=False, figures=False)
    seconds = time.perf_counter() - start
    vae, last = run.trainer.vae, run.history[-1]
    classes, columns = vae.num_classes, 10
    device = run.trainer.device

    with evaluating(vae):
        # the same z for every class: Predictive draws from the prior, y picks the class
        y = torch.arange(classes, device=device).repeat_interleave(columns)
        z = Predictive(vae.model, num_samples=1, return_sites=[LATENT_SITE])(
            None, torch.arange(columns, device=device))[LATENT_SITE][0]
        samples = vae.decode_mean(z.repeat(classes, 1), y)
        show(samples, columns, out / "classes.png",
             "each row one class, each column one z (shared style)")

        steps, strips = 10, []
        t = torch.linspace(0, 1, steps, device=device)[:, None]
        for pair in args.pairs.split(","):
            a, b = (int(c) for c in pair.split("-"))
            eye = torch.eye(classes, device=device)
            weights = (1 - t) * eye[a] + t * eye[b]
            strips.append(vae.decode_mean(z[:1].expand(steps, -1), weights))
        show(torch.cat(strips), steps, out / "interpolation.png",
             f"z fixed, class input moving along {args.pairs}")

    write_results(out, f"Conditional VAE on {config.dataset}",
                  ["epochs", "seconds", "test ELBO", "E[log p(x|z,y)]", "KL"],
                  [[last["epoch"], f"{seconds:.0f}",
                    f"{last['test_elbo']:.2f} ± {last['test_elbo_se']:.2f}",
                    last["test_recon"], last["test_kl"]]])


if __name__ == "__main__":
    main()
