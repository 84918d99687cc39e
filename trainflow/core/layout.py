"""The names of every folder and file trainflow writes, in one place.

Three roots, each set in the config's `publish:` section:

  <artifact_root>/                          packages, the registry and the Parquet records
    <model>/<version>/                      one deployment package (PACKAGE_FILES + the manifest)
    <model>/.tmp-<version>-<id>/            a package being written (hidden until it is complete)
    _registry/registry.json, registry.lock  the registry's state and its lock
    _records/<kind>/<key>.parquet           runs, trials, packages, lineage, costs, registry events
  <run_root>/<model>/<run key>/             one run's working folder
    data/<split>.parquet, snapshot.json     the dataset snapshot
    optuna.journal (+ .heartbeats/)         the study (unless hpo.storage names another)
    trials/trial-NNNN/checkpoint/step-N/    a trial's resumable state (versioned, LATEST pointer)
    trials/trial-NNNN/best/step-N/          the trial's best model so far (versioned)
    onnx/<attempt>/model.onnx               the export, one folder per attempt
    onnx/<attempt>/int8-search/             the INT8 candidates while they are searched
    refit/checkpoint/, refit/best/          the refit of the best configuration (hpo.refit)
  <run_root>/.deploy-cost/<key>.json        INT8 latency and size per architecture (hpo.constraints)
Every module that reads or writes one of these names takes it from here, so renaming a folder
cannot leave a reader (retention, lineage, the loader) looking in the old place.
"""

from __future__ import annotations

from pathlib import Path

# --- a deployment package -------------------------------------------------------------------
ONNX_FP32 = "model.onnx"
ONNX_INT8 = "model_int8.onnx"
HF_CONFIG = "config.json"
HEAD = "head.json"  # the head's task, labels and ordinal cutpoints beside a saved model
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS = "special_tokens_map.json"
VOCAB = "vocab.txt"
METADATA = "metadata.json"
MODEL_CARD = "README.md"
MANIFEST = "SHA256SUMS"
SIGNATURE = "model.sig"  # OpenSSF model signing signature over every other file (signed packages only)
# Files copied into a package when the sources have them (the tokenizer's files vary by family).
PACKAGE_FILES = (ONNX_FP32, ONNX_INT8, HF_CONFIG, HEAD, TOKENIZER, TOKENIZER_CONFIG, SPECIAL_TOKENS, VOCAB)
# Files every package must hold.
REQUIRED_FILES = (ONNX_FP32, ONNX_INT8, HF_CONFIG, HEAD, TOKENIZER, METADATA)
PACKAGE_TEMP_PREFIX = ".tmp-"

# --- the artifact root ------------------------------------------------------------------------
REGISTRY_DIR = "_registry"
REGISTRY_STATE = "registry.json"
REGISTRY_LOCK = "registry.lock"
RECORDS_DIR = "_records"

# --- a run's working folder -------------------------------------------------------------------
RUN_HEARTBEAT = ".heartbeat"  # touched by every running task of the run (trainflow/records/runs.py)
DATA_DIR = "data"
SNAPSHOT = "snapshot.json"
JOURNAL = "optuna.journal"
TRIALS_DIR = "trials"
TRIAL_PREFIX = "trial-"
CHECKPOINT_DIR = "checkpoint"  # a trial's resumable state: a VersionedDir of step folders
BEST_DIR = "best"  # a trial's best validation model so far: a VersionedDir of step folders
REFIT_DIR = "refit"  # hpo.refit: the best configuration trained again (checkpoint/ and best/ as a trial's)
DISTILL_DIR = "distill"  # distill: the students' work folder (students/, the teacher outputs, trials/ as the search's)
STUDENTS_DIR = "students"  # under DISTILL_DIR: each student cut from the teacher, before training
TEACHER_OUTPUTS = "teacher-outputs.safetensors"  # under DISTILL_DIR: the teacher's logits on the train split
TEACHER_OUTPUTS_META = "teacher-outputs.json"  # what they were computed from, and their SHA-256
STUDENT_INFO = "student.json"  # in a cut student's folder: which teacher layers it kept
DEPLOY_COST_DIR = ".deploy-cost"  # under the run root: shared by every run and model
ONNX_DIR = "onnx"
INT8_SEARCH_DIR = "int8-search"

# --- a checkpoint or saved-model folder ------------------------------------------------------
LATEST = "LATEST"  # the pointer of a VersionedDir
WEIGHTS = "model.safetensors"
TRAINER_STATE = "trainer_state.pt"
CHECKPOINT_META = "meta.json"


def step_version(step: int) -> str:
    """The version folder of a checkpoint (or best model) taken at `step`."""
    return f"step-{step:08d}"


def package_dir(artifact_root: Path, model_name: str, version: str) -> Path:
    return Path(artifact_root) / model_name / version


def registry_dir(artifact_root: Path) -> Path:
    return Path(artifact_root) / REGISTRY_DIR


def records_dir(artifact_root: Path, kind: str) -> Path:
    return Path(artifact_root) / RECORDS_DIR / kind


def run_dir(run_root: Path, model_name: str, run_key: str) -> Path:
    return Path(run_root) / model_name / run_key


def deploy_cost_dir(run_root: Path | str) -> Path:
    return Path(run_root) / DEPLOY_COST_DIR


def distill_dir(run_folder: Path) -> Path:
    return Path(run_folder) / DISTILL_DIR


def trial_dir(run_folder: Path, number: int) -> Path:
    return Path(run_folder) / TRIALS_DIR / f"{TRIAL_PREFIX}{number:04d}"


def trial_checkpoints(run_root: Path) -> list[Path]:
    """Every trial's checkpoint folder under `run_root` (all models, all runs; the students' too)."""
    trials = f"{TRIALS_DIR}/{TRIAL_PREFIX}*/{CHECKPOINT_DIR}"
    return sorted([*Path(run_root).glob(f"*/*/{trials}"), *Path(run_root).glob(f"*/*/{DISTILL_DIR}/{trials}")])


def trial_folder_of(model_dir: Path) -> Path:
    """The trial folder that holds a best-model version `<trial>/best/step-N`."""
    return Path(model_dir).parent.parent
