"""Each evaluation protocol on tiny hand-made data whose expected values are worked out in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from evaluation.protocols import (
    RSNA_THRESHOLDS,
    binary_classification_metrics,
    confusion_matrix,
    image_to_image_precision,
    image_to_text_precision,
    precision_at_k,
    ranked_indices,
    roc_auc,
    rsna_zero_shot_metrics,
    rsna_zero_shot_scores,
    search_threshold,
    stratified_kfold,
    text_to_image_precision,
    zero_shot_accuracy,
)
from inference.zero_shot import class_embeddings_from_prompts, encode_prompt_ensemble, zero_shot_logits


# --- zero-shot ---------------------------------------------------------------------------------------------------

# Class 0 prompts [6,0] and [0,8]: mean [3,4], norm 5 -> [0.6, 0.8] (normalising each prompt first would give
# [0.5,0.5] -> [0.7071, 0.7071]: the order of mean and normalise matters).
# Class 1 prompts [0,6] twice and [-12,-3]: mean [-12/3, 9/3] = [-4, 3] -> [-0.8, 0.6]; the duplicate counts twice
# (without it the mean would be [-6, 1.5]).
PROMPTS = torch.tensor([[6.0, 0.0], [0.0, 8.0], [0.0, 6.0], [0.0, 6.0], [-12.0, -3.0]], dtype=torch.float64)
PROMPT_CLASS = [0, 0, 1, 1, 1]
CLASSES = torch.tensor([[0.6, 0.8], [-0.8, 0.6]], dtype=torch.float64)


def test_class_embeddings_are_normalised_means_of_unnormalised_prompts():
    assert torch.equal(class_embeddings_from_prompts(PROMPTS, PROMPT_CLASS), CLASSES)


def test_class_embeddings_errors():
    with pytest.raises(ValueError, match=r"classes without: \[1\]"):
        class_embeddings_from_prompts(PROMPTS[:2], [0, 0], num_classes=2)
    with pytest.raises(ValueError, match="same length"):
        class_embeddings_from_prompts(PROMPTS, [0, 1])


def test_encode_prompt_ensemble_batches_and_reduces():
    table = {"a": [6.0, 0.0], "b": [0.0, 8.0], "c": [0.0, 6.0], "d": [-12.0, -3.0]}
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return torch.tensor([table[t] for t in texts], dtype=torch.float64)

    names, emb = encode_prompt_ensemble({"zero": ["a", "b"], "one": ["c", "c", "d"]}, encode, batch_size=2)
    assert names == ["zero", "one"]
    assert torch.equal(emb, CLASSES)
    assert calls == [["a", "b"], ["c", "c"], ["d"]]


def test_zero_shot_logits_accuracy_and_confusion():
    # Images [1,0], [0,2] (normalised to [0,1]), [-1,0], [0,-3] (-> [0,-1]) against the classes above:
    #   [1,0]  : 0.6, -0.8 -> 0      [0,1]  : 0.8, 0.6 -> 0
    #   [-1,0] : -0.6, 0.8 -> 1      [0,-1] : -0.8, -0.6 -> 1
    images = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [0.0, -3.0]], dtype=torch.float64)
    logits = zero_shot_logits(images, CLASSES)
    expected = torch.tensor([[0.6, -0.8], [0.8, 0.6], [-0.6, 0.8], [-0.8, -0.6]], dtype=torch.float64)
    assert torch.equal(logits, expected)
    # References 0,1,1,1: correct, wrong, correct, correct -> 3/4; class 0: 1/1, class 1: 2/3.
    result = zero_shot_accuracy(logits, [0, 1, 1, 1], class_names=["Atelectasis", "Edema"])
    assert result == {"accuracy": 0.75, "per_class_accuracy": {"Atelectasis": 1.0, "Edema": 2 / 3}, "num_samples": 4}
    # Rows true, columns predicted: class 0 -> [1 as 0, 0 as 1]; class 1 -> [1 as 0, 2 as 1].
    assert confusion_matrix(logits, [0, 1, 1, 1]).tolist() == [[1, 0], [1, 2]]
    assert confusion_matrix([0, 0, 1, 1], [0, 1, 1, 1], num_classes=3).tolist() == [[1, 0, 0], [1, 2, 0], [0, 0, 0]]


def test_zero_shot_argmax_first_maximum_and_absent_class():
    # A tie picks the first class (torch.argmax in the reference); class 2 never occurs, so it is not reported.
    result = zero_shot_accuracy(np.array([[0.5, 0.5, 0.1], [0.1, 0.2, 0.3]]), [0, 1], class_names=["a", "b", "c"])
    assert result["accuracy"] == 0.5 and result["per_class_accuracy"] == {"a": 1.0, "b": 0.0}
    with pytest.raises(ValueError, match="same length"):
        zero_shot_accuracy([0, 1], [0])


def test_zero_shot_matches_official_goldens(parity_dir):
    # Beyond the hand-made cases: the official class features and logits of the tiny model (tolerance 1e-5).
    golden = load_file(str(parity_dir / "zeroshot.safetensors"))
    image = load_file(str(parity_dir / "img_feature.safetensors"))["img_feature"]
    names = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural_Effusion"]
    prompts = [golden[f"{n}.prompt_embeddings"] for n in names]
    index = [i for i, p in enumerate(prompts) for _ in range(len(p))]
    classes = class_embeddings_from_prompts(torch.cat(prompts), index)
    torch.testing.assert_close(classes, golden["class_features"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(zero_shot_logits(image, classes), golden["logits"], atol=1e-5, rtol=1e-5)
    scores = rsna_zero_shot_scores(image, golden["rsna.pos_feature"], golden["rsna.neg_feature"])
    np.testing.assert_allclose(scores, golden["rsna.predict_soft"].numpy(), atol=1e-6)


# --- RSNA ----------------------------------------------------------------------------------------------------------


def test_rsna_scores_softmax_at_temperature_one():
    # Image [0,1] is orthogonal to both prompts: softmax([0, 0])[0] = 0.5 exactly.
    # Image [1,0] with pos [2,0], neg [-1,0]: cosines 1 and -1 -> e^1 / (e^1 + e^-1) = 1 / (1 + e^-2) = 0.8807970...
    scores = rsna_zero_shot_scores([[0.0, 1.0], [1.0, 0.0]], [2.0, 0.0], [-1.0, 0.0])
    assert scores.dtype == np.float32
    assert scores[0] == 0.5
    assert abs(float(scores[1]) - 1 / (1 + math.exp(-2))) < 1e-7  # float32 rounding only


def test_roc_auc_by_hand():
    # Positives 0.35 and 0.8 against negatives 0.1 and 0.4: 0.35 beats 0.1 only, 0.8 beats both -> 3 of 4 pairs.
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    # Ties count one half: positive 0.5 ties negative 0.5 (0.5) and beats 0.2 (1); positive 0.9 beats both (2).
    # (0.5 + 1 + 2) / 4 = 0.875
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == 0.875
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 1], [0.2, 0.3])


def test_roc_auc_equals_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200), 2)  # rounding makes ties
    assert roc_auc(y, s) == pytest.approx(sklearn_metrics.roc_auc_score(y, s), abs=1e-12)


def test_threshold_search_f1_quirk_versus_accuracy():
    # Labels 1,0,0,1 with scores 0.202, 0.402, 0.602, 0.802 (off the 0.005 grid, so no score equals a threshold).
    #   t < 0.202        : all positive     tp2 fp2          F1 = 2*.5*1/1.5 = 2/3   acc 2/4
    #   0.202 <= t < .402 : {.402,.602,.802} tp1 fp2 fn1      F1 = 0.4               acc 1/4
    #   0.402 <= t < .602 : {.602,.802}      tp1 fp1 fn1 tn1  F1 = 0.5               acc 2/4
    #   0.602 <= t < .802 : {.802}           tp1 fn1 tn2      F1 = 2/3               acc 3/4
    #   t >= 0.802        : none             F1 undefined (NaN, never chosen)          acc 2/4
    # F1 ties at 2/3: the first maximum wins, t = 0. Accuracy: first grid value >= 0.602, i.e. 0.605 (index 121).
    labels, scores = [1, 0, 0, 1], [0.202, 0.402, 0.602, 0.802]
    assert search_threshold(labels, scores) == (0.0, 2 / 3)
    threshold, acc = search_threshold(labels, scores, select_by="accuracy")
    assert threshold == RSNA_THRESHOLDS[121] and abs(threshold - 0.605) < 1e-12 and acc == 0.75
    assert len(RSNA_THRESHOLDS) == 201 and RSNA_THRESHOLDS[0] == 0.0 and RSNA_THRESHOLDS[-1] == 1.0
    # Prediction is strictly "score > threshold": at t = 0.402 the 0.402 sample is negative.
    m = binary_classification_metrics(labels, scores, 0.402)
    assert m == {"accuracy": 0.5, "f1": 0.5, "recall": 0.5, "precision": 0.5, "npv": 0.5}
    assert math.isnan(binary_classification_metrics(labels, scores, 0.9)["f1"])
    with pytest.raises(ValueError, match="select_by"):
        search_threshold(labels, scores, select_by="auroc")


def test_rsna_ten_fold_protocol_by_hand():
    # 10 positives at 0.702; negatives: 5 at 0.302 and 5 at 0.802. Ten stratified folds of 20 samples hold exactly
    # one positive and one negative each, so every negative is held out once.
    # Training folds (9 pos, 9 neg of which 4 or 5 are at 0.802):
    #   t < .302: F1 2/3 (tp9 fp9); .302 <= t < .702: F1 18/22 or 18/23 (tp9, fp = #0.802); t >= .702: tp0 -> NaN.
    #   Accuracy peaks on the same interval. Either way the threshold is 0.305 (first grid value >= 0.302).
    # Held out: the positive is always right; the negative at 0.302 is right (acc 1, F1 1), at 0.802 wrong
    # (acc 1/2, precision 1/2, recall 1, F1 2/3). Means over 10 folds: acc (5*1 + 5*.5)/10 = 0.75,
    # F1 (5*1 + 5*2/3)/10 = 5/6. AUROC: 0.702 beats the five 0.302 and loses to the five 0.802 -> 0.5.
    labels = np.array([1] * 10 + [0] * 10)
    scores = np.array([0.702] * 10 + [0.302] * 5 + [0.802] * 5)
    for select_by in ("f1", "accuracy"):
        result = rsna_zero_shot_metrics(labels, scores, select_by=select_by)
        assert result["auroc"] == 0.5
        assert result["fold_thresholds"] == [RSNA_THRESHOLDS[61]] * 10
        assert result["accuracy"] == 0.75
        assert abs(result["f1"] - 5 / 6) < 1e-12
        assert sorted(result["fold_accuracy"]) == [0.5] * 5 + [1.0] * 5


def test_rsna_perfect_separation():
    # Negatives at 0.302, positives at 0.702: every training fold picks 0.305 and every held-out fold is perfect.
    labels = np.array([0, 1] * 10)
    scores = np.where(labels == 1, 0.702, 0.302)
    result = rsna_zero_shot_metrics(labels, scores, fold_backend="numpy")
    assert (result["auroc"], result["accuracy"], result["f1"]) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_folds_equal_sklearn(seed):
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2 + seed, 137)  # binary and multiclass, uneven class sizes
    for random_state in (0, 7):
        ref = stratified_kfold(labels, 10, True, random_state, backend="sklearn")
        ours = stratified_kfold(labels, 10, True, random_state, backend="numpy")
        assert len(ref) == len(ours) == 10
        for (tr_a, te_a), (tr_b, te_b) in zip(ref, ours):
            assert np.array_equal(tr_a, tr_b) and np.array_equal(te_a, te_b)


def test_folds_partition_and_stratify():
    labels = np.array([0] * 30 + [1] * 20)
    folds = stratified_kfold(labels, 10, backend="numpy")
    test_all = np.sort(np.concatenate([te for _, te in folds]))
    assert np.array_equal(test_all, np.arange(50))
    assert all(labels[te].sum() == 2 and len(te) == 5 for _, te in folds)
    with pytest.raises(ValueError, match="n_splits"):
        stratified_kfold([0, 1, 0, 1], 10)


# --- retrieval ---------------------------------------------------------------------------------------------------


def test_precision_at_k_by_hand_with_ties():
    # Gallery labels 0,0,1,1,0.
    # Query A (label 0), similarities .9 .1 .8 .5 .5: ranking 0, 2, 3, 4, 1 (3 before 4: equal scores, lower index
    #   first), labels 0,1,1,0,0 -> P@1 1, P@2 1/2, P@3 1/3, P@4 2/4.
    # Query B (label 1), all similarities 0: ranking 0..4, labels 0,0,1,1,0 -> P@1 0, P@2 0, P@3 1/3, P@4 2/4.
    # Means: P@1 1/2, P@2 1/4, P@3 1/3, P@4 1/2.
    sim = [[0.9, 0.1, 0.8, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0]]
    assert ranked_indices(sim, 5).tolist() == [[0, 2, 3, 4, 1], [0, 1, 2, 3, 4]]
    result = precision_at_k(sim, [0, 1], [0, 0, 1, 1, 0], ks=(1, 2, 3, 4))
    assert result == {"p@1": 0.5, "p@2": 0.25, "p@3": 1 / 3, "p@4": 0.5}
    with pytest.raises(ValueError, match="gallery size"):
        precision_at_k(sim, [0, 1], [0, 0, 1, 1, 0], ks=(6,))


def test_image_to_text_precision_by_hand():
    # Images [1,0] (A) and [0,1] (B); reports [2,0] A, [1,1] A, [0,3] B, [-1,0] B.
    # Image A cosines 1, .707, 0, -1 -> ranking A A B B: P@1 1, P@2 1.
    # Image B cosines 0, .707, 1, 0 -> ranking 2 (B), 1 (A), 0 (A; ties with 3, lower index first), 3: P@1 1, P@2 1/2.
    images = [[1.0, 0.0], [0.0, 1.0]]
    reports = [[2.0, 0.0], [1.0, 1.0], [0.0, 3.0], [-1.0, 0.0]]
    result = image_to_text_precision(images, reports, ["A", "B"], ["A", "A", "B", "B"], ks=(1, 2))
    assert result == {"p@1": 1.0, "p@2": 0.75}


def test_text_to_image_and_image_to_image_precision_by_hand():
    # Gallery images: [1,0] label 8, [0.8,0.6] label 8, [0,1] label 2, [-1,0] label 2.
    # Text query [3,0] (label 8): cosines 1, .8, 0, -1 -> 8, 8, 2, 2: P@1 1, P@2 1, P@3 2/3.
    # Text query [0,-1] (label 2): cosines 0, -.6, -1, 0 -> ranking 0 (tie with 3), 3, 1, 2 -> 8, 2, 8, 2:
    #   P@1 0, P@2 1/2, P@3 1/3. Means: P@1 1/2, P@2 3/4, P@3 1/2.
    gallery = [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]]
    gallery_labels = [8, 8, 2, 2]
    result = text_to_image_precision([[3.0, 0.0], [0.0, -1.0]], gallery, [8, 2], gallery_labels, ks=(1, 2, 3))
    assert result == {"p@1": 0.5, "p@2": 0.75, "p@3": 0.5}
    # Image query [0,2] (label 2): cosines 0, .6, 1, 0 -> 2, 1, 0, 3 -> labels 2, 8, 8, 2: P@1 1, P@2 1/2.
    assert image_to_image_precision([[0.0, 2.0]], gallery, [2], gallery_labels, ks=(1, 2)) == {"p@1": 1.0, "p@2": 0.5}
    with pytest.raises(ValueError, match="k=.*|gallery size"):
        image_to_image_precision([[0.0, 2.0]], gallery, [2], gallery_labels)  # default K up to 50 > 4 candidates


def test_auto_backend_falls_back_to_numpy_without_sklearn(monkeypatch):
    import sys

    labels = np.array([0, 1] * 15)
    expected = stratified_kfold(labels, 10, backend="numpy")
    monkeypatch.setitem(sys.modules, "sklearn.model_selection", None)  # makes the import fail
    with pytest.raises(ImportError):
        stratified_kfold(labels, 10, backend="sklearn")
    folds = stratified_kfold(labels, 10)  # auto
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, expected))
