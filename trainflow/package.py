"""The consumer's entry point, as every package's model card shows it:

    import trainflow.package
    model = trainflow.package.load("path/to/package")  # verifies every file first
    model.predict(["a text"])

Imports no torch. The package format, the loader and publishing live in `trainflow.release`.
"""

from __future__ import annotations

from trainflow.release.loader import LabelSetPrediction, PackageModel, Prediction, ValuePrediction, load
from trainflow.release.package import verify_package

__all__ = ["LabelSetPrediction", "PackageModel", "Prediction", "ValuePrediction", "load", "verify_package"]
