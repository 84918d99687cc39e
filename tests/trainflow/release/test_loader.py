"""The package a deployer gets: `trainflow.package.load` (verified first, no torch), Optimum and a
transformers pipeline, a consumer with only onnxruntime + tokenizers + numpy, the model card
and tokenizer files (issue 13). The packages come from the real pipeline on the tiny model."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from stages.publish import publish_run
from tests.pipeline import searched_and_quantized
from tests.tiny import ROOT, rt_texts, tiny_config
from trainflow.convert.onnx_model import OnnxTextModel
from trainflow.core.config import default_recipes, parse_config_dict
from trainflow.core.errors import PackageVerificationError
from trainflow.core.layout import MANIFEST
from trainflow.data.dataset import load_split
from trainflow.package import load
from trainflow.release.metadata import read_metadata

TEXTS = rt_texts(48)


@dataclass(frozen=True)
class Built:
    path: Path
    test_texts: list[str]


def _build(tmp: Path, model_dir: Path, recipes: list[dict] | None = None, **quantize: object) -> Built:
    raw = tiny_config(tmp, model_dir)
    raw["hpo"].update(n_trials=1, n_workers=1, pruner="none")
    raw["quantize"].update(quantize)
    if recipes is not None:
        raw["quantize"]["recipes"] = recipes
    cfg = parse_config_dict(raw)
    ctx, best, records, exported, quant = searched_and_quantized(cfg)
    package = publish_run(cfg=cfg, ctx=ctx, best=best, records=records, exported=exported, quant=quant,
                          pathspec="TrainFlow/r1/publish/6", version="v1-r1")  # fmt: skip
    return Built(Path(package.path), load_split(ctx.snapshot, "test").texts)


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Built:
    """The first default recipe alone: static INT8 with fixed activation scales on the fused graph,
    embedding tables in 8 bits (alone because on the tiny model whether it beats FP32, and so ends
    the search, depends on the machine's load; it is the package's INT8 either way)."""
    first = default_recipes()[0].model_dump()
    assert first["mode"] == "static" and first["embeddings"] == "int8"
    return _build(tmp_path_factory.mktemp("fused"), tiny_model_dir, recipes=[first])


@pytest.fixture(scope="module")
def static(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Built:
    return _build(tmp_path_factory.mktemp("static"), tiny_model_dir, recipes=[{"name": "u8s8-minmax"}])


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Built:
    """Dynamic INT8 on the attention-fused graph: allowed only once batch invariance is waived."""
    dyn = next(r for r in default_recipes() if r.name == "dyn-u8s8").model_dump()
    return _build(tmp_path_factory.mktemp("dynamic"), tiny_model_dir, recipes=[dyn], max_batch_diff=None)


def test_the_default_search_ships_a_small_batch_invariant_model(fused: Built, static: Built) -> None:
    meta = read_metadata(fused.path)
    q = meta.quantization
    assert q.chosen_recipe == "u8s8" and q.recipe["mode"] == "static" and q.recipe["int8_embedding_nodes"]
    graph = q.graph_optimization
    assert graph["applied"] == "fused" and graph["fusions"]["LayerNormalization"] >= 4
    # 8-bit embedding tables: smaller than the same static recipe with FP32 ones (on MiniLM 26 % of FP32).
    assert meta.metrics.size_bytes.int8 < read_metadata(static.path).metrics.size_bytes.int8
    assert q.batch_invariance["max_abs_diff"] <= 0.01 and q.batch_invariance["label_agreement"] == 1.0
    assert q.batch_invariance["n"] == len(fused.test_texts) and q.search[0].batch_max_diff is not None
    assert meta.serving["primary"] in ("int8", "fp32") and meta.serving["best"]["batch1"]["threads"] >= 1
    assert {(r["model"], r["batch"]) for r in meta.serving["table"]} == {
        (m, b) for m in ("fp32", "int8") for b in (1, 32)
    }


def test_the_dynamic_recipe_quantizes_the_attention_fused_graph_when_invariance_is_waived(dynamic: Built) -> None:
    q = read_metadata(dynamic.path).quantization
    assert q.chosen_recipe == "dyn-u8s8" and q.recipe["mode"] == "dynamic"
    assert q.graph_optimization["chosen_graph"] == "attention" and q.graph_optimization["fusions"]["Attention"] == 2
    assert q.batch_invariance["required_max_abs_diff"] is None and q.batch_invariance["max_abs_diff"] is not None


def test_a_text_gets_the_same_answer_alone_and_in_a_batch(fused: Built) -> None:
    model = load(fused.path, model="int8")
    texts = fused.test_texts[:40]
    together = model.predict(texts, batch_size=len(texts))
    for text, batched in zip(texts, together):
        (alone,) = model.predict([text])
        assert alone.label == batched.label
        assert alone.probabilities == pytest.approx(batched.probabilities, abs=1e-6)


@pytest.mark.parametrize("which", ["fused", "static", "dynamic"])
def test_the_loader_predicts_what_onnx_runtime_does(which: str, request: pytest.FixtureRequest) -> None:
    built: Built = request.getfixturevalue(which)
    model = load(built.path, model="int8")
    reference = OnnxTextModel(built.path / "model_int8.onnx", AutoTokenizer.from_pretrained(built.path), 32)
    # One text per call: dynamic INT8 scales activations per batch, so there a text's output
    # depends (slightly) on its batch-mates; alone, both give the same numbers.
    expected = reference.logits(built.test_texts, batch_size=1)
    np.testing.assert_allclose(model.logits(built.test_texts, batch_size=1), expected, atol=1e-5)
    got = model.predict(built.test_texts, batch_size=1)
    assert [p.index for p in got] == expected.argmax(1).tolist()
    assert {p.label for p in got} <= {"rotten", "fresh"}
    assert all(abs(sum(p.probabilities.values()) - 1) < 1e-5 for p in got)
    batched = model.logits(built.test_texts, batch_size=7)  # padding and batching change nothing beyond that
    np.testing.assert_allclose(batched, expected, atol=1e-3 if which == "dynamic" else 1e-5)


def test_loading_imports_no_torch_and_picks_the_measured_threads(fused: Built) -> None:
    code = ("import sys, trainflow.package as p; m = p.load(sys.argv[1]); m.predict(['a film']);"
            " print('torch' in sys.modules, m.threads, m.file)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, str(fused.path)], capture_output=True, text=True, check=True)
    torch_loaded, threads, file = out.stdout.split()
    meta = read_metadata(fused.path)
    assert torch_loaded == "False"
    assert int(threads) == meta.serving["best"]["batch1"]["threads"] and file == meta.primary_file


def _copy(built: Built, tmp_path: Path) -> Path:
    """A copy of the package outside any registry (as a deployer would get it)."""
    dst = tmp_path / "pkg"
    shutil.copytree(built.path, dst)
    return dst


@pytest.mark.parametrize("tamper", ["changed", "extra", "missing"])
def test_the_loader_refuses_a_tampered_package_naming_the_file(fused: Built, tmp_path: Path, tamper: str) -> None:
    pkg = _copy(fused, tmp_path)
    if tamper == "changed":
        data = bytearray((pkg / "model_int8.onnx").read_bytes())
        data[len(data) // 2] ^= 1
        (pkg / "model_int8.onnx").write_bytes(bytes(data))
        expected = "model_int8.onnx: SHA-256 does not match"
    elif tamper == "extra":
        (pkg / "backdoor.onnx").write_bytes(b"\0")
        expected = "backdoor.onnx: present but not in the manifest"
    else:
        (pkg / "tokenizer.json").unlink()
        expected = "tokenizer.json: listed but missing"
    with pytest.raises(PackageVerificationError, match=expected):
        load(pkg)


def test_the_loader_refuses_a_forged_manifest_in_a_registry(tmp_path: Path, tiny_model_dir: Path) -> None:
    built = _build(tmp_path, tiny_model_dir, recipes=[{"name": "u8s8-minmax"}])
    data = bytearray((built.path / "model_int8.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (built.path / "model_int8.onnx").write_bytes(bytes(data))
    import hashlib

    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
        for p in sorted(built.path.iterdir())
        if p.name != MANIFEST
    ]
    (built.path / MANIFEST).write_text("".join(lines))
    load(_copy(built, tmp_path))  # outside the registry the forgery is self-consistent...
    with pytest.raises(PackageVerificationError, match="model_int8.onnx: differs from what the registry recorded"):
        load(built.path)  # ...inside it, the registry's record catches it


def test_optimum_and_a_transformers_pipeline_load_the_package(fused: Built, static: Built) -> None:
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import pipeline

    for built in (fused, static):
        ort_model = ORTModelForSequenceClassification.from_pretrained(built.path, file_name="model_int8.onnx")
        classify = pipeline("text-classification", model=ort_model, tokenizer=AutoTokenizer.from_pretrained(built.path))
        labels = [r["label"] for r in classify(built.test_texts[:16])]
        assert labels == [p.label for p in load(built.path, model="int8").predict(built.test_texts[:16], batch_size=1)]


def test_the_tokenizer_files_carry_truncation_and_padding(fused: Built) -> None:
    meta = read_metadata(fused.path)
    tok = json.loads((fused.path / "tokenizer.json").read_text())
    assert tok["truncation"]["max_length"] == meta.onnx.max_length == 32
    assert tok["padding"]["strategy"] == "BatchLongest" and tok["padding"]["pad_token"] == "[PAD]"
    config = json.loads((fused.path / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == meta.onnx.max_length


def test_the_model_card_lists_the_real_metrics_and_is_covered_by_the_manifest(fused: Built) -> None:
    meta = read_metadata(fused.path)
    card = (fused.path / "README.md").read_text()
    assert card.startswith('---\nlibrary_name: "onnxruntime"') and f"# tiny {meta.version}" in card
    for split in (meta.metrics.test_fp32_onnx, meta.metrics.test_int8_onnx, meta.metrics.test_majority_baseline):
        assert f"{split['accuracy']:.4f}" in card
    assert "## Intended use and limitations" in card and "## How to load" in card
    assert "README.md" in (fused.path / MANIFEST).read_text()
    digest = re.search(r"`model_int8.onnx`: `([0-9a-f]{64})`", card).group(1)
    assert digest in (fused.path / MANIFEST).read_text()


def _consumer_example() -> str:
    readme = (ROOT / "README.md").read_text()
    return re.search(r"<!-- consumer-example -->\n```python\n(.*?)```", readme, re.S).group(1)


@pytest.mark.slow
def test_the_readmes_consumer_example_runs_with_only_onnxruntime_tokenizers_numpy(fused: Built, tmp_path: Path) -> None:
    example = _consumer_example()
    assert len(example.strip().splitlines()) <= 25
    env_dir = tmp_path / "consumer"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    pins = [
        line
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith(("onnxruntime==", "tokenizers=="))
    ]
    import numpy

    subprocess.run([str(py), "-m", "pip", "install", "-q", *pins, f"numpy=={numpy.__version__}"], check=True,
                   capture_output=True)  # fmt: skip
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    assert "torch" not in listed and "transformers" not in listed and "trainflow" not in listed
    script = tmp_path / "consume.py"
    script.write_text(example)
    texts = fused.test_texts[:12]
    out = subprocess.run([str(py), str(script), str(fused.path), *texts], capture_output=True, text=True, check=True)
    expected = [
        p.label for p in load(fused.path, model="int8").predict(texts, batch_size=len(texts))
    ]  # one batch, as there
    assert out.stdout.split() == expected
