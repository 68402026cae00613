"""Plain-text tables for terminals: one formatter for the CLI and the library's reports."""

from __future__ import annotations

from typing import Any


def text_table(rows: list[list[Any]], header: list[str]) -> str:
    """A short plain-text table for humans: columns padded, a rule under the header."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
