"""Small Markdown results tables, as the example scripts and benchmarks write them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats are printed with 4 significant digits (3 decimals if smaller)."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


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
