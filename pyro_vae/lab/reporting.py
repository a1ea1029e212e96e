"""Small Markdown results tables, as the example scripts and benchmarks write them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path


def markdown_cell(value: object) -> str:
    """Floats with 3 decimals below 1000 and 4 significant digits above; others as ``str``."""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)


def markdown_header(header: Sequence[str], align: str | None = None) -> str:
    """The header and rule lines of a Markdown table; ``align`` has one ``l`` or ``r`` per
    column (default: all left)."""
    rules = ["---:" if a == "r" else "---" for a in (align or "l" * len(header))]
    return "| " + " | ".join(header) + " |\n| " + " | ".join(rules) + " |"


def markdown_row(row: Sequence[object]) -> str:
    """One Markdown table row, cells formatted by :func:`markdown_cell`."""
    return "| " + " | ".join(markdown_cell(v) for v in row) + " |"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]],
                   align: str | None = None) -> str:
    """A Markdown table (see :func:`markdown_header` and :func:`markdown_row`)."""
    return "\n".join([markdown_header(header, align), *map(markdown_row, rows)]) + "\n"


def write_results(out: str | Path, title: str, header: Sequence[str],
                  rows: Sequence[Sequence[object]], notes: str = "") -> Path:
    """Write ``out/results.md`` (a title, the table, optional notes), print it, return the path."""
    text = f"# {title}\n\n{markdown_table(header, rows)}"
    if notes:
        text += f"\n{notes.strip()}\n"
    path = Path(out) / "results.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    return path


def pm(value: float, se: float, unit: str = "", digits: int = 4) -> str:
    """``value ± se`` (``digits`` significant digits for the value, 2 for the error), the
    value alone where the error is not finite."""
    if se is None or not math.isfinite(se):
        return f"{value:.{digits}g}{unit}"
    return f"{value:.{digits}g} ± {se:.2g}{unit}"


def interval(value: float, low: float, high: float, digits: int = 3) -> str:
    """``value [low, high]``, the value alone where the interval is not finite."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{value:.{digits}g}"
    return f"{value:.{digits}g} [{low:.{digits}g}, {high:.{digits}g}]"
