"""The package's `README.md`: a model card in the Hugging Face layout (YAML front matter, then
model, data, training, evaluation, intended use and limitations, how to load, checksums), written
from the package metadata and covered by the manifest like every other file."""

from __future__ import annotations

import json

from trainflow.core.layout import MODEL_CARD
from trainflow.release.metadata import PackageMetadata

CARD = MODEL_CARD


def _hub_base(meta: PackageMetadata) -> str:
    """The base model a hub reads from the card: a shipped student's is its teacher's."""
    d = meta.distillation
    return (
        str(d.get("teacher_base") or meta.base_model.name) if d and d["chosen"] == "student" else meta.base_model.name
    )


def _front_matter(meta: PackageMetadata) -> str:
    m = meta.metrics
    results = [
        {"type": name, "value": round(value, 4), "name": f"{split} {name}"}
        for split, values in (("test FP32 ONNX", m.test_fp32_onnx), ("test INT8 ONNX", m.test_int8_onnx))
        for name, value in sorted(values.items())
    ]
    pipeline = "text-classification"  # the hub's tag for sequence classifiers, multi-label and regression too
    header = {
        "library_name": "onnxruntime",
        "pipeline_tag": pipeline,
        "tags": [pipeline, "onnx", "int8", "trainflow", meta.task] + (["text-pair"] if meta.text_pair else []),
        "base_model": _hub_base(meta),
        "license": meta.config.get("data", {}).get("license") or "unknown",
        "model-index": [{"name": meta.model_name, "results": [{"task": {"type": "text-classification"},
                                                                "dataset": {"name": meta.dataset.version},
                                                                "metrics": results}]}],
    }  # fmt: skip
    # JSON is valid YAML: no YAML writer needed for the front matter.
    return "---\n" + "\n".join(f"{k}: {json.dumps(v)}" for k, v in header.items()) + "\n---\n"


def _metrics_table(meta: PackageMetadata) -> list[str]:
    m = meta.metrics
    names = sorted(set(m.test_fp32_onnx) | set(m.test_majority_baseline))
    trivial = {"regression": "mean baseline", "multilabel": "per-label majority"}.get(meta.task, "majority baseline")
    rows = [f"| metric | FP32 ONNX | INT8 ONNX | INT8 - FP32 | {trivial} |", "|---|---|---|---|---|"]
    for n in names:
        fp32, int8, base = m.test_fp32_onnx.get(n), m.test_int8_onnx.get(n), m.test_majority_baseline.get(n)
        delta = "" if fp32 is None or int8 is None else f"{int8 - fp32:+.4f}"
        rows.append(f"| {n} | {_f(fp32)} | {_f(int8)} | {delta} | {_f(base)} |")
    return rows


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _model_and_data(meta: PackageMetadata) -> list[str]:
    m = meta.metrics
    licence = meta.config.get("data", {}).get("license") or "unknown (not declared in the run config)"
    return [
        "## Model",
        "",
        f"- Output: {meta.onnx.output}"
        + (f"; cutpoints {meta.cutpoints}" if meta.cutpoints else "")
        + (f"; thresholds {dict(zip(meta.labels, meta.thresholds, strict=False))}" if meta.thresholds else "")
        + (f"; scale {meta.scale}" if meta.scale else ""),
        f"- Inputs: {', '.join(meta.onnx.inputs)}; "
        + (
            f"text pairs, encoded together and truncated longest-first to {meta.onnx.max_length} tokens"
            if meta.text_pair
            else f"texts truncated to {meta.onnx.max_length} tokens"
        ),
        f"- Files: `model.onnx` (FP32, {m.size_bytes.fp32 / 1e6:.1f} MB) and `model_int8.onnx` (INT8,"
        f" {m.size_bytes.int8 / 1e6:.1f} MB, {m.size_bytes.int8 / m.size_bytes.fp32:.0%} of FP32);"
        f" served by default: `{meta.primary_file}`",
        "",
        "## Data",
        "",
        f"- Dataset `{meta.dataset.version}` from `{meta.dataset.source}` (SHA-256 {meta.dataset.sha256[:16]}...),"
        f" {meta.dataset.rows} rows, splits {meta.dataset.splits}",
        f"- Labels: {meta.dataset.labels}",
        f"- Licence: {licence}",
        "",
    ]


