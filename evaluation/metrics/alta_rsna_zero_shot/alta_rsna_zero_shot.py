"""ALTA RSNA pneumonia zero-shot: AUROC, and accuracy/F1 from the reference's 10-fold threshold search."""

from __future__ import annotations

import datasets
import evaluate


try:
    from evaluation import protocols
except ImportError as err:  # the module runs from evaluate's cache, so the repository must be importable
    raise ImportError(
        "alta_rsna_zero_shot needs the `evaluation` package of the alta repository: install the repository "
        "(`pip install -e .`) or load the metric with `evaluation.metrics.load_metric('alta_rsna_zero_shot')`"
    ) from err


_DESCRIPTION = """The ALTA RSNA pneumonia zero-shot protocol. Scores are softmax([cos_pos, cos_neg])[0] at
temperature 1 for the prompts "There is pneumonia" / "There is no pneumonia". AUROC is over all scores. Accuracy and
F1 are the means over 10 stratified folds (scikit-learn's StratifiedKFold, shuffle, random_state 0) of the
held-out fold scored with `score > threshold`, the threshold taken from {0, 0.005, ..., 1} on the other nine folds
(first maximum). The reference chooses that threshold by F1 (`select_by="f1"`, the default); `select_by="accuracy"`
chooses it by accuracy instead."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[float]`): the positive-class scores.
    references (`list[int]`): 1 = pneumonia, 0 = none.
    select_by (`str`, default "f1"): "f1" (the reference) or "accuracy".
    n_splits (`int`, default 10), random_state (`int`, default 0): the folds.
Returns:
    auroc, accuracy, f1 (`float`), fold_thresholds, fold_accuracy, fold_f1 (`list[float]`), select_by.
"""

_CITATION = """ALTA (ALign Through Adapting), official implementation and evaluation scripts:
https://github.com/DopamineLcy/ALTA (cite the ALTA paper as given there)."""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AltaRsnaZeroShot(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # float64 keeps the scores exactly as given (the threshold grid is compared in float64).
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, select_by="f1", n_splits=10, random_state=0):
        return protocols.rsna_zero_shot_metrics(
            references, predictions, select_by=select_by, n_splits=n_splits, random_state=random_state
        )
