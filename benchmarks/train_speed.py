"""Seconds per training epoch: pyro-vae's trainer against plain PyTorch and against the way
Pyro's own VAE example trains, same network, same loss, measured in one process.

Methods, for each case:

(a) ``library``: ``pyro_vae.Trainer`` with its default path (Pyro's ELBO
    ``differentiable_loss`` on ``VAE.model`` / ``VAE.guide``, one torch optimizer, validation on
    the first step only, tensors in memory); ``library-jit`` / ``library-nojit`` is the other
    path (JIT-compiled ELBO or not), so that the default can be checked to be the faster one;
(b) ``plain``: the same encoder/decoder modules, the same ELBO written by hand (Bernoulli with
    logits or Gaussian log-density; Monte Carlo or analytic KL), the library's optimizer
    (``torch.optim.Adam(fused=True)``), in-memory batching: the floor for this network on this
    machine;
(c) ``pyro-example``: ``torch.utils.data.DataLoader`` over a ``TensorDataset``,
    ``pyro.infer.SVI`` with ``pyro.optim.Adam`` and the same ELBO class, on the same model and
    guide (Pyro's ``examples/vae/vae.py`` way).

After one untimed warm-up epoch per method (the JIT compile, allocator caches), rounds
alternate a, a', b, c, a, a', b, c, ...; a round is one epoch (``--rounds`` of them) or, for the
small 2-D data sets whose epochs take milliseconds, ten epochs. Printed as a Markdown table:
the median over all timed epochs of each method; the ratios a/b and c/a as the median over
rounds of the ratio within a round (paired: on this shared VM the speed drifts by ±10 % between
minutes, which cancels within a round); each method's test ELBO after the same number of epochs
(1.96-SE half-widths are about twice the ± shown).

    python benchmarks/train_speed.py                    # every case (about 15 min)
    python benchmarks/train_speed.py --case moons --rounds 5
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Callable

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import Config, Trainer, build_vae, evaluate_elbo
from pyro_vae.data import prepare_data
from pyro_vae.models.vae import VAE

FMNIST_MLP = dict(dataset="fashion-mnist", hidden=(400,), latent_dim=50, activation="softplus",
                  likelihood="bernoulli", binarize="threshold", lr=1e-3)
#: name -> (config options, epochs per timing round)
CASES: dict[str, tuple[dict, int]] = {
    "fmnist-mlp-b256-trace": ({**FMNIST_MLP, "batch_size": 256, "elbo": "trace"}, 1),
    "fmnist-mlp-b256-meanfield": ({**FMNIST_MLP, "batch_size": 256, "elbo": "meanfield"}, 1),
    "fmnist-mlp-b128-trace": ({**FMNIST_MLP, "batch_size": 128, "elbo": "trace"}, 1),
    "fmnist-mlp-b128-meanfield": ({**FMNIST_MLP, "batch_size": 128, "elbo": "meanfield"}, 1),
    "moons": (dict(dataset="moons"), 10),
    "circle": (dict(dataset="circle"), 10),
    "fmnist-conv": (dict(dataset="fashion-mnist", arch="conv", latent_dim=20,
                         likelihood="bernoulli", binarize="threshold", batch_size=128,
                         lr=1e-3), 1),
}


# ---------------------------------------------------------------------- (b) plain PyTorch
def plain_log_likelihood(vae: VAE, out: torch.Tensor, x: torch.Tensor,
                         log_sigma: torch.Tensor | None) -> torch.Tensor:
    """log p(x|z) per point, written out by hand for the likelihoods the cases use."""
    name = vae.likelihood.name
    if name == "bernoulli":
        ll = -F.binary_cross_entropy_with_logits(out, x, reduction="none")
    elif name in ("gaussian", "gaussian-learned"):
        log_s = log_sigma if log_sigma is not None else \
            torch.tensor(math.log(vae.likelihood.obs_scale))
        ll = -0.5 * ((x - out) * torch.exp(-log_s)) ** 2 - log_s - 0.5 * math.log(2 * math.pi)
    else:
        raise ValueError(f"no hand-written likelihood for {name}")
    return ll.flatten(1).sum(1)


def plain_epoch(vae: VAE, opt: torch.optim.Optimizer, log_sigma: torch.Tensor | None,
                x: torch.Tensor, batch_size: int, analytic: bool) -> None:
    n = x.shape[0]
    for idx in torch.randperm(n).split(batch_size):
        xb = x[idx]
        loc, scale = vae.encoder(xb)
        z = loc + scale * torch.randn_like(loc)
        out = vae.decoder(z).reshape(xb.shape)
        if analytic:
            kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum(1)
        else:  # log q(z|x) - log p(z)
            kl = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() + 0.5 * z**2).sum(1)
        loss = -(plain_log_likelihood(vae, out, xb, log_sigma) - kl).sum() * (n / xb.shape[0])
        opt.zero_grad()
        loss.backward()
        opt.step()


# ---------------------------------------------------------------------- the benchmark
def run_case(name: str, rounds: int) -> dict:
    options, epochs_per_round = CASES[name]
    config = Config(**options, epochs=rounds * epochs_per_round + 1).resolved()
    data = prepare_data(config)
    x, n = data.x_train, data.x_train.shape[0]
    analytic = config.elbo == "meanfield"
    default_jit = config.jit
    other = "library-nojit" if default_jit else "library-jit"
    epochs: dict[str, Callable[[], float]] = {}
    models: dict[str, VAE] = {}

    pyro.set_rng_seed(0)
    for label, jit in (("library", default_jit), (other, not default_jit)):
        # each model registers its own tensors in Pyro's param store, whatever the others did
        trainer = Trainer.from_config(dataclasses.replace(config, jit=jit), data)
        models[label] = trainer.vae
        epochs[label] = lambda t=trainer: t.train_epoch()["seconds"]

    torch.manual_seed(0)
    plain = build_vae(config, data.event_shape, num_data=n)
    plain.train()
    log_sigma = plain.obs_scale_unconstrained  # log σ of a learned scale, else None
    # the same optimizer as the library's (fused Adam): the comparison is of everything else
    plain_opt = torch.optim.Adam([*plain.encoder.parameters(), *plain.decoder.parameters(),
                                  *([log_sigma] if log_sigma is not None else [])], lr=config.lr,
                                 fused=True)
    models["plain"] = plain

    def plain_timed() -> float:
        start = time.perf_counter()
        plain_epoch(plain, plain_opt, log_sigma, x, config.batch_size, analytic)
        return time.perf_counter() - start

    epochs["plain"] = plain_timed
    example = build_vae(config, data.event_shape, num_data=n)
    example.train()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x),
                                         batch_size=config.batch_size, shuffle=True)
    elbo = (TraceMeanField_ELBO if analytic else Trace_ELBO)(max_plate_nesting=1)
    example_svi = SVI(example.model, example.guide, pyro.optim.Adam({"lr": config.lr}),
                      loss=elbo)
    models["pyro-example"] = example

    def example_timed() -> float:
        start = time.perf_counter()
        for (xb,) in loader:
            example_svi.step(xb)
        return time.perf_counter() - start

    epochs["pyro-example"] = example_timed

    for epoch in epochs.values():  # warm-up, untimed: JIT compile, allocator caches
        epoch()
    times: dict[str, list[float]] = {k: [] for k in epochs}
    round_means: dict[str, list[float]] = {k: [] for k in epochs}
    for _ in range(rounds):
        for label, epoch in epochs.items():
            seconds = [epoch() for _ in range(epochs_per_round)]
            times[label] += seconds
            round_means[label].append(statistics.fmean(seconds))
    result = {"case": name, "config": config, "median": {}, "test_elbo": {},
              "ratio": {pair: paired_ratio(round_means, *pair)
                        for pair in (("library", "plain"), ("pyro-example", "library"),
                                     (other, "library"))}}
    for label, model in models.items():
        model.eval()
        result["median"][label] = statistics.median(times[label])
        result["test_elbo"][label] = evaluate_elbo(model, data.x_test)["elbo"]
    result["other"] = other
    return result


def paired_ratio(round_means: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of (a's time / b's time) within the same round: the two were
    measured seconds apart, so the VM's drift between minutes cancels out of each ratio."""
    return statistics.median(x / y for x, y in zip(round_means[a], round_means[b], strict=True))


