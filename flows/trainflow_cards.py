"""Metaflow card glue: turn the plain blocks (trainflow/app/blocks.py) that trainflow/app/reports.py
builds into card components.

This is the only place that knows Metaflow's card API; what a card shows is decided (and
tested) in trainflow/app/reports.py.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable

from metaflow import current
from metaflow.cards import Markdown, ProgressBar, Table, VegaChart

from trainflow.app import blocks


def component(block: blocks.Block):
    if isinstance(block, blocks.Markdown):
        return Markdown(block.text)
    if isinstance(block, blocks.Chart):
        return VegaChart(block.spec)
    if isinstance(block, blocks.Table):
        return Table(block.rows, headers=block.headers)
    if isinstance(block, blocks.Progress):
        return ProgressBar(max=block.max, value=block.value, label=block.label)
    raise TypeError(f"unknown report block {type(block).__name__}")


CARD_ID = "report"  # `card get RUN/STEP/TASK --id report` (train also holds the checkpoint plugin's card)


def show(build: Callable[[], Iterable[blocks.Block]]) -> None:
    """Append the blocks `build()` returns to the step's card (the step must have @card).

    A card is a view, not a gate: if building it fails, the card says so (with the traceback)
    and the step goes on, so a reporting bug never costs a finished training run."""
    try:
        shown = list(build())
    except Exception as err:  # noqa: BLE001 - any failure of the view is reported on the card
        logging.getLogger(__name__).warning("card for %s not built: %s", current.pathspec, err)
        shown = [blocks.Markdown(f"**This card could not be built:**\n\n```\n{traceback.format_exc()}\n```")]
    for block in shown:
        current.card[CARD_ID].append(component(block))
