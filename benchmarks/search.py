"""The search under multi-fidelity pruning and deployment limits, on the default data and base model.

    .venv/bin/python benchmarks/search.py [--trials 16] [--eval-every 10] [--skip-pruning] [--skip-constraint]

1. Pruning, side by side: the same seeded TPE search of `--trials` trials over the default search
   space with no pruning, the median pruner and successive halving (2 workers sharing a journal
   study, as the flow's train step runs them). Reported: the best validation accuracy and the
   train steps spent (a pruned trial counts the steps it ran). Target: successive halving within
   0.5 point of no pruning's best with at most 50 % of its steps.
2. A latency limit only the shallower base meets: `model.base` chooses between the default
   MiniLM-L6 (6 layers) and the same model with 3 of its layers kept (the 2nd, 4th and 6th; built
   here with `save_pretrained`); each base's INT8 p50 (1 thread, batch 1) is measured first and the limit
   set between them. The search must choose the shallow base, never training the deep one.

Writes benchmarks/search.json and the section "Search: pruning and deployment limits" of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.default_run import replace_section  # noqa: E402

OUT = ROOT / "benchmarks" / "search.json"


def _config(work: Path, **hpo: Any) -> Any:
    """config/default.yaml with `hpo` fields set, writing under `work`, W&B off."""
    from trainflow.core.config import load_config, parse_config_dict

    raw = json.loads(json.dumps(load_config(ROOT / "config" / "default.yaml").model_dump(mode="json")))
    raw["hpo"].update(hpo)
    raw["publish"].update(artifact_root=str(work / "artifacts"), run_root=str(work / "runs"))
    raw["tracking"]["wandb_mode"] = "disabled"
    return parse_config_dict(raw)


def _worker(args: tuple[Any, Any, int]) -> None:
    from stages.hpo_worker import run_one_worker

    cfg, ctx, worker = args
    run_one_worker(cfg=cfg, ctx=ctx, worker=worker)


def _search(cfg: Any, key: str) -> dict[str, Any]:
    """Run the study with `cfg.hpo.n_workers` worker processes; its figures."""
    import optuna

    from stages.prepare import prepare_run
    from trainflow.search.study import best_trial, open_study, trial_records

    ctx = prepare_run(cfg=cfg, run_key=key)
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(cfg.hpo.n_workers) as pool:
        pool.map(_worker, [(cfg, ctx, w) for w in range(cfg.hpo.n_workers)])
    wall = time.perf_counter() - t0
    study = open_study(cfg, ctx.storage, ctx.study_name)
    records = trial_records(study)
    steps = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == optuna.trial.TrialState.COMPLETE:
            steps += int(t.user_attrs.get("steps") or cfg.train.max_steps)
        elif t.intermediate_values:
            steps += max(t.intermediate_values)  # a pruned trial trained up to its last report
    best = best_trial(study)
    return {
        "best_value": best.value, "best_trial": best.number, "best_params": best.params, "train_steps": steps,
        "states": {s: sum(r.state == s for r in records) for s in {r.state for r in records}},
        "wall_s": round(wall, 1),
        "trials": [{"number": r.number, "state": r.state, "value": r.value, "params": r.params,
                    "latency_ms": r.latency_ms, "size_mb": r.size_mb, "feasible": r.feasible} for r in records],
    }  # fmt: skip


def pruning(work: Path, trials: int, eval_every: int, names: list[str], sh_min: list[int]) -> dict[str, Any]:
    """The pruning arms in `names` (none, median, successive_halving); successive halving once per
    first-rung size in `sh_min` (steps)."""
    from trainflow.core.config import PrunerConfig

    arms = {
        "none": PrunerConfig(type="none"),
        "median": PrunerConfig(type="median", n_startup_trials=2),
    }
    for m in sh_min:
        name = "successive_halving" if m == eval_every else f"successive_halving, first rung {m} steps"
        arms[name] = PrunerConfig(type="successive_halving", min_resource=m, reduction_factor=3)
    arms = {k: v for k, v in arms.items() if k.split(",")[0] in names}
    out = {}
    for name, pruner in arms.items():
        cfg = _config(work / name, n_trials=trials, pruner=pruner.model_dump())
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"eval_every": eval_every})})
        print(f"pruning arm {name}: {trials} trials", flush=True)
        out[name] = _search(cfg, f"bench-{name}")
        print(f"  best {out[name]['best_value']:.4f}, {out[name]['train_steps']} steps, {out[name]['wall_s']} s",
              flush=True)  # fmt: skip
    return out


def _shallow_copy(base: str, layers: int, folder: Path) -> Path:
    """`base` with `layers` of its layers kept, evenly spaced and ending with the top one (as
    DistilBERT was made), saved as a model folder of its own. (Its lowest layers alone leave a
    [CLS] vector that 100 steps do not move off the majority class.)"""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from trainflow.training.base_model import resolve_base_model

    source = resolve_base_model(base)
    model = AutoModel.from_pretrained(source)
    total = len(model.encoder.layer)
    keep = [total - 1 - i * (total // layers) for i in reversed(range(layers))]
    model.encoder.layer = torch.nn.ModuleList([model.encoder.layer[i] for i in keep])
    model.config.num_hidden_layers = layers
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def constraint(work: Path, trials: int) -> dict[str, Any]:
    from stages.prepare import prepare_run  # noqa: F401 - imported for the same stack as the search
    from trainflow.convert.deploy_cost import measure_deploy_cost
    from trainflow.core.layout import deploy_cost_dir
    from trainflow.data.dataset import load_split

    base = _config(work / "probe")
    deep = base.model.base
    shallow = str(_shallow_copy(deep, 3, work / "minilm-l3"))
    texts = load_split(prepare_run(cfg=base, run_key="probe").snapshot, "calibration").texts
    costs = {}
    for name in (deep, shallow):
        probe = base.model_copy(update={"model": base.model.model_copy(update={"base": name}),
                                        "hpo": base.hpo.model_copy(update={"constraints": None})})  # fmt: skip
        costs[name] = measure_deploy_cost(probe, texts=texts, cache_dir=deploy_cost_dir(work / "constrained" / "runs"))
    limit = round((costs[deep]["latency_ms"] + costs[shallow]["latency_ms"]) / 2, 2)
    space = {
        **{k: v.model_dump() for k, v in base.hpo.search_space.items()},
        "model.base": {"choices": [deep, shallow]},
    }
    cfg = _config(work / "constrained", n_trials=trials, search_space=space, sampler="tpe",
                  constraints={"max_latency_ms": limit, "threads": 1, "batch": 1})  # fmt: skip
    print(f"constraint: INT8 p50 deep {costs[deep]['latency_ms']:.2f} ms, shallow {costs[shallow]['latency_ms']:.2f}"
          f" ms; limit {limit} ms", flush=True)  # fmt: skip
    result = _search(cfg, "bench-constrained")
    result.update(limit_ms=limit, costs={"deep (6 layers)": costs[deep], "shallow (3 layers)": costs[shallow]},
                  chosen_base="shallow" if result["best_params"]["model.base"] == shallow else "deep")  # fmt: skip
    return result


def _report(res: dict[str, Any]) -> str:
    lines = [f"Measured {res['date']} on {res['cpu']} ({res['cores']} cores), torch {res['torch']}, ONNX Runtime"
             f" {res['onnxruntime']}. `python benchmarks/search.py` (raw: benchmarks/search.json).", ""]  # fmt: skip
    if "pruning" in res:
        p = res["pruning"]
        none = p["none"]
        lines += [f"### Pruning: {res['trials']} trials, default data and base model, 2 workers, evaluation every"
                  f" {res['eval_every']} steps of {res['max_steps']}", "",
                  "| pruner | best validation accuracy | vs none (points) | train steps | vs none | trials complete / pruned | wall |",
                  "|---|---:|---:|---:|---:|---|---:|"]  # fmt: skip
        for name, r in p.items():
            lines.append(
                f"| {name} | {r['best_value']:.4f} | {100 * (r['best_value'] - none['best_value']):+.2f} |"
                f" {r['train_steps']} | {100 * r['train_steps'] / none['train_steps']:.0f} % |"
                f" {r['states'].get('COMPLETE', 0)} / {r['states'].get('PRUNED', 0)} | {r['wall_s']:.0f} s |"
            )
        lines.append("")
        for name, sh in p.items():
            if not name.startswith("successive_halving"):
                continue
            ok = (none["best_value"] - sh["best_value"]) <= 0.005 + 1e-9 and sh["train_steps"] <= 0.5 * none[
                "train_steps"
            ]
            lines.append(f"Target (successive halving within 0.5 point of no pruning with at most 50 % of its steps),"
                         f" {name}: **{'met' if ok else 'missed'}**.")  # fmt: skip
        lines.append("")
    if "constraint" in res:
        c = res["constraint"]
        costs = "; ".join(f"{k} {v['latency_ms']:.2f} ms, {v['size_mb']:.1f} MB" for k, v in c["costs"].items())
        complete = sum(t["state"] == "COMPLETE" for t in c["trials"])
        skipped = sum(t["feasible"] is False for t in c["trials"])
        pruned = len(c["trials"]) - complete - skipped
        lines += [f"### A latency limit only the shallower base meets ({res['constraint_trials']} trials)", "",
                  f"INT8 p50 at batch 1, 1 thread, measured once per base on an untrained model of its shape: {costs}."
                  f" Limit: {c['limit_ms']} ms. Trials: {complete + pruned} within the limit and trained ({complete} complete,"
                  f" {pruned} stopped by the default median pruner), {skipped} over the limit (never trained)."
                  f" Chosen: **{c['chosen_base']}** base, validation accuracy {c['best_value']:.4f}"
                  f" ({'as required' if c['chosen_base'] == 'shallow' else 'WRONG: the deep base is over the limit'}).",
                  ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--constraint-trials", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--skip-pruning", action="store_true")
    parser.add_argument(
        "--arms",
        nargs="*",
        default=["none", "median", "successive_halving"],
        help="pruning arms to run (others are kept from benchmarks/search.json)",
    )
    parser.add_argument(
        "--sh-min-resource",
        nargs="*",
        type=int,
        default=None,
        help="successive halving's first rung in steps, one arm each (default: --eval-every)",
    )
    parser.add_argument("--skip-constraint", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    import onnxruntime
    import torch

    from trainflow.convert.onnx_model import cpu_info

    os.chdir(ROOT)  # the config's data path is relative to the checkout, as in `make run`
    work = Path(tempfile.mkdtemp(prefix="trainflow-search-"))
    res: dict[str, Any] = json.loads(OUT.read_text()) if OUT.exists() else {}
    res.update(date=time.strftime("%Y-%m-%d"), cpu=cpu_info().get("model") or platform.processor(),
               cores=mp.cpu_count(), torch=torch.__version__, onnxruntime=onnxruntime.__version__,
               trials=args.trials, constraint_trials=args.constraint_trials, eval_every=args.eval_every,
               max_steps=_config(work / "x").train.max_steps)  # fmt: skip
    try:
        if not args.skip_pruning:
            sh_min = args.sh_min_resource or [args.eval_every]
            res["pruning"] = {
                **res.get("pruning", {}),
                **pruning(work, args.trials, args.eval_every, args.arms, sh_min),
            }
        if not args.skip_constraint:
            res["constraint"] = constraint(work, args.constraint_trials)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    replace_section("Search: pruning and deployment limits", _report(res))
    print(_report(res))


if __name__ == "__main__":
    main()
