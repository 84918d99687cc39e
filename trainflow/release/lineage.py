"""Lineage of a package: dataset -> trial checkpoints and models [-> refit] [-> a distilled
student's checkpoint and model] -> best model -> FP32 ONNX -> INT8 ONNX, each node with its id, the file it names, that file's SHA-256 and its parents' ids
and SHA-256s.

`build_lineage` runs at publish time (the result goes into metadata.json under `lineage.nodes`
and into the Parquet store, kind `lineage`, one row per node); `check_lineage` re-hashes every
recorded file that still exists, so a changed dataset, checkpoint, model or ONNX file shows up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from trainflow.core.errors import LineageError, MetadataError
from trainflow.core.io import sha256_file
from trainflow.core.layout import CHECKPOINT_DIR, METADATA, ONNX_FP32, ONNX_INT8, WEIGHTS, trial_folder_of
from trainflow.records.store import LineageRow, as_json, has_records, lineage_rows
from trainflow.release.metadata import LineageNode, ParentRef, read_metadata
from trainflow.training.resume import latest_checkpoint

if TYPE_CHECKING:  # kept out of the import path so the CLI does not load torch and optuna
    from trainflow.data.dataset import Snapshot
    from trainflow.search.distill import ModelSummary
    from trainflow.search.study import TrialRecord

Node = LineageNode  # the typed node of metadata.json `lineage.nodes`


@dataclass(frozen=True)
class NodeCheck:
    node: Node
    location: str
    status: Literal["ok", "changed", "missing"]


def _last_checkpoint_weights(model_dir: Path) -> Path | None:
    """The weights of a trial's newest intact checkpoint: `trials/trial-NNNN/best/step-N` is the
    model, `trials/trial-NNNN/checkpoint/step-M` the resumable state (trainflow/core/layout.py)."""
    found = latest_checkpoint([trial_folder_of(model_dir) / CHECKPOINT_DIR])
    return None if found is None else found.folder / WEIGHTS


def _node(
    id: str, kind: str, path: str, sha256: str, parents: list[ParentRef] | None = None, *,
    package_file: str | None = None, trial: int | None = None,
) -> Node:  # fmt: skip
    return Node(id=id, kind=kind, path=path, sha256=sha256, parents=parents or [], package_file=package_file,
                trial=trial)  # fmt: skip


def _model_nodes(prefix: str, kind: str, model_dir: Path, parents: list[ParentRef], trial: int | None) -> list[Node]:
    """A trained model's last resumable checkpoint (if one was written) and its weights, as nodes
    `<prefix>/checkpoint` (`<kind>_checkpoint`) and `<prefix>/model` (`<kind>_model`); the model last.

    Raises:
        LineageError: the model's weights are missing."""
    weights = Path(model_dir) / WEIGHTS
    if not weights.is_file():
        raise LineageError(f"{prefix}: {weights} is missing; cannot record its lineage")
    nodes, model_parents = [], list(parents)
    checkpoint = _last_checkpoint_weights(Path(model_dir))
    if checkpoint is not None:
        ckpt = _node(f"{prefix}/checkpoint", f"{kind}_checkpoint", str(checkpoint.resolve()), sha256_file(checkpoint),
                     list(parents), trial=trial)  # fmt: skip
        nodes.append(ckpt)
        model_parents.append(ckpt.ref())
    return [*nodes, _node(f"{prefix}/model", f"{kind}_model", str(weights.resolve()), sha256_file(weights),
                          model_parents, trial=trial)]  # fmt: skip