def _search_lines(meta: PackageMetadata) -> list[str]:
    """What the search set, why it stopped, its deployment limits and the refit (newer packages)."""
    h, hp, lines = meta.hpo, meta.hyperparameters, []
    if h.searched:
        values = ", ".join(f"{p.split('.', 1)[1]} {hp.get(p.split('.', 1)[1])}" for p in h.searched)
        lines.append(f"- Searched ({h.sampler} sampler, {h.pruner} pruner): {values}")
    if h.stopped:
        lines.append(f"- The search stopped early: {h.stopped}")
    if h.constraints:
        c = h.constraints
        lines.append(f"- Chosen among trials within {c.get('max_latency_ms') or '-'} ms INT8 latency and"
                     f" {c.get('max_size_mb') or '-'} MB ({c.get('infeasible_trials', 0)} over the limits, not trained)")  # fmt: skip
    if h.refit:
        lines.append(f"- Refitted on train + validation ({h.refit['train_rows']} rows) for {h.refit['steps']} steps with"
                     f" trial {h.refit['trial']}'s configuration")  # fmt: skip
    return lines


def _training_and_evaluation(meta: PackageMetadata) -> list[str]:
    m, hp, q = meta.metrics, meta.hyperparameters, meta.quantization
    threads = meta.serving.get("best", {}).get("batch1", {}).get("threads")
    cpu = meta.serving.get("cpu", {})
    return [
        "## Training and search",
        "",
        f"- Optuna search: {meta.hpo.n_trials} trials ({meta.hpo.states}), validation {meta.hpo.metric}"
        f" ({meta.hpo.direction}); best trial {meta.hpo.best_trial}",
        f"- Best hyperparameters: learning rate {hp.get('learning_rate'):.3g}, weight decay"
        f" {hp.get('weight_decay'):.3g}, warmup {hp.get('warmup_ratio'):.3g}, {hp.get('max_steps')} steps of"
        f" batch {hp.get('batch_size')}",
        *_search_lines(meta),
        f"- INT8: recipe `{q.chosen_recipe}` ({q.recipe.get('mode', 'static')}), within"
        f" {q.max_accuracy_drop * 100:.1f} points of FP32 in test {q.gate_metric} by the gate; parity PyTorch vs ONNX"
        " max |diff|"
        f" {m.parity.max_abs_diff:.2g}",
        *_batch_line(q.batch_invariance),
        "",
        "## Evaluation (test split)",
        "",
        *_metrics_table(meta),
        "",
        f"Batch-1 latency where it was built ({cpu.get('model', 'unknown CPU')}): FP32 p50"
        f" {m.latency_batch1_fp32.p50_ms:.2f} ms, INT8 p50 {m.latency_batch1_int8.p50_ms:.2f} ms"
        + (f"; best batch-1 setting {threads} thread(s)" if threads else "")
        + ".",
        "",
    ]


def _batch_line(found: dict) -> list[str]:
    if not found or found.get("max_abs_diff") is None:
        return []
    return [
        f"- Batch invariance: a test text scored alone and in a batch of {found['batch_size']} differs by at most"
        f" {found['max_abs_diff']:.2g} in its logits; labels agree on {found['label_agreement'] * 100:.1f} % of"
        f" {found['n']} texts"
    ]


def _purpose(meta: PackageMetadata) -> str:
    what = "text pairs" if meta.text_pair else "short texts"
    if meta.task == "multilabel":
        return f"Tags {what} with any of {', '.join(meta.labels)} (none, one or several)"
    if meta.task == "regression":
        return f"Predicts a value ({meta.labels[0] if meta.labels else 'score'}) for {what}"
    return f"Classifies {what} into {', '.join(meta.labels)}"


def _example(meta: PackageMetadata) -> str:
    return '[("a text", "its pair text")]' if meta.text_pair else '["a text"]'


