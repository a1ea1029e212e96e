"""Do the three step strategies train the same model? Final test ELBOs of eager, default (JIT)
and compiled (``--compile``) training over several seeds, paired by seed.

For each case (the data set's default configuration and length, or ``--epochs``) and seed,
the library's trainer runs three times from the same seed: ``jit=False, compile=False``
(eager: Pyro's ELBO and autograd as written), ``compile=False`` (the default path for these
lengths: Pyro's JIT ELBO), ``compile=True`` (one TorchInductor program per step). The three
draw the same random numbers in the same order (``tests/infer/test_one_loop.py`` checks their
first steps equal), so a paired difference away from zero by more than its standard error
would mean a strategy trains another objective; differences of a few hundredths of a nat are
float rounding grown over thousands of steps.

Printed: per case and strategy the mean final test ELBO over seeds (± sd), and per other
strategy the paired difference to eager, mean ± standard error over seeds and the largest
|difference|.

    python benchmarks/strategy_equivalence.py                        # circle, moons, digits
    python benchmarks/strategy_equivalence.py --case circle --seeds 10
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings
from pathlib import Path

import pyro
import torch

from pyro_vae import Config, Trainer
from pyro_vae.data import prepare_data

CASES = ("circle", "moons", "digits")
STRATEGIES = {"eager": dict(jit=False, compile=False), "default (JIT)": dict(compile=False),
              "compiled": dict(compile=True)}


def final_test_elbo(case: str, seed: int, epochs: int | None, options: dict) -> tuple[float, str]:
    config = Config(dataset=case, seed=seed, **({"epochs": epochs} if epochs else {}),
                    **options).resolved()
    data = prepare_data(config)
    pyro.set_rng_seed(seed)
    trainer = Trainer.from_config(config, data)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="--compile")  # a silent fallback would lie
        trainer.fit()
    return trainer.history[-1]["test_elbo"], trainer.step_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", action="append", choices=CASES, help="repeatable; default all")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--strategy", action="append", choices=list(STRATEGIES),
                   help="repeatable; default all (eager is always run: the reference)")
    p.add_argument("--epochs", type=int, help="default: each data set's own")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/strategy_equivalence")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    chosen = {name: options for name, options in STRATEGIES.items()
              if name == "eager" or not args.strategy or name in args.strategy}
    for case in args.case or CASES:
        elbos: dict[str, list[float]] = {s: [] for s in chosen}
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for name, options in chosen.items():
                start = time.perf_counter()
                value, path = final_test_elbo(case, seed, args.epochs, options)
                expected = {"eager": "eager", "default (JIT)": "jit", "compiled": "compiled"}
                assert path == expected[name], (name, path)
                elbos[name].append(value)
                print(f"{case} seed {seed} {name}: test ELBO {value:.4f} "
                      f"({time.perf_counter() - start:.1f} s)", flush=True)
        for name, values in elbos.items():
            diffs = [v - e for v, e in zip(values, elbos["eager"], strict=True)]
            rows.append({
                "case": case, "strategy": name, "seeds": args.seeds,
                "mean": statistics.mean(values), "sd": statistics.stdev(values),
                "diff_mean": statistics.mean(diffs),
                "diff_se": statistics.stdev(diffs) / math.sqrt(len(diffs)),
                "diff_max": max(abs(d) for d in diffs), "values": values})
    lines = ["| case | strategy | final test ELBO, mean ± sd over seeds | − eager, mean ± se "
             "(paired) | largest \\|− eager\\| |", "| --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        paired = "—" if r["strategy"] == "eager" else f"{r['diff_mean']:+.4f} ± {r['diff_se']:.4f}"
        largest = "—" if r["strategy"] == "eager" else f"{r['diff_max']:.4f}"
        lines.append(f"| {r['case']} | {r['strategy']} | {r['mean']:.4f} ± {r['sd']:.4f} | "
                     f"{paired} | {largest} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "strategy_equivalence.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "strategy_equivalence.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
