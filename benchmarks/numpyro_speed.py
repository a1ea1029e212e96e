"""Seconds per training epoch, and the README's first run end to end: pyro-vae against
NumPyro's compiled VAE, each in its own process (JAX and torch in one process starve each
other's thread pools), at one and at two threads.

Sides, for each case (the same networks, data, ELBO, batch size, Adam settings and — for the
dynamically binarized digits — a fresh Bernoulli draw of every mini-batch on both sides):

``library-jit``     the library's **default path** (``pyro_vae.Trainer`` as ``pyro-vae train``
                    builds it; for every case here the run is shorter than the 8000 steps from
                    which the trainer compiles by itself): Pyro's JIT ELBO, eager backward,
                    fused ``torch.optim.Adam``;
``library``         ``compile=True`` (``--compile``): Pyro's ELBO, its gradient and Adam as one
                    TorchInductor program (``pyro_vae.infer.compiled``); the last, smaller
                    batch of an epoch runs on the JIT path;
``numpyro-epoch``   NumPyro's VAE-example way: one ``jax.jit``-compiled epoch, mini-batch
                    updates inside ``lax.fori_loop`` (full batches only);
``numpyro-step``    ``jax.jit(svi.update)`` called from a Python loop.

The driver writes each case's data once (``.npz``, so the JAX workers never import torch), then
runs ``--rounds`` rounds per thread count; in each round every side trains the case's epochs in
a fresh process after one untimed warm-up epoch (compilation), in alternating order. Printed:
per side the median seconds per epoch, the paired ratios (median over rounds of the
within-round ratio) and each side's test ELBO (nats per point) after its epochs.

**End to end** (``--e2e``, on by default): the README's first command, ``pyro-vae train`` on
the digits (200 epochs, per-epoch ELBO of a training subset and the test set, checkpoints;
``--no-figures``: cold start to the last epoch), against a NumPyro script doing the same work
(imports, data, build, compile, 200 jitted epochs, the same per-epoch ELBOs), each a fresh
process timed from the outside, alternating.

**JAX's persistent compilation cache** (``--e2e``): NumPyro's cold start is mostly XLA
compiling (``svi.init`` runs the model op by op, each op compiled: about 120 compilations,
6 s here). A third end-to-end side, ``numpyro-e2e-cached``, runs with JAX's on-disk cache
(``JAX_COMPILATION_CACHE_DIR``, every entry kept) after one untimed run that fills it: what a
NumPyro user who turned the cache on sees from the second run on. The library's default path
has no persistent artifact to reuse (``torch.jit`` traces per process; ``--compile`` uses
Inductor's on-disk cache).

Threads: torch ``set_num_threads(N)`` (``--threads N`` for ``pyro-vae train``); XLA
``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` for one thread, its
default (all cores) for two on this 2-core machine. **One thread is also one core**: with those
flags XLA still runs its matrix products on every core (16.3 s of CPU in 10.3 s of wall time
for a single-"thread" matmul loop on this machine), so for ``--threads 1`` every worker, of
either side, is pinned to CPU 0 (``sched_setaffinity``).

    pip install -c constraints.txt -e ".[bench]"
    python benchmarks/numpyro_speed.py                      # all cases, 1 and 2 threads, e2e
    python benchmarks/numpyro_speed.py --case circle --threads 1 --rounds 3 --no-e2e
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {  # name: (library Config options, hidden activation, epochs per round)
    "digits": (dict(dataset="digits"), "relu", 20),
    "circle": (dict(dataset="circle"), "relu", 20),
    "moons": (dict(dataset="moons"), "relu", 10),
    "fmnist-mlp": (dict(dataset="fashion-mnist", hidden=(400,), latent_dim=50,
                        activation="softplus", likelihood="bernoulli", binarize="threshold",
                        lr=1e-3, batch_size=256), "softplus", 2),
}
SIDES = ("library-jit", "library", "numpyro-epoch", "numpyro-step")
E2E_SIDES = ("library-e2e", "numpyro-e2e", "numpyro-e2e-cached")


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
            "batch_size": config.batch_size, "lr": config.lr, "epochs": config.epochs,
            "dynamic": config.binarize == "dynamic"}


# --------------------------------------------------------------------------- workers
def run_library(case: str, epochs: int, compiled: bool, threads: int) -> dict:
    import pyro
    import torch

    from pyro_vae import Config, Trainer
    from pyro_vae.data import prepare_data

    torch.set_num_threads(threads)
    config = Config(**CASES[case][0], epochs=epochs + 1, compile=compiled).resolved()
    pyro.set_rng_seed(0)
    trainer = Trainer.from_config(config, prepare_data(config))
    first = trainer.train_epoch()  # warm-up: compilation, allocator
    seconds = [trainer.train_epoch()["seconds"] for _ in range(epochs)]
    assert trainer.step_path == ("compiled" if compiled else "jit"), trainer.compile_failure
    return {"seconds": seconds, "test_elbo": trainer.history[-1]["test_elbo"],
            "first_epoch": first["seconds"], "points": int(trainer.data.x_train.shape[0])}


def run_numpyro(case: str, epochs: int, meta: dict, data_path: str, mode: str) -> dict:
    """``mode``: ``epoch`` (jitted epochs), ``step`` (jitted steps from Python) or ``e2e`` (the
    default run's epochs as jitted epochs, each followed by the ELBO of the training set and
    the test set, as the library's trainer evaluates)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    from jax import lax, random
    from jax.example_libraries import stax
    from numpyro.infer import SVI, Trace_ELBO

    numpyro.enable_validation(False)
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

    def binarized(key, x):  # the dynamically binarized cases: a fresh draw per mini-batch
        return random.bernoulli(key, x).astype(x.dtype) if meta["dynamic"] else x

    svi = SVI(model, guide, numpyro.optim.Adam(meta["lr"]), Trace_ELBO())
    state = svi.init(random.PRNGKey(0), binarized(random.PRNGKey(3), x_train[:b]), n / b)
    steps = n // b

    @jax.jit
    def epoch(state, key):
        perm_key, bin_key = random.split(key)
        perm = random.permutation(perm_key, n)

        def one(i, carry):
            state, total = carry
            batch = x_train[lax.dynamic_slice(perm, (i * b,), (b,))]
            batch = binarized(random.fold_in(bin_key, i), batch)
            state, loss = svi.update(state, batch, n / b)
            return state, total + loss

        return lax.fori_loop(0, steps, one, (state, 0.0))

    update = jax.jit(svi.update)

    def python_epoch(state, key):
        perm_key, bin_key = random.split(key)
        perm = random.permutation(perm_key, n)
        total = 0.0
        for i in range(steps):
            batch = binarized(random.fold_in(bin_key, i), x_train[perm[i * b:(i + 1) * b]])
            state, loss = update(state, batch, n / b)
            total = total + loss
        return state, total

    elbo = Trace_ELBO(num_particles=1)
    x_fixed = binarized(random.PRNGKey(4), x_train)  # the training subset the library scores

    @jax.jit
    def evaluate(state, key):
        params = svi.get_params(state)
        k1, k2 = random.split(key)
        return (-elbo.loss(k1, params, model, guide, x_fixed, 1.0) / n,
                -elbo.loss(k2, params, model, guide, x_test, 1.0) / x_test.shape[0])

    run = python_epoch if mode == "step" else epoch
    key = random.PRNGKey(1)
    seconds = []
    for _ in range(epochs + (mode != "e2e")):  # timed runs: the first is the warm-up
        key, sub, ev = random.split(key, 3)
        start = time.perf_counter()
        state, total = run(state, sub)
        jax.block_until_ready(total)
        seconds.append(time.perf_counter() - start)
        if mode == "e2e":
            jax.block_until_ready(evaluate(state, ev))
    if mode != "e2e":
        seconds = seconds[1:]
    params = svi.get_params(state)
    loss = elbo.loss(random.PRNGKey(2), params, model, guide, x_test, 1.0)
    return {"seconds": seconds, "test_elbo": -float(loss) / x_test.shape[0],
            "points": steps * b}


# --------------------------------------------------------------------------- driver
def worker(args) -> None:
    meta = json.loads(args.meta) if args.meta else {}
    case = args.case[0]
    if args.worker.startswith("library"):
        result = run_library(case, args.epochs, args.worker == "library", args.threads[0])
    else:
        result = run_numpyro(case, args.epochs, meta, args.data, args.worker.split("-")[1])
    print(json.dumps(result))


def _env(threads: int, jax_cache: Path | None = None) -> dict:
    """The worker's environment: ``threads`` for XLA (torch's is set in the worker), and
    JAX's persistent compilation cache in ``jax_cache`` (every entry kept)."""
    env = dict(os.environ)
    for key in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR"):
        env.pop(key, None)
    if threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    elif threads != os.cpu_count():
        env["XLA_FLAGS"] = f"--intra_op_parallelism_threads={threads}"
    if jax_cache is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(jax_cache),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def _run(cmd: list[str], threads: int, jax_cache: Path | None = None) -> tuple[float, str]:
    """Run a worker; with ``threads == 1`` pinned to one core (see the module docstring)."""
    pin = (lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})) \
        if threads == 1 else None
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(threads, jax_cache),
                          preexec_fn=pin)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:6])} failed:\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def measure_case(case: str, threads: int, rounds: int, out: Path) -> dict:
    data = out / f"{case}.npz"
    meta = write_data(case, data)
    epochs = CASES[case][2]
    per_side: dict[str, list[float]] = {s: [] for s in SIDES}
    elbo: dict[str, float] = {}
    first: list[float] = []
    points: dict[str, int] = {}
    pairs = [(a, b) for a in ("library-jit", "library")
             for b in ("numpyro-epoch", "numpyro-step")] + [("library", "library-jit")]
    ratios: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
    for r in range(rounds):
        order = SIDES if r % 2 == 0 else SIDES[::-1]
        medians = {}
        for side in order:
            cmd = [sys.executable, __file__, "--worker", side, "--case", case, "--epochs",
                   str(epochs), "--data", str(data), "--meta", json.dumps(meta),
                   "--threads", str(threads)]
            _, stdout = _run(cmd, threads)
            result = json.loads(stdout.strip().splitlines()[-1])
            per_side[side] += result["seconds"]
            medians[side] = statistics.median(result["seconds"])
            elbo[side] = result["test_elbo"]
            points[side] = result["points"]
            if side == "library":
                first.append(result["first_epoch"])
        for a, b in pairs:
            ratios[(a, b)].append(medians[a] / medians[b])
    return {"case": case, "threads": threads, "epochs_per_round": epochs, "rounds": rounds,
            **{f"{s} s/epoch": statistics.median(v) for s, v in per_side.items()},
            **{f"{a} / {b}": statistics.median(v) for (a, b), v in ratios.items()},
            "library first epoch s": statistics.median(first),
            **{f"{s} points/epoch": v for s, v in points.items()},
            **{f"{s} test ELBO": v for s, v in elbo.items()}}


