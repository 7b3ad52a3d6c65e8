"""Console tables that can also be written as CSV (raw values) and Markdown."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["emit_table"]

console = Console()


def emit_table(
    title: str,
    header: list[str],
    cells: list[list[str]],
    records: list[dict[str, Any]],
    out: Path | None,
    stem: str,
) -> None:
    """Print a table and, with ``out``, write it as ``stem.csv`` (raw values) and ``stem.md``."""
    table = Table(*header, title=title)
    for row in cells:
        table.add_row(*row)
    console.print(table)
    if out is None or not records:
        return
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{stem}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    md = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in cells]
    (out / f"{stem}.md").write_text("\n".join(md) + "\n")
