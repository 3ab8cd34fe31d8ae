"""ALTA zero-shot accuracy (CheXpert 5x200 protocol): overall and per-class accuracy of predicted class indices."""

from __future__ import annotations

import datasets
import evaluate


try:
    from evaluation import protocols
except ImportError as err:  # the module runs from evaluate's cache, so the repository must be importable
    raise ImportError(
        "alta_zero_shot_accuracy needs the `evaluation` package of the alta repository: install the repository "
        "(`pip install -e .`) or load the metric with `evaluation.metrics.load_metric('alta_zero_shot_accuracy')`"
    ) from err


_DESCRIPTION = """Zero-shot classification accuracy as in the ALTA CheXpert 5x200 evaluation: the prediction is the
argmax over the cosines between the image embedding and each class embedding (the normalised mean of the class's
prompt embeddings). Also reports the accuracy within each class (its recall)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted class indices (argmax of the zero-shot logits).
    references (`list[int]`): true class indices.
    class_names (`list[str]`, optional): names for the per-class keys, indexed by class; default the indices.
Returns:
    accuracy (`float`), per_class_accuracy (`dict[str, float]`, classes present in the references), num_samples.
Examples:
    >>> metric = evaluation.metrics.load_metric("alta_zero_shot_accuracy")
    >>> metric.compute(predictions=[0, 0, 1, 1], references=[0, 1, 1, 1], class_names=["a", "b"])
    {'accuracy': 0.75, 'per_class_accuracy': {'a': 1.0, 'b': 0.6666666666666666}, 'num_samples': 4}
"""

_CITATION = """ALTA (ALign Through Adapting), official implementation and evaluation scripts:
https://github.com/DopamineLcy/ALTA (cite the ALTA paper as given there)."""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AltaZeroShotAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, class_names=None):
        return protocols.zero_shot_accuracy(predictions, references, class_names=class_names)
