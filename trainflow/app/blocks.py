"""The blocks a card is made of (plain data, no dependencies): trainflow/app/reports.py builds them,
flows/trainflow_cards.py turns each into a Metaflow card component."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Markdown:
    text: str


@dataclass(frozen=True)
class Chart:
    spec: dict[str, Any]


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Progress:
    label: str
    value: int
    max: int


Block = Markdown | Chart | Table | Progress
