"""Binary latent codes trained with the unbiased estimators of ``pyro_vae.infer.binary``.

A VAE with 30 binary latent units on binarized 8×8 digits (scikit-learn), written in plain Pyro:
the model and guide below are ordinary Pyro functions, and each estimator is just the ``loss`` of
``SVI`` — DisARM, ARM, RLOO, REBAR, RELAX, REINFORCE with a baseline (Pyro's TraceGraph_ELBO) and
the biased Gumbel-softmax relaxation. Every estimator starts from the same weights and takes the
same number of steps; the script prints the test ELBO and the 100-sample bound of each, the
variance of the encoder gradient on one batch and the cost per step.

    python examples/binary_latents.py            # under a minute
    python examples/binary_latents.py --smoke    # seconds

Writes ``results.md``, ``results.json`` and ``elbo_curves.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI
from pyro.optim import Adam
from sklearn.datasets import load_digits

from pyro_vae.infer.binary import (
    ARM_ELBO,
    REBAR_ELBO,
    REINFORCE_ELBO,
    RELAX_ELBO,
    RLOO_ELBO,
    DisARM_ELBO,
    GumbelSoftmax_ELBO,
)

ESTIMATORS = {  # label: the ELBO (the cost in model evaluations per step is its .evaluations)
    "DisARM": lambda: DisARM_ELBO(max_plate_nesting=1),
    "ARM": lambda: ARM_ELBO(max_plate_nesting=1),
    "RLOO K=2": lambda: RLOO_ELBO(num_particles=2, max_plate_nesting=1),
    "REBAR": lambda: REBAR_ELBO(max_plate_nesting=1),
    "RELAX": lambda: RELAX_ELBO(max_plate_nesting=1),
    "REINFORCE K=2 (baseline)": lambda: REINFORCE_ELBO(num_particles=2, max_plate_nesting=1),
    "Gumbel-softmax τ=0.5 (biased)": lambda: GumbelSoftmax_ELBO(0.5, max_plate_nesting=1),
}


class BinaryVAE(torch.nn.Module):
    """p(b) = Π Bernoulli(σ(prior)), p(x | b) = Bernoulli(σ(decoder(b))),
    q(b | x) = Bernoulli(σ(encoder(x))), with linear networks (the DisARM paper's "linear")."""

    def __init__(self, pixels: int, units: int) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(pixels, units)
        self.decoder = torch.nn.Linear(units, pixels)
        self.prior = torch.nn.Parameter(torch.zeros(units))

    def model(self, x: torch.Tensor) -> None:
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[0]):
            b = pyro.sample("b", dist.Bernoulli(logits=self.prior)
                            .expand([self.prior.shape[0]]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(b)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("b", dist.Bernoulli(logits=self.encoder(x)).to_event(1))

    @torch.no_grad()
    def log_weights(self, x: torch.Tensor, samples: int) -> torch.Tensor:
        """log p(x, b_k) − log q(b_k | x) for ``samples`` draws per point, shape (K, N)."""
        q = dist.Bernoulli(logits=self.encoder(x)).to_event(1)
        b = q.sample((samples,))
        log_p = dist.Bernoulli(logits=self.prior).to_event(1).log_prob(b) \
            + dist.Bernoulli(logits=self.decoder(b)).to_event(1).log_prob(x)
        return log_p - q.log_prob(b)


def bounds(vae: BinaryVAE, x: torch.Tensor, samples: int = 100) -> tuple[float, float]:
    """The test ELBO and the ``samples``-sample importance-weighted bound, nats per image."""
    log_w = vae.log_weights(x, samples)
    iwae = torch.logsumexp(log_w, 0) - math.log(samples)
    return float(log_w.mean()), float(iwae.mean())


def encoder_variance(vae: BinaryVAE, elbo, x: torch.Tensor, draws: int = 20) -> float:
    """Σ over the encoder's weights of the variance of the estimator's gradient on batch x."""
    params = list(vae.encoder.parameters())
    grads = []
    for _ in range(draws):
        loss = elbo.differentiable_loss(vae.model, vae.guide, x)
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return float(torch.stack(grads).var(0).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--units", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/binary_latents")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run")
    args = p.parse_args()
    if args.smoke:
        args.steps = 20
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    digits = torch.tensor(load_digits().data, dtype=torch.float32)
    data = (digits > 7).float()                               # binarized 8×8 digits
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(data), generator=g)
    train, test = data[order[:1500]], data[order[1500:]]
    torch.manual_seed(args.seed)
    initial = BinaryVAE(train.shape[1], args.units)

    results, curves = {}, {}
    for label, make in ESTIMATORS.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        vae, elbo = copy.deepcopy(initial), make()
        svi = SVI(vae.model, vae.guide, Adam({"lr": args.lr}), elbo)
        curve, start = [], time.perf_counter()
        for step in range(args.steps):
            idx = torch.randint(len(train), (args.batch_size,), generator=g)
            svi.step(train[idx])
            if step % max(1, args.steps // 20) == 0 or step == args.steps - 1:
                curve.append((step + 1, bounds(vae, test, 1)[0]))
        seconds = time.perf_counter() - start
        test_elbo, test_bound = bounds(vae, test, 100)
        variance = encoder_variance(vae, elbo, train[: args.batch_size],
                                    draws=5 if args.smoke else 20)
        results[label] = {"test_elbo": test_elbo, "test_bound_100": test_bound,
                          "encoder_gradient_variance": variance,
                          "evaluations_per_step": elbo.evaluations,
                          "ms_per_step": 1000 * seconds / args.steps}
        curves[label] = curve
        print(f"{label:32s} test ELBO {test_elbo:8.2f}  100-sample bound {test_bound:8.2f}  "
              f"grad var {variance:10.2f}  evals {elbo.evaluations}  "
              f"{1000 * seconds / args.steps:5.1f} ms/step")

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, curve in curves.items():
        ax.plot(*zip(*curve, strict=True), label=label)
    ax.set(xlabel="step", ylabel="test ELBO (1 sample, nats)",
           title=f"{args.units} binary latents, binarized digits")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "elbo_curves.png", dpi=120)
    plt.close(fig)
    lines = [f"# Binary latents: {args.units} units, {args.steps} steps, batch {args.batch_size}",
             "", "| estimator | test ELBO | 100-sample bound | encoder grad variance | "
             "evaluations | ms/step |", "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {r['test_elbo']:.2f} | {r['test_bound_100']:.2f} | "
              f"{r['encoder_gradient_variance']:.2f} | {r['evaluations_per_step']} | "
              f"{r['ms_per_step']:.1f} |" for k, r in results.items()]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results,
                                                  "curves": curves}, indent=2))
    print(f"wrote {out}/results.md, results.json, elbo_curves.png")


if __name__ == "__main__":
    main()
