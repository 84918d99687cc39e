"""Students cut from a trained model of every family: evenly spaced layers ending with the top
one, the teacher's own weights for them, its embeddings, head and tokenizer, reloading exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.families import FAMILIES, build_family
from tests.tiny import rt_texts
from trainflow.core.errors import ModelLoadError
from trainflow.training.families import anatomy
from trainflow.training.student import kept_layers, make_student

CORPUS = rt_texts(300)


def test_kept_layers_are_evenly_spaced_and_end_with_the_top_one() -> None:
    assert kept_layers(6, 3) == [1, 3, 5]
    assert kept_layers(6, 2) == [2, 5]
    assert kept_layers(12, 4) == [2, 5, 8, 11]
    assert kept_layers(2, 1) == [1]
    for teacher in range(2, 25):
        for student in range(1, teacher):
            kept = kept_layers(teacher, student)
            assert len(set(kept)) == student and kept == sorted(kept) and kept[-1] == teacher - 1
    assert kept_layers(6, 3, keep_first=True) == [0, 3, 5] and kept_layers(4, 2, keep_first=True) == [0, 3]
    for bad in (0, 6, 7):
        with pytest.raises(ValueError, match="between 1 and 5 layers of a 6-layer model"):
            kept_layers(6, bad)
    with pytest.raises(ValueError, match="between 2 and 5 layers"):
        kept_layers(6, 1, keep_first=True)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_gives_a_student_with_the_teachers_own_weights(name: str, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    teacher_dir = build_family(name, tmp_path / "teacher", CORPUS, shape="tiny4")
    (teacher_dir / "head.json").write_text("{}")
    student = make_student(teacher_dir, 2, tmp_path / "student")
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    cut = AutoModelForSequenceClassification.from_pretrained(student.path)
    t_parts, s_parts = anatomy(teacher), anatomy(cut)
    assert (student.teacher_layers, student.layers, s_parts.n_layers) == (4, 2, 2)
    assert cut.config.num_hidden_layers == 2
    if t_parts.layers is None:  # ALBERT: one shared set of weights, run twice instead of four times
        assert student.kept == (0, 0) and student.params == student.teacher_params
    else:
        assert student.kept == ((0, 3) if name == "modernbert" else (1, 3))
        assert student.params < student.teacher_params
        for s_layer, t_index in zip(s_parts.layers or [], student.kept):
            t_layer = t_parts.layers[t_index]
            for (sn, sp), (tn, tp) in zip(s_layer.state_dict().items(), t_layer.state_dict().items()):
                assert sn == tn and torch.equal(sp, tp), f"layer {t_index}: {sn}"
    t_named, s_named = dict(teacher.named_parameters()), dict(cut.named_parameters())
    for n in t_parts.head_names:
        assert torch.equal(t_named[n], s_named[n]), f"head {n}"
    t_emb = [p for m in t_parts.embeddings for p in m.parameters()]
    s_emb = [p for m in s_parts.embeddings for p in m.parameters()]
    assert len(t_emb) == len(s_emb) and all(torch.equal(a, b) for a, b in zip(t_emb, s_emb))
    assert (student.path / "tokenizer.json").is_file() and (student.path / "head.json").is_file()
    _learns_from_its_teacher(teacher, cut, list(student.teacher_layer_of))


def _learns_from_its_teacher(teacher, cut, teacher_layer_of: list[int]) -> None:  # noqa: ANN001
    """One distillation step (soft targets and the hidden-state loss) on the student: a finite loss
    whose gradient reaches the student's layers."""
    from trainflow.training.distill import DistillObjective
    from trainflow.training.modeling import TextModel
    from trainflow.training.teacher import mean_pool

    for m in (teacher, cut):  # a decoder pads with its end-of-text token (as build_model sets it)
        if m.config.pad_token_id is None:
            m.config.pad_token_id = m.config.eos_token_id or 0
    ids = torch.arange(5, 13).reshape(1, 8).repeat(2, 1) % int(cut.config.vocab_size)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        out = teacher.eval()(**batch, output_hidden_states=True)
        pooled = mean_pool(torch.stack(out.hidden_states, dim=1), batch["attention_mask"])
    objective = DistillObjective(labels=[0, 1], teacher_logits=out.logits, teacher_cutpoints=None, temperature=2.0,
                                 alpha=0.5, hidden_weight=1.0, teacher_hidden=pooled,
                                 teacher_layer_of=teacher_layer_of, device=torch.device("cpu"))  # fmt: skip
    model = TextModel(task="classification", labels=["a", "b"], hf=cut.train(), cutpoints=None)
    loss = objective.loss(model, objective.forward(model, batch), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    layers = anatomy(cut).layers  # ALBERT: its shared layer group, found by its parameters' names
    params = list(layers[0].parameters()) if layers else [p for n, p in cut.named_parameters() if "layer" in n]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_a_student_as_deep_as_its_teacher_is_refused_in_one_line(tmp_path: Path) -> None:
    teacher_dir = build_family("bert", tmp_path / "teacher", CORPUS)
    with pytest.raises(ModelLoadError, match="bert student: a student needs between 1 and 1 layers of a 2-layer model"):
        make_student(teacher_dir, 2, tmp_path / "student")
    assert not (tmp_path / "student").exists()


def test_a_student_that_does_not_reload_to_the_cut_model_is_refused(tmp_path: Path, monkeypatch) -> None:
    # ModernBERT builds its first layer without an attention LayerNorm; cut without keeping it,
    # the saved student reloads to another model, and the check says so.
    import trainflow.training.student as student

    monkeypatch.setattr(student, "KEEP_FIRST", set())
    teacher_dir = build_family("modernbert", tmp_path / "teacher", CORPUS, shape="tiny4")
    with pytest.raises(
        ModelLoadError, match="modernbert student of 2 layers: the saved model does not reload.*attn_norm"
    ):
        student.make_student(teacher_dir, 2, tmp_path / "student")