def _use(meta: PackageMetadata) -> list[str]:
    extras = [("the cutpoints", meta.cutpoints), ("the per-label thresholds", meta.thresholds),
              ("the scale", meta.scale)]  # fmt: skip
    beside = "".join(f" and {name}" for name, value in extras if value)
    return [
        "## Intended use and limitations",
        "",
        f"{_purpose(meta)}, like those of its dataset. It was trained on"
        f" {meta.dataset.rows} rows of one source and has not been evaluated elsewhere: expect lower"
        " accuracy on other domains, lengths or languages, and check it on your own data before relying on"
        f" it. Texts longer than {meta.onnx.max_length} tokens are cut. Not for decisions about people.",
        "",
        "## How to load",
        "",
        "```python",
        "import trainflow.package",
        'model = trainflow.package.load("path/to/this/folder")  # verifies every file first',
        f"print(model.predict({_example(meta)}))",
        "```",
        "",
        'With Optimum: `ORTModelForSequenceClassification.from_pretrained(folder, file_name="model_int8.onnx")`'
        ' in a `transformers` `pipeline("text-classification")`. With only onnxruntime, tokenizers and numpy:'
        " `tokenizer.json` already truncates and pads; see metadata.json for the label map"
        + beside
        + "."
        + (" Encode a pair with `tokenizer.encode(text, pair_text)`." if meta.text_pair else ""),
        "",
    ]


def _distillation(meta: PackageMetadata) -> list[str]:
    """Teacher and student side by side (distill.enabled), and which shipped."""
    d = meta.distillation
    if not d:
        return []
    metric = d["metric"]
    rows = [f"| | layers | parameters | validation {metric} | test {metric} (FP32) | INT8 p50 batch 1 | INT8 size |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for role in ("teacher", "student"):
        m = d.get(role)
        if not m:
            continue
        shipped = " (shipped)" if d["chosen"] == role else ""
        rows.append(f"| {role}{shipped} | {m['layers']} | {m['params']:,} | {_f(m['validation'].get(metric))} |"
                    f" {_f(m['test'].get(metric))} | {m['latency_ms']:.2f} ms | {m['size_mb']:.1f} MB |")  # fmt: skip
    return [
        "## Distillation",
        "",
        f"The search's model (the teacher) taught students at temperature {d['temperature']:g} with label weight"
        f" {d['alpha']:g}"
        + (f" and hidden-state loss weight {d['hidden_loss']:g}" if d.get("hidden_loss") else "")
        + f"; a student ships when its validation {metric} is within {d['max_accuracy_drop']:g} of the teacher's."
        f" {d['reason'][0].upper()}{d['reason'][1:]}.",
        "",
        *rows,
        "",
        "Latency and size: the INT8 ONNX model of each, batch 1, 1 thread, measured where it was built.",
        "",
    ]


def _origin(meta: PackageMetadata) -> str:
    d = meta.distillation
    if d and d["chosen"] == "student" and d.get("student"):
        teacher, student = d["teacher"], d["student"]
        into = "" if student.get("cut_from_teacher") else f" `{meta.base_model.name}`"
        return (f"distilled from a {teacher['layers']}-layer teacher fine-tuned from `{d.get('teacher_base') or '?'}`"
                f" into a {student['layers']}-layer student{into} ({meta.base_model.parameters:,} parameters)")  # fmt: skip
    return f"fine-tuned from `{meta.base_model.name}` ({meta.base_model.parameters:,} parameters)"


def render(meta: PackageMetadata, files: dict[str, str]) -> str:
    """The model card text; `files` are the package's other files with their SHA-256."""
    intro = (
        f"A {meta.task} text{' pair' if meta.text_pair else ''} model {_origin(meta)} and exported to ONNX (opset"
        f" {meta.onnx.opset}) with an INT8 version."
        + (f" Labels, in order: {', '.join(meta.labels)}." if meta.labels else "")
        + f" Built by trainflow on {meta.created_at} (git {meta.git_commit})."
    )
    checksums = [f"- `{name}`: `{digest}`" for name, digest in sorted(files.items())]
    return "\n".join([
        _front_matter(meta), f"# {meta.model_name} {meta.version}", "", intro, "",
        *_model_and_data(meta), *_training_and_evaluation(meta), *_distillation(meta), *_use(meta),
        "## Checksums (SHA-256)", "", *checksums, "",
    ])  # fmt: skip
