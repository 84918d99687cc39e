"""Distillation on the default data, side by side: the teacher against students cut from it, each
student distilled and, at the same depth, fine-tuned on the labels alone.

    .venv/bin/python benchmarks/distill.py [--depths 3 2] [--teacher-steps 100] [--student-steps 600]
                                           [--student-lr 4e-4] [--render]

The teacher is config/default.yaml's model (MiniLM-L6, 2 layers frozen) trained with the values the
default search chose in `make run` (its best trial). Each student keeps `depth` of its 6 layers
(evenly spaced, trainflow/training/student.py) and trains every layer for `--student-steps` steps
at learning rate `--student-lr` (config/distill.yaml's student settings: the best validation
accuracy of four probes of the 2-layer student, 300 or 600 steps, the teacher's LR or 4e-4, with
or without the hidden-state loss) with the teacher's other values: once with the distillation loss (temperature 2, alpha 0.5, the
flow's defaults) against the teacher's outputs computed once, once on the labels only. Every model
is exported, quantized with the default INT8 recipe and scored on the whole test split (FP32 and
INT8 ONNX); the INT8 models take turns in one latency sweep (batch 1 and 32, 1 and 2 threads).

Targets: a student whose INT8 is >= 2.0x faster than the teacher's INT8 at batch 1 with test
accuracy within 1 point of the teacher's FP32; distillation beats plain fine-tuning at the same
depth by >= 1 point. Writes benchmarks/distill.json and the section "Distillation" of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.default_run import replace_section  # noqa: E402

OUT = ROOT / "benchmarks" / "distill.json"
# The best trial of `make run` (benchmarks/RESULTS.md, "make run"): what the teacher is trained with.
TEACHER = {"train.learning_rate": 1.633e-4, "train.weight_decay": 0.0773, "train.warmup_ratio": 0.174}


def _config(work: Path) -> Any:
    from trainflow.core.config import load_config, parse_config_dict

    raw = json.loads(json.dumps(load_config(ROOT / "config" / "default.yaml").model_dump(mode="json")))
    raw["publish"].update(artifact_root=str(work / "artifacts"), run_root=str(work / "runs"))
    raw["tracking"]["wandb_mode"] = "disabled"
    return parse_config_dict(raw)


def _train(cfg: Any, splits: dict[str, Any], out: Path, objective: Any = None) -> tuple[str, float, dict]:
    from trainflow.search.space import hyperparams
    from trainflow.training.train import train_model

    t0 = time.perf_counter()
    r = train_model(cfg=cfg, hparams=hyperparams(cfg), train=splits["train"], validation=splits["validation"],
                    out_dir=out, seed=cfg.seed, objective=objective)  # fmt: skip
    return r.model_dir, time.perf_counter() - t0, r.metrics


def _int8(cfg: Any, model_dir: str, splits: dict[str, Any], out: Path) -> dict[str, Any]:
    from trainflow.convert.export import export_onnx
    from trainflow.convert.onnx_model import FolderTokenizer
    from trainflow.convert.quantize import quantize_and_gate

    exported = export_onnx(model_dir=Path(model_dir), out_dir=out, export=cfg.export, max_length=cfg.model.max_length)
    q = cfg.quantize.model_copy(update={"max_accuracy_drop": 1.0, "search": False, "max_batch_diff": None,
                                        "threads": [1], "latency_samples": 8, "latency_rounds": 1,
                                        "recipes": [cfg.quantize.recipes[0]]})  # fmt: skip
    r = quantize_and_gate(fp32_path=Path(exported.onnx_path), tokenizer=FolderTokenizer(out), task=cfg.task.type,
                          n_classes=len(cfg.task.labels), cutpoints=None, calibration=splits["calibration"],
                          test=splits["test"], max_length=cfg.model.max_length, q=q)  # fmt: skip
    return {"fp32_test": r.fp32_metrics["accuracy"], "int8_test": r.int8_metrics["accuracy"], "int8_path": r.int8_path,
            "int8_mb": r.int8_size_bytes / 1e6, "fp32_mb": r.fp32_size_bytes / 1e6, "recipe": r.chosen, "onnx": out}  # fmt: skip


def run(
    depths: list[int], teacher_steps: int, student_steps: int, student_lr: float, threads: list[int]
) -> dict[str, Any]:
    import torch

    from stages.prepare import prepare_run
    from trainflow.convert.onnx_model import FolderTokenizer, cpu_info, thread_sweep
    from trainflow.data.dataset import load_split
    from trainflow.search import space as search_space
    from trainflow.search.distill import distill_config
    from trainflow.training.distill import DistillObjective
    from trainflow.training.student import make_student
    from trainflow.training.teacher import teacher_outputs

    work = Path(tempfile.mkdtemp(prefix="bench-distill-"))
    cfg = _config(work)
    ctx = prepare_run(cfg=cfg, run_key="bench-distill")
    splits = {n: load_split(ctx.snapshot, n) for n in ("train", "validation", "test", "calibration")}
    torch.set_num_threads(2)
    t_cfg = search_space.apply(cfg, {**TEACHER, "train.max_steps": teacher_steps})
    models: dict[str, dict[str, Any]] = {}
    teacher_dir, secs, val = _train(t_cfg, splits, work / "teacher")
    models["teacher"] = {"layers": 6, "train_s": secs, "validation": val["accuracy"], "model_dir": teacher_dir}
    t0 = time.perf_counter()
    outputs = teacher_outputs(teacher_dir=Path(teacher_dir), train=splits["train"], max_length=cfg.model.max_length,
                              out_dir=work / "teacher-outputs")  # fmt: skip
    outputs_s = time.perf_counter() - t0
    d = cfg.distill

    def objective(device: torch.device) -> DistillObjective:
        return DistillObjective(labels=splits["train"].labels, teacher_logits=torch.from_numpy(outputs.logits),
                                teacher_cutpoints=None, temperature=d.temperature, alpha=d.alpha, device=device)  # fmt: skip

    for depth in depths:
        student = make_student(Path(teacher_dir), depth, work / f"layers-{depth}")
        s_cfg = search_space.apply(distill_config(cfg, TEACHER, [str(student.path)]),
                                   {"model.base": str(student.path), "train.max_steps": student_steps,
                                    "train.learning_rate": student_lr})  # fmt: skip
        for mode, obj in (("distilled", objective), ("plain", None)):
            name = f"{depth}-layer {mode}"
            model_dir, secs, val = _train(s_cfg, splits, work / name.replace(" ", "-"), obj)
            models[name] = {"layers": depth, "train_s": secs, "validation": val["accuracy"], "model_dir": model_dir,
                            "params": student.params}  # fmt: skip
        models["teacher"]["params"] = student.teacher_params
    for name, m in models.items():
        m.update(_int8(cfg, m["model_dir"], splits, work / "onnx" / name.replace(" ", "-")))
    tokenizer = FolderTokenizer(models["teacher"]["onnx"])
    rows = thread_sweep({n: Path(m["int8_path"]) for n, m in models.items()}, tokenizer, cfg.model.max_length,
                        splits["test"].texts[:128], threads=threads, batch_sizes=(1, 32), rounds=2)  # fmt: skip
    for r in rows:
        models[str(r["model"])][f"int8_p50_ms_b{r['batch']}_t{r['threads']}"] = float(r["p50_ms"])  # type: ignore[arg-type]
    for m in models.values():
        for k in ("int8_path", "onnx", "model_dir"):
            m.pop(k)
    return {"cpu": cpu_info(), "machine": platform.machine(), "teacher_steps": teacher_steps,
            "student_steps": student_steps, "student_lr": student_lr, "teacher_outputs_s": outputs_s, "train_rows": len(splits["train"]),
            "test_rows": len(splits["test"]), "temperature": d.temperature, "alpha": d.alpha, "threads": threads,
            "models": models, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip


def table(res: dict[str, Any]) -> str:
    threads = res["threads"]
    head = ["model", "layers", "params", "val acc", "test FP32", "test INT8", "INT8 MB"]
    head += [f"INT8 p50 b{b} t{t} (ms)" for b in (1, 32) for t in threads] + ["train (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in res["models"].items():
        cells = [name, str(m["layers"]), f"{m['params'] / 1e6:.1f}M", f"{m['validation']:.4f}", f"{m['fp32_test']:.4f}",
                 f"{m['int8_test']:.4f}", f"{m['int8_mb']:.1f}"]  # fmt: skip
        cells += [f"{m[f'int8_p50_ms_b{b}_t{t}']:.2f}" for b in (1, 32) for t in threads] + [f"{m['train_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(res: dict[str, Any]) -> list[str]:
    models, teacher = res["models"], res["models"]["teacher"]
    out = []
    for name, m in models.items():
        if not name.endswith("distilled"):
            continue
        speed = teacher["int8_p50_ms_b1_t1"] / m["int8_p50_ms_b1_t1"]
        gap = (m["int8_test"] - teacher["fp32_test"]) * 100
        plain = models[name.replace("distilled", "plain")]
        gain = (m["int8_test"] - plain["int8_test"]) * 100
        gain_fp32 = (m["fp32_test"] - plain["fp32_test"]) * 100
        ok = "met" if speed >= 2.0 and gap >= -1.0 else "missed"
        out.append(f"- {name}: INT8 {speed:.2f}x the teacher's INT8 speed at batch 1, 1 thread; its INT8 test accuracy"
                   f" {gap:+.2f} points from the teacher's FP32 (target >= 2.0x and within 1 point: {ok}); against"
                   f" plain fine-tuning at the same depth {gain:+.2f} points INT8, {gain_fp32:+.2f} FP32 (target >= +1:"
                   f" {'met' if gain >= 1.0 else 'missed'})")  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", type=int, nargs="+", default=[3, 2])
    p.add_argument("--teacher-steps", type=int, default=100)
    p.add_argument("--student-steps", type=int, default=600)
    p.add_argument("--student-lr", type=float, default=4e-4)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--render", action="store_true", help="only rewrite RESULTS.md from benchmarks/distill.json")
    a = p.parse_args()
    if a.render:
        res = json.loads(OUT.read_text())
    else:
        t0 = time.perf_counter()
        res = run(a.depths, a.teacher_steps, a.student_steps, a.student_lr, a.threads)
        res["seconds"] = time.perf_counter() - t0
        OUT.write_text(json.dumps(res, indent=2) + "\n")
    acc = res["models"]["teacher"]["fp32_test"]
    se = 100 * (acc * (1 - acc) / res["test_rows"]) ** 0.5
    body = "\n".join([
        f"`benchmarks/distill.py` ({res['date']}, {res['cpu'].get('model', '?')}, {res['seconds'] / 60:.0f} min):"
        f" config/default.yaml's data and teacher (MiniLM-L6, {res['teacher_steps']} steps with `make run`'s best"
        f" trial values); students cut from it train every layer for {res['student_steps']} steps at learning rate"
        f" {res.get('student_lr', 1.633e-4):.3g}, distilled"
        f" (temperature {res['temperature']:g}, alpha {res['alpha']:g}) or on the labels only. Test split"
        f" {res['test_rows']} rows; INT8 = the default recipe; latencies from one sweep in which the models take"
        f" turns. The teacher's outputs on {res['train_rows']} training rows took {res['teacher_outputs_s']:.0f} s,"
        " once. Raw: benchmarks/distill.json.",
        "",
        table(res),
        "",
        *verdict(res),
        "",
        f"One standard error of a test accuracy near {acc:.2f} on {res['test_rows']} rows is {se:.1f} points:"
        " differences of a point or two between these models are within the noise of one split.",
    ])  # fmt: skip
    replace_section("Distillation", body)
    print(table(res))
    print("\n".join(verdict(res)))


if __name__ == "__main__":
    main()
