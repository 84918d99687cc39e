"""The one module that names what trainflow writes: every reader finds what every writer wrote."""

from __future__ import annotations

from pathlib import Path

from trainflow.core import layout


def test_retention_finds_the_checkpoint_folder_a_trial_writes(tmp_path: Path) -> None:
    run = layout.run_dir(tmp_path, "m", "42")
    written = layout.trial_dir(run, 7) / layout.CHECKPOINT_DIR / layout.step_version(3)
    written.mkdir(parents=True)
    (layout.trial_dir(run, 7) / layout.BEST_DIR / layout.step_version(3)).mkdir(parents=True)
    assert layout.trial_checkpoints(tmp_path) == [written.parent]
    student = layout.trial_dir(layout.distill_dir(run), 0) / layout.CHECKPOINT_DIR / layout.step_version(3)
    student.mkdir(parents=True)
    assert layout.trial_checkpoints(tmp_path) == sorted([written.parent, student.parent])


def test_a_best_model_version_leads_back_to_its_trial_folder(tmp_path: Path) -> None:
    trial = layout.trial_dir(tmp_path, 3)
    assert layout.trial_folder_of(trial / layout.BEST_DIR / layout.step_version(9)) == trial


def test_the_package_names_are_distinct_plain_file_names() -> None:
    names = [*layout.PACKAGE_FILES, layout.METADATA, layout.MODEL_CARD, layout.MANIFEST]
    assert len(set(names)) == len(names) and all("/" not in n for n in names)
    assert set(layout.REQUIRED_FILES) <= {*layout.PACKAGE_FILES, layout.METADATA}
