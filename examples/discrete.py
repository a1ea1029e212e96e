"""Discrete latent codes: every estimator against the exact gradient, then trained side by side.

Part 1 — the lab on a code small enough to enumerate (8 binary units on binarized 8×8 digits,
2^8 states): each estimator's bias against the exact gradient of its target (ELBO, or IWAE_K for
VIMCO), its variance and cost, and the relaxations across temperatures
(``pyro-vae variance discrete-toy`` runs the same).

Part 2 — training: the VIMCO / REBAR papers' code of K = 200 binary units on binarized
Fashion-MNIST, one VAE per estimator from the same initial weights, each for the same wall-clock
budget; test ELBO and IWAE log p(x) at the end, and the test ELBO against seconds.

    python examples/discrete.py                # about 25 minutes (Fashion-MNIST, 150 s each)
    python examples/discrete.py --smoke        # seconds (digits, 0.1 s each)

Writes ``lab/`` (tables, ``bias_variance.png``), ``elbo_vs_time.png``, ``results.md`` and
``results.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pyro
from _common import SMOKE_DATA, add_run_options

from pyro_vae import Config, Trainer, evaluate_elbo, iwae_log_likelihood
from pyro_vae.data import prepare_data
from pyro_vae.lab import reporting
from pyro_vae.lab.discrete import (
    discrete_table,
    discrete_toy,
    run_discrete_lab,
    temperature_sweep,
    write_discrete_report,
)

TRAINED = {  # label: the estimator's options
    "score-avg": dict(estimator="score-avg"),
    "score-nn (NVIL)": dict(estimator="score-nn"),
    "vimco K=4": dict(estimator="vimco", num_particles=4),
    "relaxed": dict(estimator="relaxed"),
    "relaxed-st": dict(estimator="relaxed-st"),
}


def lab(args, out: Path) -> None:
    vae, x = discrete_toy(units=4 if args.smoke else 8, seed=args.seed,
                          train_steps=5 if args.smoke else 300)
    repeats, warmup = (20, 10) if args.smoke else (1000, 300)
    results = run_discrete_lab(vae, x, repeats=repeats, temperature=0.5, seed=args.seed,
                               warmup=warmup)
    sweep = temperature_sweep(vae, x, (1.0, 0.5, 0.25, 0.1), repeats=repeats, seed=args.seed)
    write_discrete_report(results, sweep, out / "lab", {"repeats": repeats})
    print(discrete_table(results))


def train(label: str, options: dict, args, data, initial: dict) -> dict:
    config = Config(**base_config(args), **options)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    trainer = Trainer.from_config(config, data, device=args.device)
    trainer.vae.load_state_dict(initial)  # the same starting weights for every estimator
    curve, spent = [], 0.0
    while spent < args.seconds:
        metrics = trainer.train_epoch()
        spent += metrics["seconds"]  # training time; evaluation is not counted
        curve.append((spent, metrics["test_elbo"]))
    x = trainer.data.x_test[: args.eval_points]
    elbo = evaluate_elbo(trainer.vae, x, num_samples=10)["elbo"]
    ll = iwae_log_likelihood(trainer.vae, x, num_samples=args.iw_samples)
    return {"estimator": label, "seconds": spent, "epochs": trainer.epoch,
            "steps": trainer.global_step, "test_elbo": elbo.mean, "test_elbo_se": elbo.stderr,
            "log_px": float(ll.mean()), "log_px_se": float(ll.std() / len(ll) ** 0.5),
            "curve": curve}


def base_config(args) -> dict:
    data = SMOKE_DATA if args.smoke else dict(dataset="fashion-mnist", max_train=args.max_train)
    return dict(**data, latent="bernoulli", latent_dim=args.units, hidden=(args.hidden,),
                activation="tanh", lr=args.lr, batch_size=args.batch_size,
                binarize="dynamic", seed=args.seed, epochs=10**6, temperature=1.0,
                temperature_min=0.5, temperature_decay=1e-4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_options(p, "runs/discrete", "digits, a few seconds per estimator")
    p.add_argument("--seconds", type=float, default=150.0, help="training budget per estimator")
    p.add_argument("--units", type=int, default=200)
    p.add_argument("--hidden", type=int, default=200)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--max-train", type=int, default=60000)
    p.add_argument("--eval-points", type=int, default=1000)
    p.add_argument("--iw-samples", type=int, default=1000)
    args = p.parse_args()
    if args.smoke:
        args.seconds, args.units, args.hidden, args.iw_samples = 0.1, 16, 32, 20
        args.eval_points = 50
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lab(args, out)

    data = prepare_data(Config(**base_config(args)).resolved())
    pyro.set_rng_seed(args.seed)
    initial = Trainer.from_config(Config(**base_config(args)), data).vae.state_dict()
    rows, curves = [], {}
    for label, options in TRAINED.items():
        start = time.perf_counter()
        result = train(label, options, args, data, initial)
        curves[label] = result.pop("curve")
        rows.append(result)
        print(f"{label}: {result['epochs']} epochs in {result['seconds']:.0f} s, test ELBO "
              f"{result['test_elbo']:.2f}, log p(x) {result['log_px']:.2f} "
              f"({time.perf_counter() - start:.0f} s with evaluation)")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, curve in curves.items():
        ax.plot([c[0] for c in curve], [c[1] for c in curve], "o-", ms=3, label=label)
    ax.set_xlabel("training seconds")
    ax.set_ylabel("test ELBO (nats / image)")
    ax.set_title(f"{args.units} binary units: test ELBO against wall-clock time")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "elbo_vs_time.png", dpi=110)
    header = ["estimator", "epochs", "steps", "seconds", "test ELBO", "IWAE log p(x)"]
    table = [[r["estimator"], r["epochs"], r["steps"], f"{r['seconds']:.0f}",
              f"{r['test_elbo']:.2f} ± {r['test_elbo_se']:.2f}",
              f"{r['log_px']:.2f} ± {r['log_px_se']:.2f}"] for r in rows]
    notes = (f"{args.units} binary units, MLP {args.hidden} tanh, Adam {args.lr}, batch "
             f"{args.batch_size}, the same initial weights and ≈ {args.seconds:.0f} s of training "
             f"each; IWAE with K = {args.iw_samples} on {args.eval_points} test images.")
    reporting.write_results(out, "Discrete codes: estimators at equal wall-clock time",
                            header, table, notes)
    (out / "results.json").write_text(json.dumps({"rows": rows, "curves": curves,
                                                  "args": vars(args)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
