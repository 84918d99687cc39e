"""One line per error on the real flow's stderr; failed runs in `trainflow runs` (issue 12)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trainflow_errors
import trainflow_logs

from tests.tiny import ROOT, tiny_config, write_config
from trainflow.app.cli import main as cli
from trainflow.core.errors import DatasetError

pytestmark = [pytest.mark.slow, pytest.mark.integration]
BAD_CSV = "text,label\ngood movie,fresh\n,rotten\nnice, fresh \nbad film,meh\nawful,rotten\n" + "".join(
    f"film {i},{['fresh', 'rotten'][i % 2]}\n" for i in range(20)
)


def _run(tmp: Path, cfg_path: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "flows" / "train_flow.py"), "--config", "config", str(cfg_path), "run"],
        cwd=tmp, capture_output=True, text=True, timeout=600,
        env={**os.environ, "METAFLOW_USER": "errors", "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp), **env},
    )  # fmt: skip


def test_bad_data_ends_the_run_with_one_line_and_a_failed_record(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    (tmp_path / "mine.csv").write_text(BAD_CSV)
    cfg = tiny_config(tmp_path, tiny_model_dir)
    cfg["data"] = {"path": str(tmp_path / "mine.csv")}
    cfg_path = write_config(tmp_path / "cfg.yaml", cfg)
    done = _run(tmp_path, cfg_path)
    assert done.returncode == 1
    err = done.stderr.strip().splitlines()
    assert err[-1].startswith(f"error: {tmp_path / 'mine.csv'}: 2 problem(s) in 25 rows; nothing was trained: ")
    assert "empty text in column 'text' in 1 row(s): rows 2" in err[-1]
    assert "a label that is not one of ['rotten', 'fresh'] in 1 row(s): rows 4 ('meh')" in err[-1]
    assert [line for line in err if line.startswith("error:")] == [err[-1]], "the message once, last"
    assert len(err) <= 10, "Metaflow's few header lines, then the error: no traceback\n" + done.stderr
    assert "Traceback" not in done.stdout + done.stderr and "Internal error" not in done.stdout + done.stderr
    # The run is listed, failed, with the step and the error line (start wrote it before anything else).
    assert cli(["runs", "--artifact-root", str(tmp_path / "artifacts")]) == 0
    out = capsys.readouterr().out
    assert "failed" in out and "start" in out and "nothing was trained" in out
    # TRAINFLOW_DEBUG=1: the tracebacks as before.
    debug = _run(tmp_path, cfg_path, TRAINFLOW_DEBUG="1")
    assert debug.returncode == 1 and "Traceback" in debug.stdout + debug.stderr


def test_a_config_error_names_the_yaml_file_one_problem_per_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_model_dir)
    cfg["data"]["tst_fraction"] = 0.3
    cfg["train"]["max_steps"] = -5
    cfg_path = write_config(tmp_path / "mine.yaml", cfg)
    done = _run(tmp_path, cfg_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: 2 problem(s) in config {cfg_path}:",
        "  - data.tst_fraction: unknown key (value 0.3); remove it or fix its spelling",
        "  - train.max_steps: Input should be greater than or equal to 1 (got -5)",
    ]


class _Flow:
    cfg = None


def test_other_exceptions_keep_their_traceback_and_are_recorded() -> None:
    recorded = []
    wrap = trainflow_errors.one_line_errors(lambda flow, step, err: recorded.append((step, type(err).__name__)))

    @wrap
    def start(self):
        raise KeyError("a bug")

    @wrap
    def join(self, inputs):
        raise DatasetError("d.csv", "bad rows")

    with pytest.raises(KeyError):
        start(_Flow())
    with pytest.raises(SystemExit) as exited:
        join(_Flow(), [])
    assert exited.value.code == trainflow_errors.EXIT_STATUS
    assert recorded == [("start", "KeyError"), ("join", "DatasetError")]


def test_json_log_lines(monkeypatch) -> None:
    monkeypatch.setenv(trainflow_logs.FORMAT_ENV, "json")
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in trainflow_logs.LOGGERS})
    trainflow_logs.configure(stream)
    try:
        logging.getLogger("trainflow.convert.quantize").info(
            "recipe %d of %d", 1, 5, extra={"fields": {"recipe": "u8s8"}}
        )
        logging.getLogger("trainflow.data.dataset").debug("not shown")
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert (
        record["message"] == "recipe 1 of 5"
        and record["level"] == "INFO"
        and record["logger"] == "trainflow.convert.quantize"
    )
    assert record["fields"] == {"recipe": "u8s8"} and set(record) >= {"time", "step", "run_id"}