def format_row(r: dict) -> str:
    med, elbo, other = r["median"], r["test_elbo"], r["other"]
    cfg = r["config"]
    ratios = [f"{v:.2f}" for v in r["ratio"].values()]
    elbos = " / ".join(f"{elbo[k].mean:.2f}" for k in ("library", "plain", "pyro-example"))
    se = max(elbo[k].stderr for k in ("library", "plain", "pyro-example"))
    return (f"| {r['case']} | {cfg.batch_size} | {cfg.elbo} | {'jit' if cfg.jit else 'no jit'} | "
            f"{med['library'] * 1e3:.1f} | {med['plain'] * 1e3:.1f} | "
            f"{med['pyro-example'] * 1e3:.1f} | {med[other] * 1e3:.1f} | **{ratios[0]}** | "
            f"**{ratios[1]}** | {ratios[2]} | {elbos} (± {se:.2f}) |")


HEADER = ("| case | batch | ELBO | library default | library ms/epoch | plain ms/epoch | "
          "Pyro-example ms/epoch | other JIT setting ms/epoch | library / plain | "
          "Pyro-example / library | other JIT / library | test ELBO library / plain / "
          "Pyro-example |\n| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | "
          "---: | --- |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", action="append", choices=sorted(CASES),
                   help="case to run (repeatable; default: all)")
    p.add_argument("--rounds", type=int, default=5,
                   help="timing rounds per method (default 5); medians are reported")
    args = p.parse_args()
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, "
          f"{torch.get_num_threads()} torch threads, rounds {args.rounds}")
    print(HEADER, flush=True)
    for case in args.case or list(CASES):
        print(format_row(run_case(case, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
