"""Seconds per epoch or per step of the analysis tools against the VAE they analyse, measured
side by side in one process, alternating, with paired ratios (issue 17's second-round targets).

``vem``: on the circle (15 000 points, batch 1000, the ``examples/vem_vs_vae.py`` settings),
one epoch of ``VariationalEM`` — ``alternating`` (5 E-steps on the batch's λ, then one θ step:
six passes through the decoder per batch) and ``joint`` (λ and θ in one step), each eager and
compiled — against one epoch of the VAE trainer on its JIT path and compiled (``--compile``).

``score``: on moons, one training step with the score-function estimator (``TraceGraph_ELBO``
with z made non-reparameterized, ``--estimator score``) against one pathwise step
(``Trace_ELBO``), both through the trainer on the same batch size, each compiled
(``--compile``) and uncompiled (score: eager; pathwise: JIT).

Printed: median seconds and the median over rounds of each paired ratio.

    python benchmarks/analysis_speed.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import pyro

from pyro_vae import Config, Trainer
from pyro_vae.data import prepare_data
from pyro_vae.infer.vem import VariationalEM
from pyro_vae.models.builder import build_vae


def vem_case(rounds: int) -> dict:
    config = Config(dataset="circle", epochs=100).resolved()
    data = prepare_data(config)
    n = data.x_train.shape[0]
    builders = {}

    def trainer(compiled):
        t = Trainer.from_config(config.replace(compile=compiled), data)
        t.evaluate = lambda: {}  # the epoch's training time only
        return lambda: t.train_epoch()["seconds"]

    def vem(mode, compiled):
        v = VariationalEM(build_vae(config, data.event_shape, num_data=n), n, e_steps=5,
                          e_lr=3e-2, m_lr=config.lr, mode=mode, compile=compiled)
        return lambda: v.fit(data.x_train, None, 1, config.batch_size)[-1]["seconds"]

    builders["vae-jit"] = lambda: trainer(False)
    builders["vae-compiled"] = lambda: trainer(True)
    for mode in ("alternating", "joint"):
        builders[f"vem-{mode}"] = lambda m=mode: vem(m, False)
        builders[f"vem-{mode}-compiled"] = lambda m=mode: vem(m, True)
    return _alternate(builders, rounds, base="vae-jit")


def score_case(rounds: int) -> dict:
    builders = {}

    def trainer(estimator, compiled):
        config = Config(dataset="moons", estimator=estimator, epochs=100,
                        compile=compiled).resolved()
        t = Trainer.from_config(config, prepare_data(config))
        t.evaluate = lambda: {}
        return lambda: t.train_epoch()["seconds"] / t.steps_per_epoch

    for name, estimator, compiled in (("pathwise-compiled", "reparam", True),
                                      ("score-compiled", "score", True),
                                      ("pathwise-jit", "reparam", False),
                                      ("score-eager", "score", False)):
        builders[name] = lambda e=estimator, c=compiled: trainer(e, c)
    return _alternate(builders, rounds, base="pathwise-compiled")


def _alternate(builders: dict, rounds: int, base: str) -> dict:
    """Build and warm up each runner (compilation, allocator) in its own param store — the
    models share Pyro's param names — then time them in alternating rounds, each against its
    own store state."""
    store = pyro.get_param_store()
    runners, states = {}, {}
    for name, build in builders.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        runners[name] = build()
        runners[name]()
        runners[name]()
        states[name] = store.get_state()

    def timed(name):
        pyro.clear_param_store()
        store.set_state(states[name])
        return runners[name]()

    seconds: dict[str, list[float]] = {k: [] for k in runners}
    ratios: dict[str, list[float]] = {k: [] for k in runners if k != base}
    names = list(runners)
    for r in range(rounds):
        got = {}
        for name in names if r % 2 == 0 else names[::-1]:
            got[name] = statistics.median(timed(name) for _ in range(3))
            seconds[name].append(got[name])
        for name in ratios:
            ratios[name].append(got[name] / got[base])
    return {"seconds": {k: statistics.median(v) for k, v in seconds.items()},
            f"ratio to {base}": {k: statistics.median(v) for k, v in ratios.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", action="append", choices=("vem", "score"))
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    for case in args.case or ("vem", "score"):
        start = time.perf_counter()
        result = {"vem": vem_case, "score": score_case}[case](args.rounds)
        result["case"], result["wall_seconds"] = case, time.perf_counter() - start
        print(json.dumps(result, indent=1), flush=True)


if __name__ == "__main__":
    main()
