"""Plain-text tables and sizes for the terminal (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Column = tuple[str, str]  # (key in the row, heading)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple | frozenset | set):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """Left-aligned columns under their headings, two spaces apart."""
    texts = [[cell(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max([len(heading), *(len(t[i]) for t in texts)])
              for i, (_, heading) in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    return "\n".join([line([h for _, h in columns]), *(line(t) for t in texts)])


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """`name: value` lines, names aligned."""
    width = max((len(name) for name, _ in pairs), default=0)
    return "\n".join(f"{name + ':':{width + 1}} {cell(value)}" for name, value in pairs)


def size(count: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    step = 0
    while abs(count) >= 1024 and step < len(units) - 1:
        count, step = count / 1024, step + 1
    return f"{count:.0f} B" if step == 0 else f"{count:.1f} {units[step]}"
