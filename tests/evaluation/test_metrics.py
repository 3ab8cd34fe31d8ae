"""The local `evaluate` metric modules load offline by path and give the protocol functions' numbers."""

from __future__ import annotations

import evaluate
import numpy as np
import pytest

from evaluation import protocols
from evaluation.metrics import METRIC_NAMES, load_metric, metric_path


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_loads_by_path_with_evaluate(name):
    metric = evaluate.load(str(metric_path(name)))
    assert isinstance(metric, evaluate.Metric)
    assert metric.name == name
    assert "predictions" in str(metric.features)


def test_unknown_metric_name():
    with pytest.raises(ValueError, match="unknown ALTA metric 'accuracy'"):
        metric_path("accuracy")


def test_zero_shot_accuracy_batches():
    # Same case as test_protocols: references 0,1,1,1, predictions 0,0,1,1 -> 3/4; class a 1/1, class b 2/3.
    metric = load_metric("alta_zero_shot_accuracy")
    metric.add_batch(predictions=[0, 0], references=[0, 1])
    metric.add_batch(predictions=[1, 1], references=[1, 1])
    result = metric.compute(class_names=["a", "b"])
    assert result == {"accuracy": 0.75, "per_class_accuracy": {"a": 1.0, "b": 2 / 3}, "num_samples": 4}


def test_precision_at_k_batches_int_and_string_labels():
    # Ranked hit labels from test_protocols' P@K case: query 0 -> 0,1,1,0; query 1 -> 0,0,1,1.
    # P@1 (1 + 0)/2 = 1/2; P@2 (1/2 + 0)/2 = 1/4; P@4 (2/4 + 2/4)/2 = 1/2.
    metric = load_metric("alta_precision_at_k")
    metric.add_batch(predictions=[[0, 1, 1, 0]], references=[0])
    metric.add(predictions=[0, 0, 1, 1], references=1)
    assert metric.compute(k=[1, 2, 4]) == {"p@1": 0.5, "p@2": 0.25, "p@4": 0.5}

    metric = load_metric("alta_precision_at_k")
    metric.add_batch(predictions=[["Edema", "Edema", "Atelectasis"]], references=["Edema"])
    assert metric.compute(k=3) == {"p@3": 2 / 3}

    metric = load_metric("alta_precision_at_k")
    metric.add_batch(predictions=[[0, 1]], references=[0])
    with pytest.raises(ValueError, match="k=5"):
        metric.compute()  # default k=(5, 10) needs 10 hits per query


def test_rsna_metric_equals_protocol_and_switch():
    # The hand-made 10-fold case of test_protocols: AUROC 0.5, ACC 0.75, F1 5/6, threshold 0.305 in every fold.
    labels = [1] * 10 + [0] * 10
    scores = [0.702] * 10 + [0.302] * 5 + [0.802] * 5
    metric = load_metric("alta_rsna_zero_shot")
    for i in range(0, 20, 7):
        metric.add_batch(predictions=scores[i : i + 7], references=labels[i : i + 7])
    result = metric.compute()
    assert result["auroc"] == 0.5 and result["accuracy"] == 0.75 and abs(result["f1"] - 5 / 6) < 1e-12
    assert result["fold_thresholds"] == [protocols.RSNA_THRESHOLDS[61]] * 10 and result["select_by"] == "f1"

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    s = np.clip(0.5 + 0.02 * (y - 0.5) + 0.02 * rng.standard_normal(120), 0, 1)
    for select_by in ("f1", "accuracy"):
        metric = load_metric("alta_rsna_zero_shot")
        got = metric.compute(predictions=s.tolist(), references=y.tolist(), select_by=select_by)
        assert got == protocols.rsna_zero_shot_metrics(y, s, select_by=select_by)
