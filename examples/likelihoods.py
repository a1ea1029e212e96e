"""Bernoulli vs continuous Bernoulli vs Gaussian vs Laplace on the same grey-level images.

A fair comparison scores every model on the same data representation. Fashion-MNIST pixels are
8-bit values k/255. Continuous densities on [0, 1] or ℝ are trained and scored on uniformly
dequantized pixels x̃ = (k + u) / 256, u ~ U(0, 1) (Theis et al. 2016): then
``-log p(x̃) + D log 256`` bounds the code length of the 8-bit image, reported as bits per
dimension, ``bpd = (-log p(x̃) + D log 256) / (D log 2)``, from the IWAE estimate of log p(x̃).
Without dequantization a Gaussian or Laplace could put unbounded density on the many pixels that
are exactly 0.

The Bernoulli likelihood has no density on grey values: trained on them (``allow_greyscale``,
the binary cross-entropy loss many VAEs use), its "log-likelihood" is a cross-entropy that is
not normalized, so it gets no bits/dim; Loaiza-Ganem & Cunningham (2019) introduced the
continuous Bernoulli to fix exactly this. Its reconstructions are shown next to the others.

    python examples/likelihoods.py --epochs 10
    python examples/likelihoods.py --smoke

Writes ``reconstructions.png`` (test images and each model's E[x | z = μ(x)]) and ``results.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import matplotlib
import pyro
import torch

from pyro_vae import Config, Trainer, iwae_log_likelihood
from pyro_vae.data import prepare_data
from pyro_vae.infer.evaluation import Estimate
from pyro_vae.lab.reporting import write_results
from pyro_vae.models import evaluating
from pyro_vae.plots import show_grid

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _common import SMOKE_DATA, add_run_options

#: likelihood -> (config options, is a density on the dequantized pixels)
MODELS = {
    "continuous-bernoulli": (dict(likelihood="continuous-bernoulli"), True),
    "gaussian-learned": (dict(likelihood="gaussian-learned", obs_scale=0.1), True),
    "laplace-learned": (dict(likelihood="laplace-learned", obs_scale=0.1), True),
    "bernoulli (cross-entropy)": (dict(likelihood="bernoulli", allow_greyscale=True), False),
}


def dequantize(x: torch.Tensor, seed: int) -> torch.Tensor:
    """(k + u) / 256 for pixels x = k / 255, u ~ U(0, 1) drawn with a fixed seed."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    return (torch.round(x * 255) + torch.rand(x.shape, generator=gen, device=x.device)) / 256


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "mnist"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--iw-samples", type=int, default=1000)
    p.add_argument("--iw-points", type=int, default=1000)
    add_run_options(p, "runs/likelihoods", "a seconds-long run on digits")
    args = p.parse_args()
    # digits are 17 grey levels, not 8-bit; the smoke run only checks that everything runs
    data_options = dict(dataset=args.dataset, epochs=args.epochs)
    if args.smoke:
        data_options = dict(SMOKE_DATA, epochs=1)
        args.iw_samples, args.iw_points = 10, 16
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows, recons = [], {}
    for name, (options, is_density) in MODELS.items():
        config = Config(**data_options, **options, hidden=(400,), latent_dim=args.latent_dim,
                        lr=1e-3, batch_size=128, seed=args.seed, device=args.device).resolved()
        data = prepare_data(config).to(args.device)
        data = dataclasses.replace(data, x_train=dequantize(data.x_train, args.seed),
                                   x_test=dequantize(data.x_test, args.seed + 1))
        pyro.set_rng_seed(args.seed)
        start = time.perf_counter()
        trainer = Trainer.from_config(config, data, args.device)
        for _ in range(config.epochs):
            last = trainer.train_epoch()
        seconds = time.perf_counter() - start
        vae, x = trainer.vae, data.x_test[:args.iw_points]
        iwae = Estimate.of(iwae_log_likelihood(vae, x, num_samples=args.iw_samples))
        dims = math.prod(data.event_shape)
        bpd = (-iwae.mean + dims * math.log(256)) / (dims * math.log(2))
        rows.append([name, config.epochs, f"{seconds:.0f}",
                     f"{last['test_elbo']:.1f} ± {last['test_elbo_se']:.1f}", str(iwae),
                     f"{bpd:.3f}" if is_density else "— (not a density)"])
        with evaluating(vae):
            recons[name] = vae.decode_mean(vae.encode(data.x_test[:16])[0]).cpu()
        recons.setdefault("test images (dequantized)", data.x_test[:16].cpu())

    order = ["test images (dequantized)", *MODELS]
    fig, axes = plt.subplots(len(order), 1, figsize=(10, 1.1 * len(order) + 0.5))
    for ax, name in zip(axes, order, strict=True):
        show_grid(ax, recons[name], 16, name)
    fig.tight_layout()
    fig.savefig(out / "reconstructions.png", dpi=110)
    write_results(out, f"Likelihoods on dequantized {config.dataset}, {args.latent_dim}-D latent",
                  ["likelihood", "epochs", "seconds", "test ELBO (nats)",
                   f"test IWAE (K={args.iw_samples}, {args.iw_points} images, nats)",
                   "bits / dim (8-bit images)"], rows)


if __name__ == "__main__":
    main()
