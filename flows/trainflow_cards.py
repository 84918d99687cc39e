"""Metaflow card glue: turn the plain blocks of stages/reports.py into card components.

This is the only place that knows Metaflow's card API; what a card shows is decided (and
tested) in stages/reports.py.
"""

from __future__ import annotations

from collections.abc import Iterable

from metaflow import current
from metaflow.cards import Markdown, ProgressBar, Table, VegaChart

from stages import reports


def component(block: reports.Block):
    if isinstance(block, reports.Markdown):
        return Markdown(block.text)
    if isinstance(block, reports.Chart):
        return VegaChart(block.spec)
    if isinstance(block, reports.Table):
        return Table(block.rows, headers=block.headers)
    if isinstance(block, reports.Progress):
        return ProgressBar(max=block.max, value=block.value, label=block.label)
    raise TypeError(f"unknown report block {type(block).__name__}")


def show(blocks: Iterable[reports.Block]) -> None:
    """Append `blocks` to the step's card (the step must be decorated with @card)."""
    for block in blocks:
        current.card.append(component(block))