def build_lineage(
    *,
    snapshot: Snapshot,
    records: list[TrialRecord],
    best: TrialRecord,
    fp32_onnx: Path,
    int8_onnx: Path,
    refit_model_dir: Path | None = None,
    student: ModelSummary | None = None,
) -> list[Node]:
    """Nodes for the dataset, every completed trial (its last resumable checkpoint, if one was
    written, and its best weights), the refit of the best trial's configuration (`hpo.refit`: its
    parents are that trial's model and the dataset), a distilled `student` that ships (its last
    checkpoint and its model, whose parents are the teacher and the dataset), the chosen model and
    both ONNX files.

    Raises:
        LineageError: a completed trial's or an ONNX file is missing.
    """
    dataset = _node(f"dataset:{snapshot.version}", "dataset", str(Path(snapshot.source).resolve()), snapshot.sha256)
    # The split files every later step read (each checked against this SHA-256 on every load).
    splits = [
        _node(f"dataset:{snapshot.version}/{name}", "dataset_split",
             str((Path(snapshot.directory) / snapshot.files[name]).resolve()), digest, [dataset.ref()])
        for name, digest in sorted(snapshot.split_sha256.items())
    ]  # fmt: skip
    nodes = [dataset, *splits]
    trial_models: dict[int, Node] = {}
    for r in sorted(records, key=lambda r: r.number):
        if r.state != "COMPLETE" or not r.model_dir:
            continue
        *made, model = _model_nodes(f"trial-{r.number}", "trial", Path(r.model_dir), [dataset.ref()], r.number)
        nodes += [*made, model]
        trial_models[r.number] = model
    if best.number not in trial_models:
        raise LineageError(f"best trial {best.number} is not among the completed trials {sorted(trial_models)}")
    chosen = trial_models[best.number]
    if refit_model_dir is not None:
        weights = Path(refit_model_dir) / WEIGHTS
        if not weights.is_file():
            raise LineageError(f"refit: {weights} is missing; cannot record its lineage")
        chosen = _node("refit-model", "refit_model", str(weights.resolve()), sha256_file(weights),
                       [chosen.ref(), dataset.ref()], trial=best.number)  # fmt: skip
        nodes.append(chosen)
    if student is not None:  # teacher -> student checkpoint -> student model
        made = _model_nodes(f"student-{student.trial}", "student", Path(student.model_dir),
                            [chosen.ref(), dataset.ref()], student.trial)  # fmt: skip
        nodes += made
        chosen = made[-1]
    best_node = _node("best-model", "best_model", chosen.path, chosen.sha256, [chosen.ref()],
                      trial=student.trial if student is not None else best.number)  # fmt: skip
    for path in (fp32_onnx, int8_onnx):
        if not Path(path).is_file():
            raise LineageError(f"{path} is missing; cannot record its lineage")
    fp32 = _node("onnx-fp32", "onnx_fp32", str(Path(fp32_onnx).resolve()), sha256_file(Path(fp32_onnx)),
                [best_node.ref()], package_file=ONNX_FP32)  # fmt: skip
    # INT8 is calibrated on the dataset's calibration split: both are its parents.
    int8 = _node("onnx-int8", "onnx_int8", str(Path(int8_onnx).resolve()), sha256_file(Path(int8_onnx)),
                [fp32.ref(), dataset.ref()], package_file=ONNX_INT8)  # fmt: skip
    return [*nodes, best_node, fp32, int8]


def to_rows(*, model_name: str, version: str, nodes: list[Node]) -> list[LineageRow]:
    """Parquet rows (kind `lineage`), one per node; parents as a JSON list."""
    return [
        LineageRow(model_name=model_name, version=version, node_id=n.id, kind=n.kind, path=n.path, sha256=n.sha256,
                   package_file=n.package_file, trial=n.trial,
                   parents=as_json([p.model_dump() for p in n.parents]))
        for n in nodes
    ]  # fmt: skip


def load_lineage(*, artifact_root: Path, model_name: str, version: str) -> tuple[list[Node], Path | None]:
    """The nodes of a version from its metadata.json, or from the Parquet store when the package
    folder is gone; and the package folder if it exists.

    Raises:
        LineageError: neither holds a lineage for this version.
    """
    package = artifact_root / model_name / version
    meta_file = package / METADATA
    if meta_file.is_file():
        try:
            raw = read_metadata(package).lineage.nodes
        except MetadataError as err:
            raise LineageError(
                f"{err} (a package published before lineage was recorded has no lineage.nodes)"
            ) from None
        return list(raw), package
    if has_records(artifact_root, "lineage"):
        rows = lineage_rows(artifact_root, model_name, version)
        if rows:
            nodes = [
                Node(
                    id=r.node_id,
                    kind=r.kind,
                    path=r.path,
                    sha256=r.sha256,
                    parents=json.loads(r.parents),
                    package_file=r.package_file,
                    trial=r.trial,
                )
                for r in rows
            ]
            return nodes, None
    raise LineageError(f"no lineage for {model_name} {version}: no {meta_file} and no Parquet lineage records")


def check_lineage(*, nodes: list[Node], package: Path | None) -> list[NodeCheck]:
    """Re-hash each node's file where it was produced and, for ONNX files, its copy in the
    package. A file that no longer exists is reported `missing` (not an error: retention deletes
    checkpoints); a file whose SHA-256 differs is `changed`."""
    checks = []
    for n in nodes:
        locations = [Path(n.path)]
        if n.package_file and package is not None:
            locations.insert(0, package / n.package_file)
        for loc in locations:
            if not loc.is_file():
                checks.append(NodeCheck(n, str(loc), "missing"))
            else:
                checks.append(NodeCheck(n, str(loc), "ok" if sha256_file(loc) == n.sha256 else "changed"))
    return checks
