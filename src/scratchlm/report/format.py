"""How a report writes its numbers (2.16 M, 20 min 29 s, 1,012) and its tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MISSING = "—"


def count(n: float | None) -> str:
    """2,270,976 -> '2.27 M'; small numbers as they are."""
    if n is None:
        return MISSING
    for size, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:,.0f}" if float(n).is_integer() else f"{n:.3g}"


def commas(n: int | None) -> str:
    return MISSING if n is None else f"{n:,}"


def number(x: float | None, digits: int = 4) -> str:
    return MISSING if x is None else f"{x:.{digits}g}"


def figure(x: float | None, *, sign: bool = False) -> str:
    """A figure of a comparison: integers with thousands separators, values from
    100 up without decimals, others to 4 significant digits."""
    if x is None:
        return MISSING
    plus = "+" if sign else ""
    if float(x).is_integer() or abs(x) >= 100:
        return f"{x:{plus},.0f}"
    return f"{x:{plus}.4g}"


def rate(x: float | None) -> str:
    return MISSING if x is None else f"{x:,.0f}"


def duration(seconds: float | None) -> str:
    """3725 -> '1 h 2 min'; 75 -> '1 min 15 s'; 4.2 -> '4.2 s'."""
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def at_step(value: float | None, step: int | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.4f} at step {step:,}" if step is not None else f"{value:.4f}"


def cell(text: Any) -> str:
    """Text that is safe inside a table cell: no pipes or line breaks."""
    return str(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> list[str]:
    """A Markdown table; ``align``: one letter per column, l or r (default: l, then r)."""
    align = align or "l" + "r" * (len(header) - 1)
    marks = {"l": ":--", "r": "--:"}
    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join(marks[a] for a in align) + "|")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return [*lines, ""]
