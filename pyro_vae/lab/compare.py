"""Several runs side by side: their ELBO curves in one figure and one table of final metrics
(``pyro-vae compare RUN [RUN ...]``), for the estimator and objective studies.

Only the run folders' ``config.json``, ``metrics.json`` and, when ``pyro-vae evaluate`` has
scored the run, ``evaluation.json`` are read — no model, no data — so comparing many runs is
instant. The table holds per run: what differs between the configurations (the columns a
reader compares), epochs, final test ELBO ± standard error, its KL term, test log p(x) with the
method that estimated it, and the training seconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyro_vae.errors import ConfigError
from pyro_vae.lab.reporting import markdown_table

#: configuration keys never shown as a difference: they do not change what was trained, or
#: (``epochs``) the table shows them anyway
IGNORED = frozenset({"device", "checkpoint_every", "skip_nonfinite", "data_root", "download",
                     "epochs"})


@dataclass
class RunSummary:
    """What :func:`compare_runs` reads from one run folder."""

    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    evaluation: dict[str, Any] | None

    @property
    def label(self) -> str:
        return self.path.name or str(self.path)

    def final(self, key: str) -> float | None:
        value = self.history[-1].get(key) if self.history else None
        return float(value) if isinstance(value, (int, float)) else None


def read_run(path: str | Path) -> RunSummary:
    """A run folder's configuration, metrics and evaluation, or a one-line error."""
    folder = Path(path)
    if folder.name == "checkpoint.pt":
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a run folder; give folders written by "
                          "'pyro-vae train --out'")
    try:
        config = json.loads((folder / "config.json").read_text())
        history = json.loads((folder / "metrics.json").read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{folder} lacks {Path(exc.filename).name}: it is not a finished run "
                          "folder; train it first or drop it from the comparison") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{folder} has an unreadable config.json or metrics.json ({exc}); "
                          "re-train it or drop it from the comparison") from None
    if not isinstance(config, dict) or not isinstance(history, list) or not all(
            isinstance(row, dict) for row in history):
        raise ConfigError(f"{folder}'s config.json or metrics.json is damaged; re-train it or "
                          "drop it from the comparison")
    evaluation = None
    if (folder / "evaluation.json").exists():
        try:
            evaluation = json.loads((folder / "evaluation.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            evaluation = None
    return RunSummary(folder, config, history, evaluation)


def differing_keys(runs: list[RunSummary]) -> list[str]:
    """Configuration keys whose values differ between the runs."""
    keys = sorted({k for r in runs for k in r.config} - IGNORED)
    return [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True)
                                    for r in runs}) > 1]


def _fmt(value: float | None, se: float | None = None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def compare_table(runs: list[RunSummary]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison (module docstring)."""
    keys = differing_keys(runs)
    header = ["run", *keys, "epochs", "test ELBO", "test KL", "test log p(x)", "seconds"]
    rows = []
    for r in runs:
        ev = r.evaluation or {}
        ll = ev.get("test_log_likelihood")
        how = ev.get("method")
        log_px = _fmt(ll, ev.get("test_log_likelihood_se")) + (f" ({how})" if how else "")
        seconds = sum(float(h.get("seconds", 0) or 0) for h in r.history)
        rows.append([r.label, *[json.dumps(r.config.get(k)) for k in keys],
                     str(len(r.history)), _fmt(r.final("test_elbo"), r.final("test_elbo_se")),
                     _fmt(r.final("test_kl")), log_px, f"{seconds:.1f}"])
    return header, rows


def plot_curves(runs: list[RunSummary], path: str | Path) -> Path:
    """Test ELBO (solid) and train ELBO (dashed) per epoch of every run, one colour each."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    for i, r in enumerate(runs):
        epochs = [h.get("epoch", j + 1) for j, h in enumerate(r.history)]
        for key, style in (("test_elbo", "-"), ("train_elbo", "--")):
            values = [h.get(key) for h in r.history]
            if any(isinstance(v, (int, float)) for v in values):
                ax.plot(epochs, [v if isinstance(v, (int, float)) else math.nan for v in values],
                        style, color=f"C{i % 10}",
                        label=f"{r.label} ({key.split('_')[0]})")
    ax.set(xlabel="epoch", ylabel="ELBO per data point (nats)",
           title="runs compared: test (solid) and train (dashed) ELBO")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def compare_runs(paths: list[str | Path], out: str | Path) -> tuple[str, list[RunSummary]]:
    """Read the runs, write ``out/compare.png``, ``compare.md`` and ``compare.json``; return
    the Markdown table and the runs."""
    if not paths:
        raise ConfigError("compare needs at least one run folder; give RUN [RUN ...]")
    runs = [read_run(p) for p in paths]
    header, rows = compare_table(runs)
    table = markdown_table(header, rows)
    out = Path(out)
    plot_curves(runs, out / "compare.png")
    (out / "compare.md").write_text(table)
    (out / "compare.json").write_text(json.dumps(
        [dict(zip(header, row, strict=True)) for row in rows], indent=2) + "\n")
    return table, runs
