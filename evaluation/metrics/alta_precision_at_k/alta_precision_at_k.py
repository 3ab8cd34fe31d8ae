"""ALTA retrieval precision at K: the fraction of a query's top-K hits that share its label, averaged over queries."""

from __future__ import annotations

import datasets
import evaluate


try:
    from evaluation import protocols
except ImportError as err:  # the module runs from evaluate's cache, so the repository must be importable
    raise ImportError(
        "alta_precision_at_k needs the `evaluation` package of the alta repository: install the repository "
        "(`pip install -e .`) or load the metric with `evaluation.metrics.load_metric('alta_precision_at_k')`"
    ) from err


_DESCRIPTION = """Precision at K for retrieval as in the ALTA evaluations (CheXpert 5x200 image-to-text P@5/10/100,
CheXpert 8x200 text-to-image and image-to-image P@5/10/50): relevance means the same label. One example per query:
the labels of its ranked hits (best first, at least max(k) of them, e.g. from `inference.search.exact_topk`) and
the query's label. Labels may be integers or strings."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[int | str]]`): per query, the labels of its ranked hits, best first.
    references (`list[int | str]`): per query, its label.
    k (`int | list[int]`, default `(5, 10)`): the cut-offs; the paper uses (5, 10, 100) for image-to-text and
        (5, 10, 50) for text-to-image and image-to-image.
Returns:
    `p@K` (`float`) for each K.
Examples:
    >>> metric = evaluation.metrics.load_metric("alta_precision_at_k")
    >>> metric.compute(predictions=[[0, 1, 1, 0], [0, 0, 1, 1]], references=[0, 1], k=[1, 2])
    {'p@1': 0.5, 'p@2': 0.25}
"""

_CITATION = """ALTA (ALign Through Adapting), official implementation and evaluation scripts:
https://github.com/DopamineLcy/ALTA (cite the ALTA paper as given there)."""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AltaPrecisionAtK(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # Integer labels (CheXpert column indices, class ids) or class names.
            features=[
                datasets.Features(
                    {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("string")),
                        "references": datasets.Value("string"),
                    }
                ),
            ],
        )

    def _compute(self, predictions, references, k=(5, 10)):
        ks = [k] if isinstance(k, int) else list(k)
        lengths = {len(p) for p in predictions}
        if len(lengths) > 1:
            raise ValueError(f"every query needs the same number of ranked hits; got lengths {sorted(lengths)}")
        return protocols.precision_at_k_from_ranked_labels(list(predictions), list(references), ks)
