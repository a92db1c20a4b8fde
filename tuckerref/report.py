"""Plain-text, Markdown, JSON and CSV output of result tables, written atomically (``tuckerref.io.atomic_path``)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from .io import atomic_path


def compact(n: float) -> str:
    """A count the way the paper's Table 2 prints FLOPs: 15,609.2M, 21.5K, 423."""
    n = float(n)
    if abs(n) >= 1e6:
        return f"{n / 1e6:,.1f}M"
    if abs(n) >= 1e3:
        return f"{n / 1e3:,.1f}K"
    return f"{n:,.0f}"


def ratio(before: float, after: float) -> str:
    """Improvement factor ``before / after`` as "x5.96" ("-" when undefined)."""
    return f"x{before / after:.2f}" if after else "-"


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def markdown_table(headers: list, rows: list) -> str:
    """A GitHub-flavoured Markdown table; cells are converted with ``str``."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    lines = [fmt(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text if text.endswith("\n") else text + "\n")
    return Path(path)


def write_json(path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=1))


def write_csv(path, headers: list, rows: list) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(headers)
            writer.writerows(rows)
    return Path(path)
