"""Every supported model family through the model stages with the shipped defaults (embeddings
frozen, the lowest layer frozen, the default INT8 recipe first): build, freeze, train a few steps,
export, parity, INT8 with the family's fusions, publish, the loader and a plain onnxruntime +
tokenizers consumer. Tiny random-weight models built here (tests/families.py); nothing is downloaded."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stages.export import export_and_check
from stages.hpo_worker import run_trials
from stages.prepare import prepare_run
from stages.publish import publish_run
from stages.quantize import quantize_model
from stages.select import select_best
from tests.families import FAMILIES, build_family
from tests.tiny import ROOT, rt_texts, tiny_config
from trainflow.core.config import ModelConfig, TaskConfig, default_recipes, parse_config_dict
from trainflow.core.errors import ModelLoadError
from trainflow.package import load
from trainflow.release.metadata import read_metadata
from trainflow.training.families import anatomy
from trainflow.training.hparams import Hyperparams
from trainflow.training.modeling import build_model
from trainflow.training.preflight import inspect_model
from trainflow.training.train import param_groups

CORPUS = rt_texts(400)
TASK = TaskConfig(type="classification", labels=["rotten", "fresh"])
# What the shipped defaults freeze (embeddings and the lowest layers); ALBERT shares its layers.
FROZEN = {name: 0 if name == "albert" else 1 for name in FAMILIES}
FUSE_ATTENTION = {"bert", "distilbert", "roberta", "xlm-roberta", "electra"}


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: build_family(name, root / name, CORPUS) for name in FAMILIES}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_freezes_where_its_anatomy_says_and_its_head_gets_the_head_rate(
    name: str, bases: dict[str, Path]
) -> None:
    model = build_model(task="classification", labels=TASK.labels, base=str(bases[name]), freeze_embeddings=True,
                        frozen_layers=FROZEN[name])  # fmt: skip
    parts = anatomy(model.hf)
    assert parts.known and parts.n_layers == 2 and parts.head_names
    assert all(not p.requires_grad for m in parts.embeddings for p in m.parameters())
    if parts.layers is not None:
        assert all(not p.requires_grad for p in parts.layers[0].parameters())
        assert all(p.requires_grad for p in parts.layers[1].parameters())
    head = set(parts.head_names)
    assert {n for n, p in model.hf.named_parameters() if n in head and p.requires_grad} == head
    hp = Hyperparams(learning_rate=1e-4, weight_decay=0.0, warmup_ratio=0.0, batch_size=4, max_steps=4)
    rates = {id(p): g["lr"] for g in param_groups(model, hp, 10.0) for p in g["params"]}
    named = dict(model.hf.named_parameters())
    assert {rates[id(named[n])] for n in head} == {1e-3}, "every head parameter trains at the head rate"
    assert 1e-4 in rates.values(), "the backbone keeps the base rate"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_preflight_check_passes_every_family_and_says_what_it_will_do(name: str, bases: dict[str, Path]) -> None:
    model = ModelConfig(base=str(bases[name]), max_length=32, frozen_layers=FROZEN[name])
    report = inspect_model(model=model, task=TASK)
    assert report.model_type == FAMILIES[name].model_type and report.family == "known" and report.n_layers == 2
    assert "input_ids" in report.inputs and "attention_mask" in report.inputs
    assert ("end-of-text" in report.pad) == FAMILIES[name].decoder
    assert "head for 2 outputs" in report.head or "head (2 outputs) is kept" in report.head


def _consumer(package: Path, texts: list[str]) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- consumer-example -->\n```python\n(.*?)```", readme, re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code, str(package), *texts], capture_output=True, text=True,
                         check=True, timeout=120)  # fmt: skip
    return out.stdout.split()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_trains_exports_quantizes_publishes_and_loads(
    name: str, bases: dict[str, Path], tmp_path: Path
) -> None:
    raw = tiny_config(tmp_path, bases[name])
    raw["model"].update(freeze_embeddings=True, frozen_layers=FROZEN[name])
    raw["train"].update(max_steps=4, eval_every=2, checkpoint_every=2)
    raw["hpo"].update(n_trials=1, n_workers=1, pruner="none")
    # The dynamic recipe on the attention graph: every family's strongest fusion (batch invariance
    # waived; the default static recipe goes through the flow in tests/flows/test_families_flow.py).
    dyn = next(r for r in default_recipes() if r.name == "dyn-u8s8").model_dump()
    raw["quantize"].update(recipes=[dyn], threads=[1], latency_samples=4, max_batch_diff=None)
    cfg = parse_config_dict(raw)
    ctx = prepare_run(cfg=cfg, run_key="r1")
    run_trials(cfg=cfg, ctx=ctx, worker=0)
    best, records = select_best(cfg=cfg, ctx=ctx)
    exported = export_and_check(cfg=cfg, ctx=ctx, model_dir=best.model_dir)
    assert exported.parity.max_abs_diff <= cfg.export.parity_atol
    quant = quantize_model(cfg=cfg, ctx=ctx, exported=exported)
    package = Path(publish_run(cfg=cfg, ctx=ctx, best=best, records=records, exported=exported, quant=quant,
                               pathspec="TrainFlow/r1/publish/6", version="v1-r1").path)  # fmt: skip
    meta = read_metadata(package)
    graph = meta.quantization.graph_optimization
    assert meta.quantization.node_counts.get("DynamicQuantizeLinear", 0) > 0, "the weights are INT8"
    if name in FUSE_ATTENTION:
        assert graph["applied"] == "attention" and graph["fusions"]["Attention"] == 2
    elif not FAMILIES[name].decoder or name == "gpt2":
        assert graph["applied"] == "fused" and graph["fusions"], graph  # LayerNorm and GELU fused at least
    else:
        assert graph["applied"] == "basic" and "rotary" in json.dumps(graph["tried"])
    assert meta.onnx.inputs == exported.inputs
    assert ("token_type_ids" in meta.onnx.inputs) == (name in ("bert", "electra", "albert"))
    texts = CORPUS[300:306]
    loaded = load(package, model="int8")
    expected = [p.label for p in loaded.predict(texts, batch_size=len(texts))]
    assert _consumer(package, texts) == expected


def test_a_fine_tuned_base_with_another_label_count_gets_a_new_head(bases: dict[str, Path], tmp_path: Path,
                                                                    caplog) -> None:  # fmt: skip
    three = build_family("roberta", tmp_path / "three", CORPUS, num_labels=3)
    cfg = json.loads((three / "config.json").read_text())
    assert cfg["architectures"] == ["RobertaForSequenceClassification"]
    with caplog.at_level("INFO", logger="trainflow.training.modeling"):
        model = build_model(task="classification", labels=TASK.labels, base=str(three))
    assert model.hf.config.num_labels == 2 and model.hf.classifier.out_proj.out_features == 2
    assert "head for 3 outputs is replaced by a new one for 2" in caplog.text
    same = build_model(task="classification", labels=TASK.labels, base=str(bases["roberta"]))
    saved = load_file(str(bases["roberta"] / "model.safetensors"))
    assert torch.equal(same.hf.classifier.out_proj.weight, saved["classifier.out_proj.weight"])
    with pytest.raises(ModelLoadError, match="model.head: keep, but the base model's classification head has 3"):
        build_model(task="classification", labels=TASK.labels, base=str(three), head="keep")
    fresh = build_model(task="classification", labels=TASK.labels, base=str(bases["roberta"]), head="new")
    assert not torch.equal(fresh.hf.classifier.out_proj.weight, saved["classifier.out_proj.weight"])


def _problems(model: ModelConfig) -> str:
    with pytest.raises(ModelLoadError) as err:
        inspect_model(model=model, task=TASK)
    return str(err.value)


def test_the_preflight_check_names_every_problem_of_a_base_model(bases: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    albert = _problems(ModelConfig(base=str(bases["albert"]), frozen_layers=1))
    assert "ALBERT shares one set of layer weights" in albert and "set model.frozen_layers: 0" in albert
    deep = _problems(ModelConfig(base=str(bases["bert"]), frozen_layers=5, max_length=4096))
    assert "frozen_layers=5 but this bert model has 2 layers" in deep and "exceeds the 512 positions" in deep
    bare = tmp_path / "no-weights"
    shutil.copytree(bases["distilbert"], bare)
    (bare / "model.safetensors").unlink()
    (bare / "tokenizer.json").unlink()
    found = _problems(ModelConfig(base=str(bare)))
    assert "has no weights" in found and "tokenizer" in found
    alien = tmp_path / "alien"
    shutil.copytree(bases["bert"], alien)
    config = json.loads((alien / "config.json").read_text())
    (alien / "config.json").write_text(json.dumps({**config, "model_type": "no-such-family"}))
    assert "does not describe a model trainflow can build" in _problems(ModelConfig(base=str(alien)))


def test_a_tokenizer_that_cannot_encode_is_refused(bases: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bases["bert"], broken)
    tok = json.loads((broken / "tokenizer.json").read_text())
    tok["model"]["vocab"] = {k: v for k, v in tok["model"]["vocab"].items() if k.startswith("[")}  # specials only
    (broken / "tokenizer.json").write_text(json.dumps(tok))
    assert "unknown tokens only" in _problems(ModelConfig(base=str(broken)))


def test_start_refuses_a_base_model_that_cannot_train_before_it_snapshots_anything(
    bases: dict[str, Path], tmp_path: Path
) -> None:
    raw = tiny_config(tmp_path, bases["albert"])
    raw["model"].update(freeze_embeddings=True, frozen_layers=2)
    cfg = parse_config_dict(raw)
    with pytest.raises(ModelLoadError, match="ALBERT shares one set of layer weights"):
        prepare_run(cfg=cfg, run_key="r1")
    assert not (tmp_path / "runs" / "tiny" / "r1").exists(), "no snapshot, no study: nothing trains"
