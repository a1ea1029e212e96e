"""Seconds per training epoch: pyro-vae's trainer against NumPyro's compiled VAE, each in its
own process (JAX and torch in one process starve each other's thread pools).

Sides, for each case (the same networks, data, ELBO, batch size and Adam settings as
``benchmarks/train_speed.py``):

``library``         ``pyro_vae.Trainer`` with ``compile=True``: Pyro's ELBO, its gradient and
                    Adam as one TorchInductor program (``pyro_vae.infer.compiled``; the
                    path the library picks itself for runs of ≥ 8000 steps); the last,
                    smaller batch of an epoch runs on the JIT path;
``library-jit``     ``pyro_vae.Trainer`` with ``compile=False``: Pyro's JIT ELBO, eager
                    backward, fused ``torch.optim.Adam`` (the path for short runs);
``numpyro-epoch``   NumPyro's VAE-example way: one ``jax.jit``-compiled epoch, mini-batch
                    updates inside ``lax.fori_loop`` (full batches only);
``numpyro-step``    ``jax.jit(svi.update)`` called from a Python loop.

The driver writes each case's data once (``.npz``, so the JAX workers never import torch), then
runs ``--rounds`` rounds; in each round every side trains ``--epochs`` epochs in a fresh
process after one untimed warm-up epoch (compilation), in alternating order. Printed: per side
the median seconds per epoch, the paired ratio library / NumPyro (median over rounds of the
within-round ratio) and each side's test ELBO (nats per point) after its epochs.

    pip install -c constraints.txt -e ".[bench]"
    python benchmarks/numpyro_speed.py --case circle --rounds 3
    python benchmarks/numpyro_speed.py                  # circle, moons, fmnist-mlp
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {  # name: (library Config options, hidden activation, epochs per round)
    "circle": (dict(dataset="circle"), "relu", 20),
    "moons": (dict(dataset="moons"), "relu", 10),
    "fmnist-mlp": (dict(dataset="fashion-mnist", hidden=(400,), latent_dim=50,
                        activation="softplus", likelihood="bernoulli", binarize="threshold",
                        lr=1e-3, batch_size=256), "softplus", 2),
}
SIDES = ("library", "library-jit", "numpyro-epoch", "numpyro-step")


def write_data(case: str, path: Path) -> dict:
    """The case's resolved configuration and its (prepared) data, as the library sees them."""
    import numpy as np

    from pyro_vae import Config
    from pyro_vae.data import prepare_data

    config = Config(**CASES[case][0]).resolved()
    data = prepare_data(config)
    x_train, x_test = data.x_train, data.x_test
    if config.binarize == "threshold":  # what the library's step sees
        x_train, x_test = (x_train > 0.5).float(), (x_test > 0.5).float()
    np.savez(path, x_train=x_train.reshape(len(x_train), -1).numpy(),
             x_test=x_test.reshape(len(x_test), -1).numpy())
    return {"hidden": list(config.hidden), "latent": config.latent_dim,
            "likelihood": config.likelihood, "obs_scale": config.obs_scale,
            "batch_size": config.batch_size, "lr": config.lr}


# --------------------------------------------------------------------------- workers
def run_library(case: str, epochs: int, compiled: bool) -> dict:
    import pyro

    from pyro_vae import Config, Trainer
    from pyro_vae.data import prepare_data

    config = Config(**CASES[case][0], epochs=epochs + 1, compile=compiled).resolved()
    pyro.set_rng_seed(0)
    trainer = Trainer.from_config(config, prepare_data(config))
    first = trainer.train_epoch()  # warm-up: compilation, allocator
    seconds = [trainer.train_epoch()["seconds"] for _ in range(epochs)]
    assert trainer.step_path == ("compiled" if compiled else "jit"), trainer.compile_failure
    return {"seconds": seconds, "test_elbo": trainer.history[-1]["test_elbo"],
            "first_epoch": first["seconds"], "points": int(trainer.data.x_train.shape[0])}


