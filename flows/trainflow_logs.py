"""Logging of the flow's processes: `name: message` lines by default; with
TRAINFLOW_LOG_FORMAT=json, one JSON object per line for cluster log collectors:
{"time", "level", "step", "run_id", "task_id", "logger", "message", "fields"} (`fields`: what a
caller passed as `extra={"fields": {...}}`, the exception text under "exc" when there is one).

Metaflow glue (it reads the task's step and run id from `metaflow.current`)."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

FORMAT_ENV = "TRAINFLOW_LOG_FORMAT"
LOGGERS = ("trainflow", "stages")


def _task() -> dict[str, Any]:
    try:
        from metaflow import current

        return {"step": current.step_name, "run_id": current.run_id, "task_id": current.task_id}
    except Exception:  # noqa: BLE001 - outside a task (the runtime process): no step
        return {"step": None, "run_id": None, "task_id": None}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = dict(getattr(record, "fields", {}) or {})
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return json.dumps(
            {
                "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                "level": record.levelname,
                **_task(),
                "logger": record.name,
                "message": record.getMessage(),
                "fields": fields,
            },
            default=str,
        )


def configure(stream: Any = None) -> None:
    """INFO for trainflow's loggers, WARNING for the rest; JSON lines if TRAINFLOW_LOG_FORMAT=json."""
    handler = logging.StreamHandler(stream or sys.stderr)
    fmt = os.environ.get(FORMAT_ENV, "text").strip().lower()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
