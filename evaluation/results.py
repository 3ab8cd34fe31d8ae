"""What every benchmark writes: metrics through the local `evaluate` modules, figures, the results JSON."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.metrics import load_metric
from inference.embedding import load_model_and_processor
from inference.heatmaps import model_view, word_patch_similarity
from inference.search import exact_topk


logger = logging.getLogger(__name__)


def usable_ks(ks: Sequence[int], gallery_size: int, task: str) -> list[int]:
    """The cut-offs a gallery of this size supports (small test sets cannot have P@100); dropped ones are logged."""
    usable = [k for k in ks if k <= gallery_size]
    if len(usable) < len(ks):
        logger.warning(
            "%s: gallery of %d items; skipping P@K for K in %s",
            task,
            gallery_size,
            [k for k in ks if k > gallery_size],
        )
    return usable or [gallery_size]


def precision_at_k_metric(
    query_embeds: torch.Tensor,
    gallery_embeds: torch.Tensor,
    query_labels: Sequence[int],
    gallery_labels: Sequence[int],
    ks: Sequence[int],
) -> tuple[dict[str, float], Any]:
    """P@K through the `alta_precision_at_k` module, on the exact chunked top-k (ties to the lower index).

    Returns:
        `({"p@K": ...}, TopKResult)`.
    """
    top = exact_topk(query_embeds, gallery_embeds, max(ks))
    ranked = np.asarray(gallery_labels)[top.indices.numpy()]
    scores = load_metric("alta_precision_at_k").compute(
        predictions=ranked.tolist(), references=[int(x) for x in query_labels], k=list(ks)
    )
    return {k: float(v) for k, v in scores.items()}, top


def zero_shot_accuracy_metric(predictions: Sequence[int], references: Sequence[int], class_names: Sequence[str]):
    """Accuracy and per-class accuracy through the `alta_zero_shot_accuracy` module."""
    return load_metric("alta_zero_shot_accuracy").compute(
        predictions=[int(p) for p in predictions],
        references=[int(r) for r in references],
        class_names=list(class_names),
    )


def _thumbnail(processor: Any, item: Any, size: int = 256, dicom_rule: str | None = None) -> Any:
    if isinstance(item, str):
        return item  # a report text (image paths are `Path` objects or decoded images here)
    image_processor = getattr(processor, "image_processor", processor)
    image = image_processor.load(item, dicom_rule).convert("L")
    image.thumbnail((size, size))
    return image


def _example_rows(labels: Sequence[int], max_rows: int) -> list[int]:
    """The first query of each label, in label order of first appearance, at most `max_rows`."""
    seen: dict[int, int] = {}
    for i, label in enumerate(labels):
        seen.setdefault(int(label), i)
    return list(seen.values())[:max_rows]


class Figures:
    """Writes the PNGs of one task (or nothing, without an output folder or matplotlib)."""

    def __init__(self, output_dir: Path | None, prefix: str, enabled: bool = True) -> None:
        self.output_dir, self.prefix, self.written = output_dir, prefix, {}
        self.enabled = enabled and output_dir is not None
        if self.enabled:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                logger.warning("matplotlib is not installed: no PNGs (install the `eval` extra)")
                self.enabled = False

    def path(self, name: str) -> Path:
        return self.output_dir / f"{self.prefix}_{name}.png"

    def confusion(self, predictions, references, class_names) -> None:
        if not self.enabled:
            return
        from evaluation.plots import plot_confusion_matrix
        from evaluation.protocols import confusion_matrix

        matrix = confusion_matrix(predictions, references, num_classes=len(class_names))
        self.written["confusion_matrix"] = str(
            plot_confusion_matrix(matrix, list(class_names), self.path("confusion_matrix"), normalize=True)
        )

    def retrieval(self, processor, queries, gallery, query_labels, gallery_labels, top, names, title, rows=5, hits=5):
        if not self.enabled:
            return
        from evaluation.plots import plot_retrieval_examples

        chosen = _example_rows(query_labels, rows)
        n_hits = min(hits, top.indices.shape[1])
        sheet_queries, sheet_hits, sheet_scores, relevant, captions = [], [], [], [], []
        for q in chosen:
            idx = top.indices[q, :n_hits].tolist()
            sheet_queries.append(_thumbnail(processor, queries[q]))
            sheet_hits.append([_thumbnail(processor, gallery[j]) for j in idx])
            sheet_scores.append(top.scores[q, :n_hits].tolist())
            relevant.append([gallery_labels[j] == query_labels[q] for j in idx])
            captions.append(names.get(int(query_labels[q]), str(query_labels[q])))
        self.written["retrieval"] = str(
            plot_retrieval_examples(
                sheet_queries, sheet_hits, sheet_scores, self.path("retrieval"), relevant, captions, title
            )
        )

    def heatmap(self, model, processor, image, phrase: str, dicom_rule: str | None = None) -> None:
        if not self.enabled:
            return
        from evaluation.plots import plot_similarity_heatmap

        sim = word_patch_similarity(model, processor, image, phrase, dicom_rule=dicom_rule)
        view = model_view(processor, image, dicom_rule)
        self.written["heatmap"] = str(plot_similarity_heatmap(view, sim, self.path("heatmap"), phrase=phrase))


def write_embeddings(output_dir: Path | None, task: str, tensors: dict[str, torch.Tensor]) -> str | None:
    if output_dir is None:
        return None
    from safetensors.torch import save_file

    path = output_dir / f"{task}_embeddings.safetensors"
    save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, str(path))
    return str(path)


def finish_task(
    result: dict[str, Any],
    output_dir: Path | None,
    task: str,
    figures: Figures,
    embeddings: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The end of every task: the embeddings file (when `embeddings` is given), the figures' paths, and the results
    JSON; returns `result` with `embeddings_file`, `figures` and `results_file` added."""
    if embeddings is not None:
        result["embeddings_file"] = write_embeddings(output_dir, task, embeddings)
    result["figures"] = figures.written
    return write_results(result, output_dir, task)


def write_results(result: dict[str, Any], output_dir: Path | None, task: str) -> dict[str, Any]:
    if output_dir is not None:
        path = output_dir / f"{task}_results.json"
        path.write_text(json.dumps(result, indent=2, default=str))
        result["results_file"] = str(path)
    return result


def prepare(model: Any, processor: Any, output_dir: str | os.PathLike | None) -> tuple[Any, Any, Path | None]:
    model, processor = load_model_and_processor(model, processor)
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    return model, processor, out


def model_name(model: Any) -> str:
    return str(getattr(model, "name_or_path", "") or type(model).__name__)


__all__ = [
    "Figures",
    "finish_task",
    "model_name",
    "precision_at_k_metric",
    "prepare",
    "write_embeddings",
    "usable_ks",
    "write_results",
    "zero_shot_accuracy_metric",
]
