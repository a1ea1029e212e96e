"""The semi-supervised VAE (M2, Kingma et al. 2014) on Fashion-MNIST with few labels.

For each number of labels N_l (100, 600, 1000, 3000 — equally many per class; the other training
images lose their labels), train M2 — y summed out by ``TraceEnum_ELBO`` where it is unknown,
plus the α-weighted classification term — and report the test accuracy of q(y|x) and the test
ELBO. The same runs come from the command line:

    pyro-vae train --dataset fashion-mnist --model m2 --labels 100 --hidden 500 --latent-dim 50

    python examples/semi_supervised.py             # about 40 minutes on 2 CPU cores
    python examples/semi_supervised.py --smoke     # digits, seconds

Writes one run folder per N_l (figures: ``analogies.png``, ``samples.png``, ``accuracy.png``),
``results.md`` and ``results.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import SMOKE_DATA, add_run_options

from pyro_vae import Config, train_run
from pyro_vae.lab import reporting


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_options(p, "runs/semi_supervised", "digits, a few seconds")
    p.add_argument("--labels", type=lambda s: [int(v) for v in s.split(",")],
                   default=[100, 600, 1000, 3000])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--latent-dim", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=200)
    args = p.parse_args()
    data = dict(dataset="fashion-mnist")
    if args.smoke:
        data, args.labels, args.epochs, args.hidden = SMOKE_DATA, [20, 50], 2, 32
        args.batch_size = 50
    out = Path(args.out)
    rows = []
    for labels in args.labels:
        config = Config(**data, model="m2", labels=labels, hidden=(args.hidden,),
                        latent_dim=args.latent_dim, activation="softplus", lr=args.lr,
                        batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
                        device=args.device)
        result = train_run(config, out / f"labels-{labels}", progress=False)
        last = result.history[-1]
        best = max(h["test_accuracy"] for h in result.history)
        rows.append({"labels": labels, "test_accuracy": last["test_accuracy"],
                     "best_epoch_accuracy": best, "test_elbo": last["test_elbo"],
                     "test_elbo_se": last["test_elbo_se"],
                     "seconds": sum(h["seconds"] for h in result.history)})
        print(f"{labels} labels: test accuracy {last['test_accuracy']:.3f}, test ELBO "
              f"{last['test_elbo']:.2f}")
    header = ["labels", "test accuracy of q(y|x)", "(best epoch)", "test ELBO", "train seconds"]
    table = [[r["labels"], f"{r['test_accuracy']:.3f}", f"{r['best_epoch_accuracy']:.3f}",
              f"{r['test_elbo']:.2f} ± {r['test_elbo_se']:.2f}", f"{r['seconds']:.0f}"]
             for r in rows]
    notes = (f"M2, MLPs {args.hidden} softplus, z of {args.latent_dim} dims, Adam {args.lr}, "
             f"batch {args.batch_size} unlabelled + {args.batch_size} labelled per step, "
             f"{args.epochs} epochs over the unlabelled images, α = 0.1·N; the test ELBO draws "
             "y from q(y|x) (analytic KL at y and z). The accuracy reported is the last epoch's "
             "(the best epoch's is chosen on the test set, so it is optimistic).")
    reporting.write_results(out, "Semi-supervised VAE (M2)", header, table, notes)
    (out / "results.json").write_text(json.dumps({"rows": rows, "args": vars(args)},
                                                 indent=2) + "\n")


if __name__ == "__main__":
    main()
