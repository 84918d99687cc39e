"""One exception class per failure mode. Gates raise; nothing downgrades them to warnings."""

from __future__ import annotations


class TrainflowError(Exception):
    """Base class of every error trainflow raises on purpose."""


class ConfigError(TrainflowError):
    """The run configuration is invalid. Lists every problem at once."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in config {source}:\n{lines}")


class DatasetError(TrainflowError):
    """The dataset file is unreadable or violates the declared schema."""

    def __init__(self, path: object, problem: str, row: int | None = None) -> None:
        self.path = str(path)
        self.row = row
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ModelLoadError(TrainflowError):
    """The base model cannot be found or loaded."""


class TrainingInterrupted(TrainflowError):
    """Training stopped on request (SIGTERM, SIGUSR1 before preemption) after saving a checkpoint.

    The task exits non-zero so that @retry (or a requeue) resumes from that checkpoint."""

    def __init__(self, message: str, step: int) -> None:
        self.step = step
        super().__init__(message)


class ParityError(TrainflowError):
    """The ONNX model's outputs differ from PyTorch's beyond the configured tolerance."""


class QuantizationError(TrainflowError):
    """No INT8 model could be built: every recipe failed (each one's cause is listed)."""


class QuantizationAccuracyError(TrainflowError):
    """The INT8 model lost more accuracy than the configured gate allows."""


class PackageVerificationError(TrainflowError):
    """A deployment package's files do not match its SHA256SUMS manifest."""


class JournalCorruptError(TrainflowError):
    """The Optuna journal has a corrupt record that is not its last: the study cannot be read."""


class MetadataError(TrainflowError):
    """A package's metadata.json is missing, unreadable, of an unknown schema version, or does not
    match its schema."""


class RecordsError(TrainflowError):
    """The Parquet records cannot be read (unknown schema version, unreadable file)."""


class PublishError(TrainflowError):
    """A deployment package cannot be written (e.g. the version already exists)."""


class CostError(TrainflowError):
    """Task timings cannot be priced (a time without a zone, a task ending before it starts)."""


class RunMetadataError(TrainflowError):
    """Metaflow's client cannot give the timings of a run (unknown run, task without times)."""


class LineageError(TrainflowError):
    """A package's lineage cannot be read, or a recorded file's SHA-256 no longer matches."""


class RegistryError(TrainflowError):
    """A registry change is refused: unknown version, failed verification, metric regression,
    nothing to roll back to, or the registry lock could not be taken."""


class RetentionError(TrainflowError):
    """Retention cannot run (e.g. the registry lock could not be taken)."""


class DiskSpaceError(TrainflowError):
    """Too little free disk for a checkpoint or a package; raised before anything is written."""


class TrainingResourceError(TrainflowError):
    """Training cannot fit on the device: out of memory even at micro-batch size 1."""


class DeviceUnavailableError(TrainflowError):
    """train.device is 'cuda' but no CUDA device is visible."""


class SearchError(TrainflowError):
    """The search cannot go on or give a result (e.g. no trial completed)."""


class WorkerProcessError(TrainflowError):
    """A worker process of a packed GPU slot failed; its trial stays RUNNING for a retry."""


class OutOfMemoryError(TrainflowError):
    """The machine ran out of memory in a step (outside training, which backs off on its own)."""
