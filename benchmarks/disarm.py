"""The DisARM paper's binary-VAE protocol (Dong, Mnih & Tucker 2020, §6.1) at a size a CPU allows:
ARM, DisARM, RLOO, REBAR and RELAX from ``pyro_vae.infer.binary`` side by side.

Protocol, as in the paper except for the number of steps: dynamically binarized Fashion-MNIST
(every training batch is re-sampled as x ~ Bernoulli(pixel intensity); the test set is binarized
once, seeded), 200 binary latent units with a learned factorized prior, a *linear* net (encoder
and decoder one linear layer) and a *nonlinear* one (two hidden layers of 200 units with
LeakyReLU(0.3) in encoder and decoder), input centred by the training mean and the decoder's
output bias started at the logits of the training mean (as the authors' code), batch 50, Adam
with learning rate 1e-4, the same number of steps and the same initial weights for every
estimator. RLOO uses K = 2 samples, so that ARM, DisARM and RLOO all cost 2 evaluations per
step (REBAR and RELAX cost 3, plus a double backward pass).

It prints the training ELBO curve (mean of the per-step ELBO estimates over windows), the test
ELBO and the 100-sample importance-weighted bound log (1/100) Σ_k p(x, b_k)/q(b_k | x) on the
test set, and the variance of the encoder's gradient estimate — the mean over the encoder's
weights of the per-weight variance, from ``--variance-draws`` estimates on one fixed training
batch, at the end of training (and along it, every ``--eval-every`` steps) — then whether the
paper's ordering (DisARM below ARM and RLOO in variance, above them in the bound) is
reproduced, and writes ``disarm_benchmark.png`` and ``results.json`` into ``--out``.

Cost: with one thread (the default; faster than two on a shared 2-core machine) a step took
5–6 ms (ARM, DisARM, RLOO) and 12 ms (REBAR, RELAX) with the linear nets, 9 and 15–16 ms with
the nonlinear ones — about 0.1 s for one step of all five estimators on both nets, so the
default 60000 steps take about 100 minutes, plus a few minutes for the 100-sample bounds on the
10000 test images. The paper trains for 10^6 steps; at 6·10^4 the curves are early in training,
where the estimators' variance matters most.

    python benchmarks/disarm.py --out runs/bench-disarm     # 60000 steps each: about 2 h
    python benchmarks/disarm.py --steps 50 --train-points 2000 --test-points 200 \\
        --variance-draws 5 --out /tmp/disarm-tiny                          # a check, seconds

Data: the IDX files of Debian's ``dataset-fashion-mnist`` package
(``apt-get install dataset-fashion-mnist``, /usr/share/datasets/fashion-mnist), or ``--data DIR``.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_vae.infer.binary import (
    ARM_ELBO,
    REBAR_ELBO,
    RELAX_ELBO,
    RLOO_ELBO,
    DisARM_ELBO,
)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ESTIMATORS = {
    "disarm": lambda: DisARM_ELBO(max_plate_nesting=1),
    "arm": lambda: ARM_ELBO(max_plate_nesting=1),
    "rloo": lambda: RLOO_ELBO(num_particles=2, max_plate_nesting=1),
    "rebar": lambda: REBAR_ELBO(max_plate_nesting=1),
    "relax": lambda: RELAX_ELBO(max_plate_nesting=1),
}
UNITS, HIDDEN, SLOPE = 200, 200, 0.3


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        raw = f.read()
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 784)


def load(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and test pixel intensities in [0, 1], (60000, 784) and (10000, 784)."""
    files = [data_dir / f"{s}-images-idx3-ubyte.gz" for s in ("train", "t10k")]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise SystemExit(f"disarm.py: Fashion-MNIST not found ({missing[0]}); run "
                         "`apt-get install dataset-fashion-mnist` or pass --data DIR")
    train, test = (torch.tensor(read_idx(f), dtype=torch.float32) / 255.0 for f in files)
    return train, test


def network(sizes: list[int], linear: bool) -> torch.nn.Module:
    if linear:
        return torch.nn.Linear(sizes[0], sizes[-1])
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.LeakyReLU(SLOPE))
    return torch.nn.Sequential(*layers)


