"""Throughput of data-parallel training (``--strategy ddp``) against the number of workers.

Runs ``pyro-vae train --strategy ddp --devices N`` for each N (CPU processes with the gloo
backend, or GPUs with ``--device cuda``) on the same data and configuration, and reports the
median seconds per epoch and training points per second from each run's ``distributed.json``,
with the library's single-process trainer (``--strategy single``) as the reference. Each worker
takes ``--batch-size`` points per step, so N workers take N times as many per step.

    python benchmarks/ddp_throughput.py --devices 1,2 -- --dataset fashion-mnist --epochs 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.lab.reporting import markdown_header, markdown_row


def train(out: Path, options: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "pyro_vae", "train", "--out", str(out),
                    "--no-progress", "--no-figures", *options], check=True,
                   capture_output=True, text=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", default="1,2", help="comma-separated worker counts")
    p.add_argument("options", nargs="*", help="pyro-vae train options (after --)")
    args = p.parse_args()
    options = args.options or ["--dataset", "fashion-mnist", "--epochs", "2"]
    print(f"pyro-vae train {' '.join(options)}")
    print(markdown_header(["strategy", "workers", "median s / epoch", "training points / s",
                           "final test ELBO"], "lrrrr"))
    with tempfile.TemporaryDirectory() as tmp:
        train(Path(tmp) / "single", options)
        metrics = json.loads((Path(tmp) / "single" / "metrics.json").read_text())
        n = load_checkpoint(Path(tmp) / "single")["data"]["num_data"]
        sec = statistics.median(m["seconds"] for m in metrics)
        print(markdown_row(["single (library trainer)", 1, f"{sec:.2f}", f"{n / sec:.0f}",
                            f"{metrics[-1]['test_elbo']:.2f}"]), flush=True)
        for devices in args.devices.split(","):
            out = Path(tmp) / f"ddp{devices}"
            train(out, [*options, "--strategy", "ddp", "--devices", devices])
            summary = json.loads((out / "distributed.json").read_text())
            last = json.loads((out / "metrics.json").read_text())[-1]
            print(markdown_row(["ddp", summary["workers"],
                                f"{summary['median_epoch_seconds']:.2f}",
                                f"{summary['train_points_per_second']:.0f}",
                                f"{last['test_elbo']:.2f}"]), flush=True)


if __name__ == "__main__":
    main()