def measure_e2e(threads: int, rounds: int, out: Path) -> dict:
    """The README's first command against the same work in NumPyro, whole processes."""
    data = out / "digits.npz"
    meta = write_data("digits", data)
    walls: dict[str, list[float]] = {s: [] for s in E2E_SIDES}
    ratios: dict[str, list[float]] = {s: [] for s in E2E_SIDES[1:]}
    elbo = {}
    jax_cache = out / f"jax-cache-{threads}"
    shutil.rmtree(jax_cache, ignore_errors=True)
    numpyro_cmd = [sys.executable, __file__, "--worker", "numpyro-e2e", "--case", "digits",
                   "--epochs", str(meta["epochs"]), "--data", str(data),
                   "--meta", json.dumps(meta), "--threads", str(threads)]
    _run(numpyro_cmd, threads, jax_cache)  # untimed: fills JAX's cache
    for r in range(rounds):
        order = E2E_SIDES if r % 2 == 0 else E2E_SIDES[::-1]
        this = {}
        for side in order:
            if side == "library-e2e":
                run_dir = out / f"e2e-run-{threads}-{r}"
                shutil.rmtree(run_dir, ignore_errors=True)
                cmd = [sys.executable, "-m", "pyro_vae", "train", "--out", str(run_dir),
                       "--no-progress", "--no-figures", "--threads", str(threads)]
                wall, _ = _run(cmd, threads)
                metrics = json.loads((run_dir / "metrics.json").read_text())
                history = metrics["history"] if isinstance(metrics, dict) else metrics
                elbo[side] = history[-1]["test_elbo"]
            else:
                cached = jax_cache if side == "numpyro-e2e-cached" else None
                wall, stdout = _run(numpyro_cmd, threads, cached)
                elbo[side] = json.loads(stdout.strip().splitlines()[-1])["test_elbo"]
            walls[side].append(wall)
            this[side] = wall
        for side in ratios:
            ratios[side].append(this["library-e2e"] / this[side])
    return {"threads": threads, "rounds": rounds,
            **{f"{s} s": statistics.median(v) for s, v in walls.items()},
            **{f"{s} s all": v for s, v in walls.items()},
            **{f"library / {s}": statistics.median(v) for s, v in ratios.items()},
            **{f"{s} test ELBO": v for s, v in elbo.items()}}