class BinaryVAE(torch.nn.Module):
    """200 binary units: p(b) = Π Bernoulli(σ(prior)), p(x | b) = Bernoulli(σ(decoder(b))),
    q(b | x) = Bernoulli(σ(encoder(x − mean)))."""

    def __init__(self, mean: torch.Tensor, linear: bool) -> None:
        super().__init__()
        hidden = [] if linear else [HIDDEN, HIDDEN]
        self.encoder = network([784, *hidden, UNITS], linear)
        self.decoder = network([UNITS, *hidden, 784], linear)
        self.prior = torch.nn.Parameter(torch.zeros(UNITS))
        self.register_buffer("mean", mean)
        last = self.decoder if linear else self.decoder[-1]
        with torch.no_grad():
            last.bias.copy_(torch.logit(mean.clamp(1e-3, 1 - 1e-3)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x - self.mean)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[0]):
            b = pyro.sample("b", dist.Bernoulli(logits=self.prior).expand([UNITS]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(b)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("vae", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("b", dist.Bernoulli(logits=self.logits(x)).to_event(1))

    @torch.no_grad()
    def bounds(self, x: torch.Tensor, samples: int, chunk: int = 500) -> tuple[float, float]:
        """Mean test ELBO (over the ``samples`` draws) and ``samples``-sample bound, nats."""
        elbo = iwae = 0.0
        for xs in x.split(chunk):
            q = dist.Bernoulli(logits=self.logits(xs)).to_event(1)
            b = q.sample((samples,))
            log_w = dist.Bernoulli(logits=self.prior).to_event(1).log_prob(b) \
                + dist.Bernoulli(logits=self.decoder(b)).to_event(1).log_prob(xs) - q.log_prob(b)
            elbo += float(log_w.mean(0).sum())
            iwae += float((torch.logsumexp(log_w, 0) - math.log(samples)).sum())
        return elbo / len(x), iwae / len(x)


def gradient_variance(vae: BinaryVAE, elbo, x: torch.Tensor, draws: int) -> float:
    """Mean over the encoder's weights of the variance of the estimator's gradient on batch x."""
    params = list(vae.encoder.parameters())
    grads = []
    for _ in range(draws):
        loss = elbo.differentiable_loss(vae.model, vae.guide, x)
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return float(torch.stack(grads).var(0).mean())


def run(name: str, initial: BinaryVAE, train: torch.Tensor, test: torch.Tensor,
        fixed: torch.Tensor, args, seed: int) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae, elbo = copy.deepcopy(initial), ESTIMATORS[name]()
    svi = SVI(vae.model, vae.guide, Adam({"lr": args.lr}), elbo)
    g = torch.Generator().manual_seed(seed)
    curve, window, checkpoints = [], [], []
    start, measuring = time.perf_counter(), 0.0
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(train), (args.batch_size,), generator=g)
        x = torch.bernoulli(train[idx], generator=g)                  # dynamic binarization
        window.append(-svi.step(x) / args.batch_size)
        if step % args.log_every == 0 or step == args.steps:
            curve.append((step, float(np.mean(window))))
            window = []
        if step % args.eval_every == 0 and step < args.steps:
            t = time.perf_counter()
            checkpoints.append((step, gradient_variance(vae, elbo, fixed, args.variance_draws)))
            measuring += time.perf_counter() - t
    seconds = time.perf_counter() - start - measuring
    variance = gradient_variance(vae, elbo, fixed, args.variance_draws)
    checkpoints.append((args.steps, variance))
    test_elbo, test_bound = vae.bounds(test, args.eval_samples)
    return {"train_curve": curve, "variance_curve": checkpoints, "test_elbo": test_elbo,
            "test_bound": test_bound, "encoder_gradient_variance": variance,
            "evaluations_per_step": elbo.evaluations, "ms_per_step": 1000 * seconds / args.steps}


def ordering(results: dict) -> dict:
    """Whether DisARM beats ARM and RLOO in variance (lower) and in the test bound (higher)."""
    out = {}
    for other in ("arm", "rloo"):
        if "disarm" in results and other in results:
            d, o = results["disarm"], results[other]
            out[f"variance disarm < {other}"] = \
                d["encoder_gradient_variance"] < o["encoder_gradient_variance"]
            out[f"bound disarm > {other}"] = d["test_bound"] > o["test_bound"]
    return out


def figure(all_results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = list(all_results)
    fig, axes = plt.subplots(2, len(nets), figsize=(6 * len(nets), 7), squeeze=False)
    for j, net in enumerate(nets):
        for name, r in all_results[net].items():
            axes[0, j].plot(*zip(*r["train_curve"], strict=True), label=name)
            axes[1, j].plot(*zip(*r["variance_curve"], strict=True), label=name, marker=".")
        axes[0, j].set(title=f"{net}: training ELBO", xlabel="step", ylabel="nats")
        axes[1, j].set(title=f"{net}: encoder gradient variance", xlabel="step",
                       ylabel="mean per weight", yscale="log")
        axes[0, j].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60000, help="training steps per estimator")
    p.add_argument("--estimators", default=",".join(ESTIMATORS))
    p.add_argument("--nets", default="linear,nonlinear")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--eval-samples", type=int, default=100)
    p.add_argument("--test-points", type=int, default=10000)
    p.add_argument("--train-points", type=int, default=60000)
    p.add_argument("--variance-draws", type=int, default=50)
    p.add_argument("--log-every", type=int, default=0, help="default: steps / 50")
    p.add_argument("--eval-every", type=int, default=0, help="default: steps / 5")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: fastest for batch-50 steps on a shared 2-core CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=str(DEBIAN_DIR))
    p.add_argument("--out", default="runs/bench-disarm")
    args = p.parse_args()
    args.log_every = args.log_every or max(1, args.steps // 50)
    args.eval_every = args.eval_every or max(1, args.steps // 5)
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.estimators.split(",")]
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise SystemExit(f"disarm.py: unknown estimator {unknown[0]!r}; choose from "
                         f"{', '.join(ESTIMATORS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train, test = load(Path(args.data))
    g = torch.Generator().manual_seed(args.seed)
    train = train[torch.randperm(len(train), generator=g)[: args.train_points]]
    test = torch.bernoulli(test[: args.test_points], generator=g)      # binarized once
    fixed = torch.bernoulli(train[: args.batch_size], generator=g)     # the variance batch
    mean = train.mean(0)
    print(f"# DisARM protocol: Fashion-MNIST ({len(train)} train, {len(test)} test), "
          f"{UNITS} binary units, batch {args.batch_size}, Adam {args.lr}, {args.steps} steps "
          f"per estimator, {args.eval_samples}-sample bound\n")
    all_results: dict[str, dict] = {}
    for net in (n.strip() for n in args.nets.split(",")):
        torch.manual_seed(args.seed)
        initial = BinaryVAE(mean, linear=net == "linear")
        results = {}
        for name in names:
            r = run(name, initial, train, test, fixed, args, args.seed)
            results[name] = r
            curve = " ".join(f"{v:.1f}" for _, v in r["train_curve"][:: max(1, len(
                r["train_curve"]) // 10)])
            print(f"[{net} {name}] {r['ms_per_step']:.1f} ms/step; training ELBO: {curve}",
                  flush=True)
        all_results[net] = results
        print(f"\n## {net}\n\n| estimator | evaluations/step | train ELBO (last) | test ELBO | "
              f"test {args.eval_samples}-sample bound | encoder grad variance | ms/step |\n"
              "|---|---|---|---|---|---|---|")
        for name, r in results.items():
            print(f"| {name} | {r['evaluations_per_step']} | {r['train_curve'][-1][1]:.2f} | "
                  f"{r['test_elbo']:.2f} | {r['test_bound']:.2f} | "
                  f"{r['encoder_gradient_variance']:.3e} | {r['ms_per_step']:.1f} |")
        for claim, holds in ordering(results).items():
            print(f"- paper's ordering, {claim}: {'reproduced' if holds else 'NOT reproduced'}")
        print(flush=True)
    figure(all_results, out / "disarm_benchmark.png")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": all_results,
                                                  "ordering": {n: ordering(r) for n, r in
                                                               all_results.items()}}, indent=2))
    print(f"wrote {out / 'disarm_benchmark.png'} and {out / 'results.json'}")


if __name__ == "__main__":
    main()
