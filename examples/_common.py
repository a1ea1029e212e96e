"""Options every example script shares (not an example itself)."""

from __future__ import annotations

import argparse

#: The smoke-test data: a few scikit-learn digits, so that ``--smoke`` runs in seconds.
SMOKE_DATA = dict(dataset="digits", max_train=128, max_test=64)


def add_run_options(p: argparse.ArgumentParser, out: str, smoke: str = "a seconds-long run",
                    device: bool = True) -> None:
    """``--seed``, ``--device`` (unless ``device=False``), ``--out`` (default ``out``) and
    ``--smoke`` (help text ``smoke``)."""
    p.add_argument("--seed", type=int, default=0)
    if device:
        p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=out)
    p.add_argument("--smoke", action="store_true", help=smoke)
