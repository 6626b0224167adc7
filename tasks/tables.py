"""Plain-text tables whose columns never run together: each column as wide as its widest cell."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def format_table(header: Sequence[str], rows: Iterable[Sequence[object]], indent: int = 0,
                 right: Iterable[int] = (), gap: int = 2) -> str:
    """``header`` and ``rows`` as aligned text; the columns in ``right`` are right-aligned (numbers)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(len(header))]
    aligned = set(right)
    lines = []
    for row in cells:
        parts = [cell.rjust(w) if i in aligned else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append(" " * indent + (" " * gap).join(parts).rstrip())
    return "\n".join(lines)
