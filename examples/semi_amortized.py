"""Semi-amortized inference (Kim et al. 2018) on the embedded digits: amortized vs refined ELBO.

Three runs with the same networks, data, seed and epochs, each with plain ``pyro.infer.SVI``
and ``Trace_ELBO``: a VAE (the amortized guide), SA-VAE's stop-gradient variant (the decoder
trained at the refined posterior, the encoder by its own ELBO) and SA-VAE (the gradient taken
through the refinement steps). For each, the test ELBO of the encoder's q and of q refined per
point by ``SemiAmortizedGuide`` at test time (the per-point gain closes the amortization gap
of Cremer et al. 2018, as far as the steps reach).

    python examples/semi_amortized.py            # 10 epochs, 20-35 s on 2 shared CPU cores
    python examples/semi_amortized.py --smoke

Writes ``results.md`` into ``--out`` and prints it.
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch
from _common import add_run_options
from pyro.infer import SVI, Trace_ELBO

from pyro_vae import (
    VAE,
    MLPDecoder,
    MLPEncoder,
    SemiAmortizedGuide,
    binarize,
    evaluate_elbo,
    load_dataset,
    make_likelihood,
)
from pyro_vae.lab.reporting import write_results


def build(shape, latent_dim: int, num_data: int) -> VAE:
    likelihood = make_likelihood("bernoulli")
    return VAE(MLPEncoder(shape, latent_dim, hidden=(128,)),
               MLPDecoder(shape, latent_dim, hidden=(128,), num_params=likelihood.num_params),
               likelihood, latent_dim, shape, num_data=num_data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--latent-dim", type=int, default=8)
    p.add_argument("--train-steps", type=int, default=5, help="K of the refinement in training")
    p.add_argument("--test-steps", type=int, default=30, help="K of the refinement at test time")
    p.add_argument("--test-points", type=int, default=360, help="test points scored")
    add_run_options(p, "runs/semi_amortized", "a seconds-long run", device=False)
    args = p.parse_args()
    torch.set_num_threads(1)  # networks this small run fastest on one thread
    data = load_dataset("digits")
    x_train, x_test = binarize(data.x_train, seed=args.seed), binarize(data.x_test, seed=1)
    if args.smoke:
        x_train, args.epochs, args.test_points, args.test_steps = x_train[:128], 1, 32, 5
    x_test = x_test[:args.test_points]
    n, shape = x_train.shape[0], data.event_shape
    refinement = dict(lr=0.03, momentum=0.5, num_samples=4)  # training: a few noisy steps
    at_test = dict(steps=args.test_steps, lr=0.05, momentum=0.0, num_samples=16)  # less noise
    runs = {"VAE (amortized)": None, "SA-VAE, stop-gradient": False, "SA-VAE": True}
    rows = []
    for name, differentiable in runs.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        vae = build(shape, args.latent_dim, n)
        guide = vae.guide if differentiable is None else SemiAmortizedGuide(
            vae.model, vae.guide, steps=args.train_steps, differentiable=differentiable,
            **refinement)
        svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
        start = time.perf_counter()
        for _ in range(args.epochs):
            for idx in torch.randperm(n).split(128):  # the plate scales each batch by N / B
                svi.step(x_train[idx], indices=idx)
        seconds = time.perf_counter() - start
        pyro.set_rng_seed(args.seed)
        amortized = evaluate_elbo(vae, x_test, num_samples=20)["elbo"]
        refined = evaluate_elbo(vae, x_test, num_samples=20,
                                guide=SemiAmortizedGuide(vae.model, vae.guide, **at_test))["elbo"]
        rows.append([name, str(amortized), str(refined), f"{refined.mean - amortized.mean:+.2f}",
                     f"{seconds:.1f}"])
    write_results(
        args.out, f"Semi-amortized inference on the digits ({n} binarized training images, "
        f"{args.epochs} epochs, L = {args.latent_dim})",
        ["run", "test ELBO, encoder's q", f"test ELBO, refined ({args.test_steps} steps)",
         "gain", "training seconds"], rows,
        notes=f"ELBOs in nats per image (± standard error) on {x_test.shape[0]} test images, 20 "
              f"draws each; training refinement: {args.train_steps} steps of {refinement}; at "
              f"test time: {at_test}.")


if __name__ == "__main__":
    main()
