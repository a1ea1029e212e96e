"""A deterministic autoencoder next to the VAE, same networks, same 2-D latent.

The autoencoder is written as a Pyro program too: its guide puts a point mass on the encoder's
mean, ``z = Delta(μ_φ(x))``, and its model masks the prior term out (``poutine.mask``), so
``Trace_ELBO`` reduces to the reconstruction log-likelihood ``log p_θ(x | z = μ_φ(x))``, the
autoencoder's objective. The VAE is the library's (``q_φ(z|x)`` Gaussian, prior N(0, I)).

The figure shows each model's test codes coloured by label and the images decoded on a grid over
the rectangle those codes occupy (1st to 99th percentile). Both leave parts of that rectangle
empty (``results.md`` counts the empty grid cells); the difference is what they decode there.
The autoencoder was never asked to decode anything but its training codes, and off them it
produces artefacts; the VAE's KL term keeps its codes where the prior N(0, I) puts mass, and
decodes plausible items between and around them.

    python examples/autoencoder_vs_vae.py --dataset fashion-mnist --epochs 20
    python examples/autoencoder_vs_vae.py --smoke
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from pyro_vae import Config, build_vae, train_run
from pyro_vae.infer.evaluation import elbo_terms
from pyro_vae.lab.reporting import write_results
from pyro_vae.models import evaluating
from pyro_vae.plots import show_grid
from pyro_vae.sites import DATA_PLATE, DECODER_MODULE, ENCODER_MODULE, LATENT_SITE, OBS_SITE

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _common import SMOKE_DATA, add_run_options

GRID = 15


def autoencoder_programs(vae):
    """(model, guide) of a deterministic autoencoder on the VAE's networks and likelihood."""

    def model(x, indices):
        pyro.module(DECODER_MODULE, vae.decoder)
        with pyro.plate(DATA_PLATE, vae.num_data, subsample=indices):
            with poutine.mask(mask=False):  # no prior: an autoencoder has none
                z = pyro.sample(LATENT_SITE, vae.prior(x.shape[0], x.device))
            pyro.sample(OBS_SITE, vae.observation_distribution(z), obs=x)

    def guide(x, indices):
        pyro.module(ENCODER_MODULE, vae.encoder)
        with pyro.plate(DATA_PLATE, vae.num_data, subsample=indices):
            loc, _ = vae.encode(x)
            pyro.sample(LATENT_SITE, dist.Delta(loc).to_event(1))

    return model, guide


def train_autoencoder(config: Config, data) -> tuple:
    x = data.x_train
    vae = build_vae(config, data.event_shape, num_data=x.shape[0]).to(x.device)
    model, guide = autoencoder_programs(vae)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": config.lr}),
              Trace_ELBO(max_plate_nesting=1))
    for _ in range(config.epochs):
        for idx in torch.randperm(x.shape[0], device=x.device).split(config.batch_size):
            svi.step(torch.bernoulli(x[idx]), idx)  # dynamic binarization, as the VAE's
    return vae


def codes_and_grid(vae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, tuple]:
    """Test codes μ(x), images decoded on a GRID×GRID grid over their 1–99 % box, the fraction
    of grid cells holding no code, and the box."""
    with evaluating(vae):
        codes = vae.encode(x)[0].cpu()
        lo, hi = codes.quantile(0.01, dim=0), codes.quantile(0.99, dim=0)
        u = torch.linspace(0, 1, GRID)
        gx, gy = lo[0] + u * (hi[0] - lo[0]), hi[1] - u * (hi[1] - lo[1])
        z = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], -1).reshape(-1, 2)
        images = vae.decode_mean(z.to(x.device)).cpu()
    cell = ((codes - lo) / (hi - lo) * GRID).floor().long()
    inside = ((cell >= 0) & (cell < GRID)).all(1)
    occupied = torch.zeros(GRID, GRID, dtype=torch.bool)
    occupied[cell[inside, 0], cell[inside, 1]] = True
    return codes, images, 1.0 - float(occupied.float().mean()), (lo, hi)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "mnist",
                                                                  "digits"))
    p.add_argument("--epochs", type=int, default=20)
    add_run_options(p, "runs/autoencoder-vs-vae", "a seconds-long run on digits")
    args = p.parse_args()
    small = dict(SMOKE_DATA, epochs=1) if args.smoke else \
        dict(dataset=args.dataset, epochs=args.epochs)
    hidden = (256,) if small["dataset"] == "digits" else (512,)
    config = Config(**small, hidden=hidden, latent_dim=2, likelihood="bernoulli",
                    binarize="dynamic", lr=1e-3, batch_size=128, seed=args.seed,
                    device=args.device).resolved()
    out = Path(args.out)

    start = time.perf_counter()
    run = train_run(config, out / "vae", progress=False, figures=False)
    vae_seconds = time.perf_counter() - start
    data = run.trainer.data
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    start = time.perf_counter()
    autoencoder = train_autoencoder(config, data)
    ae_seconds = time.perf_counter() - start

    x_test = torch.bernoulli(data.x_test, generator=torch.Generator(data.x_test.device)
                             .manual_seed(1))
    y = data.y_test.cpu() if data.y_test is not None else None
    fig, axes = plt.subplots(2, 2, figsize=(11, 11))
    rows = []
    for col, (name, model, seconds) in enumerate((("autoencoder", autoencoder, ae_seconds),
                                                  ("VAE", run.trainer.vae, vae_seconds))):
        codes, images, empty, (lo, hi) = codes_and_grid(model, x_test)
        axes[0, col].scatter(codes[:, 0], codes[:, 1], c=y, cmap="tab10", s=3)
        axes[0, col].set(title=f"{name}: test codes μ(x)", xlim=(lo[0], hi[0]),
                         ylim=(lo[1], hi[1]))
        show_grid(axes[1, col], images, GRID,
                  f"{name}: decoded over that box ({empty:.0%} of cells empty)")
        with evaluating(model):
            recon = float((model.observation_distribution(model.encode(x_test)[0])
                           .log_prob(x_test)).mean())
            elbo = float(elbo_terms(model, x_test)["elbo"].mean()) if name == "VAE" else None
        rows.append([name, config.epochs, f"{seconds:.0f}", recon,
                     "—" if elbo is None else f"{elbo:.2f}", f"{empty:.0%}"])
    fig.tight_layout()
    fig.savefig(out / "autoencoder_vs_vae.png", dpi=110)
    write_results(out, f"Autoencoder vs VAE on {config.dataset}, 2-D latent",
                  ["model", "epochs", "seconds", "test log p(x | z = μ(x))", "test ELBO",
                   f"empty cells of the {GRID}×{GRID} latent grid"], rows)


if __name__ == "__main__":
    main()
