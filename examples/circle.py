"""The noisy circle of the source material: how close do the ELBO and IWAE get to log p(x)?

Data: z ~ N(0, 1), x = (cos z, sin z) + N(0, 0.1² I), N = 20 000, 3/4 for training. The source's
protocol: encoder and decoder with two hidden layers of 20 units, a 1-D latent, decoder noise
fixed at σ = 0.1, batch 1000, Adam 3e-4, 500 epochs (it reports a test ELBO of about -0.93
nats per point). Because the generating process is known, log p(x) is exact here (quadrature
over z, ``pyro_vae.circle_log_density``): the script reports, per test point and paired, the
gaps exact - ELBO (= KL(q(z|x) ‖ p(z|x)) + model error) and exact - IWAE.

    python examples/circle.py                  # the source's protocol (Adam 3e-4)
    python examples/circle.py --lr 3e-3        # converges further in the same 500 epochs
    python examples/circle.py --smoke

Writes ``figures/overview.png`` (data, reconstructions, decoded samples coloured by z, latent
means), ``elbo_vs_exact.png`` (train / test ELBO per epoch against the exact log-density) and
``results.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

from pyro_vae import Config, circle_log_density, elbo_terms, iwae_log_likelihood, train_run
from pyro_vae.infer.evaluation import Estimate
from pyro_vae.lab.reporting import write_results
from pyro_vae.models import evaluating

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _common import add_run_options

SOURCE_TEST_ELBO = -0.93


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=500)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--elbo", default="trace", choices=("trace", "meanfield"))
    p.add_argument("--iw-samples", type=int, default=5000)
    add_run_options(p, "runs/circle")
    args = p.parse_args()
    if args.smoke:
        args.epochs, args.iw_samples = 3, 50
    out = Path(args.out)

    config = Config(dataset="circle", hidden=(20, 20), latent_dim=1, likelihood="gaussian",
                    obs_scale=0.1, batch_size=1000, epochs=args.epochs, lr=args.lr,
                    elbo=args.elbo, seed=args.seed, device=args.device)
    start = time.perf_counter()
    run = train_run(config, out, progress=False)
    seconds = time.perf_counter() - start
    vae, x = run.trainer.vae, run.trainer.data.x_test
    exact = circle_log_density(x.cpu()).float()
    with evaluating(vae):
        elbo = elbo_terms(vae, x, num_samples=100)["elbo"].cpu()
    iwae = iwae_log_likelihood(vae, x, num_samples=args.iw_samples).cpu()

    epochs = [h["epoch"] for h in run.history]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(epochs, [h["train_elbo"] for h in run.history], label="train ELBO")
    ax.plot(epochs, [h["test_elbo"] for h in run.history], label="test ELBO")
    ax.axhline(float(exact.mean()), color="k", ls="--", label="exact log p(x), test points")
    ax.axhline(SOURCE_TEST_ELBO, color="grey", ls=":", label="source's final test ELBO")
    ax.set_ylim(max(-3.0, min(h["test_elbo"] for h in run.history)), 0.0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per point")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "elbo_vs_exact.png", dpi=120)

    first = next((h["epoch"] for h in run.history if h["test_elbo"] > SOURCE_TEST_ELBO), "never")
    rows = [["test ELBO (100 samples per point)", str(Estimate.of(elbo))],
            [f"test IWAE (K = {args.iw_samples})", str(Estimate.of(iwae))],
            ["exact log p(x) (quadrature)", str(Estimate.of(exact))],
            ["exact - ELBO (paired)", str(Estimate.of(exact - elbo))],
            ["exact - IWAE (paired)", str(Estimate.of(exact - iwae))],
            [f"first epoch with test ELBO > {SOURCE_TEST_ELBO}", str(first)]]
    write_results(out, f"Circle: {args.epochs} epochs, Adam {args.lr:g}, {args.elbo} ELBO, "
                  f"{seconds:.0f} s", ["quantity", "nats per point (mean ± s.e.)"], rows)


if __name__ == "__main__":
    main()
