"""One benchmark's outcome and how it is written: JSON for machines, markdown for people."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

COMPARE = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}


@dataclass
class Result:
    name: str  # file stem, e.g. "at_step"
    title: str
    ratio: float | None  # the headline ratio; None for informational benchmarks
    target: float | None = None
    direction: str = ">="  # how ratio must compare with target
    meaning: str = ""  # what the ratio is, numerator over denominator
    details: dict[str, Any] = field(default_factory=dict)
    table: list[dict[str, Any]] = field(default_factory=list)  # rows for the markdown table
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the benchmark itself

    @property
    def met(self) -> bool | None:
        if self.ratio is None or self.target is None or math.isnan(self.ratio):
            return None
        return COMPARE[self.direction](self.ratio, self.target)

    def headline(self) -> str:
        if self.ratio is None:
            return f"{self.title}: informational ({self.seconds:.0f} s)"
        verdict = {True: "MET", False: "NOT MET", None: "no target"}[self.met]
        target = f" target {self.direction} {self.target:g}" if self.target is not None else ""
        return f"{self.title}: {self.ratio:.3f}{target} -> {verdict} ({self.seconds:.0f} s)"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}

    def to_markdown(self) -> str:
        lines = [f"## {self.title}", "", f"**{self.headline()}**", ""]
        if self.meaning:
            lines += [self.meaning, ""]
        if self.table:
            lines += markdown_table(self.table) + [""]
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        out.append("| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |")
    return out


def write(result: Result, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{result.name}.json").write_text(
        json.dumps(result.to_json(), indent=2, default=str) + "\n")
    (folder / f"{result.name}.md").write_text(result.to_markdown())
