"""The benchmarks' markdown reports: a table from formatted cells, and the report written next
to its CSV and shown on the terminal."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

RULE = {"l": "---", "r": "---:"}  # text left-aligned, numbers right-aligned


def table(headers: Sequence[str], align: str, rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table's lines: ``align`` has a letter a column ("l" or "r"); a row is its
    cells, already formatted."""
    return [
        "| " + " | ".join(headers) + " |",
        "|" + "".join(RULE[a] + "|" for a in align),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]


def write_report(csv: Path, lines: list[str]) -> None:
    """``lines`` as the .md beside ``csv``, and printed."""
    csv.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