def run_numpyro(case: str, epochs: int, meta: dict, data_path: str, jit_epoch: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    from jax import lax, random
    from jax.example_libraries import stax
    from numpyro.infer import SVI, Trace_ELBO

    arrays = np.load(data_path)
    x_train, x_test = jnp.asarray(arrays["x_train"]), jnp.asarray(arrays["x_test"])
    n, d = x_train.shape
    b, latent = meta["batch_size"], meta["latent"]
    act = {"relu": stax.Relu, "softplus": stax.Softplus}[CASES[case][1]]
    hidden = meta["hidden"]
    body = [layer for h in hidden for layer in (stax.Dense(h), act)]
    encoder = stax.serial(*body, stax.FanOut(2), stax.parallel(
        stax.Dense(latent), stax.serial(stax.Dense(latent),
                                        stax.elementwise(lambda t: jnp.exp(0.5 * t)))))
    decoder = stax.serial(*[layer for h in hidden[::-1] for layer in (stax.Dense(h), act)],
                          stax.Dense(d))

    def model(x, scale):
        decode = numpyro.module("decoder", decoder, (b, latent))
        sigma = None
        if meta["likelihood"] == "gaussian-learned":
            sigma = numpyro.param("obs_scale", 1.0, constraint=dist.constraints.positive)
        with numpyro.handlers.scale(scale=scale), numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(jnp.zeros((x.shape[0], latent)), 1.0)
                               .to_event(1))
            out = decode(z)
            if meta["likelihood"] == "bernoulli":
                fn = dist.Bernoulli(logits=out)
            else:
                fn = dist.Normal(out, sigma if sigma is not None else meta["obs_scale"])
            numpyro.sample("x", fn.to_event(1), obs=x)

    def guide(x, scale):
        encode = numpyro.module("encoder", encoder, (b, d))
        with numpyro.handlers.scale(scale=scale), numpyro.plate("data", x.shape[0]):
            loc, sd = encode(x)
            numpyro.sample("z", dist.Normal(loc, sd).to_event(1))

    svi = SVI(model, guide, numpyro.optim.Adam(meta["lr"]), Trace_ELBO())
    state = svi.init(random.PRNGKey(0), x_train[:b], n / b)
    steps = n // b

    @jax.jit
    def epoch(state, key):
        perm = random.permutation(key, n)

        def one(i, carry):
            state, total = carry
            batch = x_train[lax.dynamic_slice(perm, (i * b,), (b,))]
            state, loss = svi.update(state, batch, n / b)
            return state, total + loss

        return lax.fori_loop(0, steps, one, (state, 0.0))

    update = jax.jit(svi.update)

    def python_epoch(state, key):
        perm = random.permutation(key, n)
        total = 0.0
        for i in range(steps):
            state, loss = update(state, x_train[perm[i * b:(i + 1) * b]], n / b)
            total = total + loss
        return state, total

    run = epoch if jit_epoch else python_epoch
    key = random.PRNGKey(1)
    seconds = []
    for e in range(epochs + 1):  # the first is the warm-up (compilation)
        key, sub = random.split(key)
        start = time.perf_counter()
        state, total = run(state, sub)
        jax.block_until_ready(total)
        if e:
            seconds.append(time.perf_counter() - start)
    params = svi.get_params(state)
    loss = Trace_ELBO(num_particles=1).loss(random.PRNGKey(2), params, model, guide, x_test, 1.0)
    return {"seconds": seconds, "test_elbo": -float(loss) / x_test.shape[0],
            "points": steps * b}


# --------------------------------------------------------------------------- driver
def worker(args) -> None:
    meta = json.loads(args.meta) if args.meta else {}
    case = args.case[0]
    if args.worker.startswith("library"):
        result = run_library(case, args.epochs, compiled=args.worker == "library")
    else:
        result = run_numpyro(case, args.epochs, meta, args.data, args.worker == "numpyro-epoch")
    print(json.dumps(result))


def drive(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in args.case or list(CASES):
        data = out / f"{case}.npz"
        meta = write_data(case, data)
        epochs = CASES[case][2]
        per_side: dict[str, list[float]] = {s: [] for s in SIDES}
        elbo: dict[str, float] = {}
        first: list[float] = []
        points: dict[str, int] = {}
        pairs = [(a, b) for a in ("library", "library-jit")
                 for b in ("numpyro-epoch", "numpyro-step")] + [("library", "library-jit")]
        ratios: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
        for r in range(args.rounds):
            order = SIDES if r % 2 == 0 else SIDES[::-1]
            medians = {}
            for side in order:
                cmd = [sys.executable, __file__, "--worker", side, "--case", case,
                       "--epochs", str(epochs), "--data", str(data), "--meta", json.dumps(meta)]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                per_side[side] += result["seconds"]
                medians[side] = statistics.median(result["seconds"])
                elbo[side] = result["test_elbo"]
                points[side] = result["points"]
                if side == "library":
                    first.append(result["first_epoch"])
            for a, b in pairs:
                ratios[(a, b)].append(medians[a] / medians[b])
        ratio = {f"{a} / {b}": statistics.median(v) for (a, b), v in ratios.items()}
        # per training point: NumPyro's epoch skips the last partial batch, the library's not
        per_point = statistics.median(ratios[("library", "numpyro-epoch")]) \
            * points["numpyro-epoch"] / points["library"]
        row = {"case": case, "epochs_per_round": epochs, "rounds": args.rounds,
               **{f"{s} s/epoch": statistics.median(v) for s, v in per_side.items()},
               **ratio, "library / numpyro-epoch per point": per_point,
               "library first epoch s": statistics.median(first),
               **{f"{s} points/epoch": v for s, v in points.items()},
               **{f"{s} test ELBO": v for s, v in elbo.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    header = ["case", "library (compiled) s/epoch", "library JIT s/epoch",
              "NumPyro jitted epoch", "NumPyro jitted step", "compiled / NumPyro epoch",
              "compiled / NumPyro epoch, per point", "compiled / NumPyro step",
              "JIT / NumPyro epoch", "compiled / JIT", "first epoch (compiling) s",
              "test ELBO compiled / JIT / epoch / step"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['library s/epoch']:.4f} | {r['library-jit s/epoch']:.4f} | "
            f"{r['numpyro-epoch s/epoch']:.4f} | {r['numpyro-step s/epoch']:.4f} | "
            f"{r['library / numpyro-epoch']:.2f} | {r['library / numpyro-epoch per point']:.2f} | "
            f"{r['library / numpyro-step']:.2f} | {r['library-jit / numpyro-epoch']:.2f} | "
            f"{r['library / library-jit']:.2f} | {r['library first epoch s']:.1f} | "
            f"{r['library test ELBO']:.2f} / {r['library-jit test ELBO']:.2f} / "
            f"{r['numpyro-epoch test ELBO']:.2f} / {r['numpyro-step test ELBO']:.2f} |")
    table = "\n".join(lines)
    (out / "numpyro_speed.md").write_text(table + "\n")
    (out / "numpyro_speed.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", action="append", choices=list(CASES),
                   help="a case (repeatable; default all)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="runs/numpyro_speed")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--meta", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
