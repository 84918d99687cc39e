"""One line per error: how a TrainflowError ends a Metaflow run (Metaflow glue).

Metaflow prints any exception of a step as a 40-60 line "Internal error" traceback, and an error
in the config parser the same way. Here:

- `one_line_errors` wraps each step: a TrainflowError (bad data, a failed gate, a full disk...)
  is recorded in the run's `runs` record (status failed, the step, the message), written to the
  file named by $TRAINFLOW_ERROR_FILE, printed as one `error: ...` line, and the task exits with
  status 2, no traceback. Any other exception is recorded too and keeps its traceback.
  `TrainingInterrupted` (a checkpointed stop that @retry continues) passes through untouched.
- `main` runs the flow; when the run fails and a step left its message in the error file, that
  message is printed on stderr as the run's last line and the process exits 1.
- `config_parser` names the YAML file in a ConfigError and ends the run with the problems, one
  per line, instead of a traceback.

TRAINFLOW_DEBUG=1 shows the full Python and Metaflow tracebacks instead.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainflow.core.errors import ConfigError, TrainflowError, TrainingInterrupted

ERROR_FILE_ENV = "TRAINFLOW_ERROR_FILE"
DEBUG_ENV = "TRAINFLOW_DEBUG"
EXIT_STATUS = 2


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(err: BaseException) -> str:
    """The error's message as one line: its lines joined with '; '."""
    lines = [line.strip().removeprefix("- ").strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(err).__name__
    return f"{lines[0].rstrip(':')}: " + "; ".join(lines[1:])


def _leave_message(message: str) -> None:
    path = os.environ.get(ERROR_FILE_ENV)
    if path:
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(message + "\n")
        except OSError:
            pass  # the message is printed below anyway


def one_line_errors(record: Callable[[Any, str, BaseException], None]) -> Callable[[Callable], Callable]:
    """Step decorator (applied under @step). `record(flow, step_name, error)` stores the failure
    in the run's records; it must not raise."""

    def wrap(step_fn: Callable) -> Callable:
        @functools.wraps(step_fn)
        def run(self: Any, *args: Any) -> Any:
            try:
                return step_fn(self, *args)
            except TrainingInterrupted:
                raise
            except TrainflowError as err:
                record(self, step_fn.__name__, err)
                if debug():
                    raise
                message = one_line(err)
                _leave_message(message)
                print(f"error: {message}", file=sys.stderr, flush=True)
                sys.exit(EXIT_STATUS)
            except Exception as err:
                record(self, step_fn.__name__, err)
                raise

        return run

    return wrap


def config_source(argv: list[str], default: str) -> str:
    """The YAML file `--config config FILE` names on the command line (the default otherwise)."""
    for i, arg in enumerate(argv[:-2]):
        if arg == "--config" and argv[i + 1] == "config":
            return argv[i + 2]
    return default


def config_parser(parse: Callable[[str, str], dict], default: str) -> Callable[[str], dict]:
    """A Metaflow `Config(parser=...)` that names the YAML file in its errors and ends the run with
    them, one problem per line, instead of an "Internal error" traceback."""

    def parser(text: str) -> dict:
        source = config_source(sys.argv, default)
        try:
            return parse(text, source)
        except ConfigError as err:
            if debug():
                raise
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(EXIT_STATUS)

    return parser


def main(flow_class: type) -> None:
    """Run the flow; on failure, end with the failed step's one-line message on stderr."""
    if debug() or ERROR_FILE_ENV in os.environ:
        flow_class()
        return
    fd, path = tempfile.mkstemp(prefix="trainflow-error-", suffix=".txt")
    os.close(fd)
    os.environ[ERROR_FILE_ENV] = path
    try:
        flow_class()
    except SystemExit as done:
        messages = Path(path).read_text(encoding="utf-8").splitlines() if Path(path).is_file() else []
        if done.code not in (0, None) and messages:
            print(f"error: {messages[-1]}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        raise
    finally:
        Path(path).unlink(missing_ok=True)