def drive(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, e2e = [], []
    for threads in args.threads:
        for case in args.case or list(CASES):
            row = measure_case(case, threads, args.rounds, out)
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.e2e:
            row = measure_e2e(threads, args.rounds, out)
            e2e.append(row)
            print(json.dumps(row), flush=True)
    header = ["case", "threads", "library default (JIT) s/epoch", "library --compile s/epoch",
              "NumPyro jitted epoch", "NumPyro jitted step", "default / NumPyro epoch",
              "compiled / NumPyro epoch", "default / NumPyro step", "first compiled epoch s",
              "test ELBO default / compiled / epoch / step"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['threads']} | {r['library-jit s/epoch']:.4f} | "
            f"{r['library s/epoch']:.4f} | {r['numpyro-epoch s/epoch']:.4f} | "
            f"{r['numpyro-step s/epoch']:.4f} | {r['library-jit / numpyro-epoch']:.2f} | "
            f"{r['library / numpyro-epoch']:.2f} | {r['library-jit / numpyro-step']:.2f} | "
            f"{r['library first epoch s']:.1f} | {r['library-jit test ELBO']:.2f} / "
            f"{r['library test ELBO']:.2f} / {r['numpyro-epoch test ELBO']:.2f} / "
            f"{r['numpyro-step test ELBO']:.2f} |")
    for r in e2e:
        lines.append(
            f"| **end to end** (`pyro-vae train`, 200 epochs, cold start to last epoch; "
            f"NumPyro cold / with JAX's cache warm) | {r['threads']} | "
            f"{r['library-e2e s']:.1f} s | | {r['numpyro-e2e s']:.1f} s / "
            f"{r['numpyro-e2e-cached s']:.1f} s | | "
            f"**{r['library / numpyro-e2e']:.2f}** / {r['library / numpyro-e2e-cached']:.2f} | "
            f"| | | {r['library-e2e test ELBO']:.2f} / / {r['numpyro-e2e test ELBO']:.2f} / |")
    table = "\n".join(lines)
    (out / "numpyro_speed.md").write_text(table + "\n")
    (out / "numpyro_speed.json").write_text(json.dumps({"per_epoch": rows, "e2e": e2e},
                                                       indent=2) + "\n")
    print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", action="append", choices=list(CASES),
                   help="a case (repeatable; default all)")
    p.add_argument("--threads", action="append", type=int,
                   help="torch / XLA threads per process (repeatable; default 1 and 2)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--e2e", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the README's first command end to end (default on)")
    p.add_argument("--out", default="runs/numpyro_speed")
    p.add_argument("--worker", choices=(*SIDES, *E2E_SIDES[1:]), help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--meta", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.threads = args.threads or [1, 2]
    if args.worker:
        worker(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
