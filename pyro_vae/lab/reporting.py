"""Small Markdown results tables, as the example scripts and benchmarks write them."""

from __future__ import annotations

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
