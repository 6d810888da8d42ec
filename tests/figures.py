"""Figures measured by the reliability tests, printed as one table at the end of the run.

A test calls ``record_figure("D2", "respawn latency p50", "34 ms", anchor="gunicorn 27",
anchor_value="34 ms")``; the terminal summary lists every figure of the run in order, and
the same rows are written as JSON to ``.pytest_cache/muleteer-figures.json`` (or to the
path in ``MULETEER_FIGURES``) for the closing notes.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Figure:
    suite: str
    what: str
    value: str
    anchor: str = ""
    anchor_value: str = ""
    test: str = ""


FIGURES: list[Figure] = []


def record(
    suite: str, what: str, value: Any, anchor: str = "", anchor_value: Any = "", test: str = ""
) -> None:
    FIGURES.append(Figure(suite, what, str(value), anchor, str(anchor_value), test))


def table() -> str:
    rows = ["| suite | figure | muleteer | anchor | anchor figure |", "|---|---|---|---|---|"]
    for fig in FIGURES:
        rows.append(
            f"| {fig.suite} | {fig.what} | {fig.value} | {fig.anchor} | {fig.anchor_value} |"
        )
    return "\n".join(rows)


def dump(rootdir: Path) -> Path:
    target = Path(
        os.environ.get("MULETEER_FIGURES") or rootdir / ".pytest_cache" / "muleteer-figures.json"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps([asdict(f) for f in FIGURES], indent=1))
    return target
