"""What every benchmark shares: embedding with unreadable images skipped and counted, progress bars, metrics through
the local `evaluate` modules, figures (a failing figure never loses the numbers), the results JSON (written
atomically, first as soon as the metrics exist, again with the figures)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.metrics import load_metric
from inference.embedding import embed_images, embed_texts, load_model_and_processor, pixel_inputs
from inference.heatmaps import model_view, word_patch_similarity
from inference.search import exact_topk
from processing.atomic import atomic_write_text


logger = logging.getLogger(__name__)

#: Skipped images listed one by one in the results JSON (all are counted).
MAX_LISTED_SKIPS = 100


def embed_readable_images(
    model: Any,
    processor: Any,
    items: Sequence[Any],
    wheres: Sequence[str],
    batch_size: int = 32,
    dicom_rule: str | None = None,
    desc: str = "images",
    source: str = "",
) -> tuple[torch.Tensor, list[int], list[dict[str, str]]]:
    """Embed images (single-frontal path) batch by batch with a progress bar, leaving out those that cannot be read.

    A batch that fails is retried image by image, so one bad file costs its own place only; each skipped image is
    recorded with where it was listed (file and row), its path and the error. Errors that are not about reading an
    image (the model itself failing) still raise.

    Args:
        items: N image paths (or images); `wheres`: N descriptions such as `"test.csv data row 80"`.
        desc: the progress bar's label; `source` is named when no image at all can be read (e.g. the data root).

    Returns:
        `(embeddings [K, P] of the readable images in order, their indices in items, skipped entries)`.

    Raises:
        ValueError: none of the images can be read (the message shows the first failures).
    """
    from tqdm.auto import tqdm

    if len(items) != len(wheres):
        raise ValueError(f"got {len(items)} images but {len(wheres)} row descriptions")
    chunks: list[torch.Tensor] = []
    kept: list[int] = []
    skipped: list[dict[str, str]] = []
    with tqdm(total=len(items), desc=desc, unit="image") as bar:
        for start in range(0, len(items), batch_size):
            batch = list(items[start : start + batch_size])
            try:
                chunks.append(embed_images(model, processor, batch, batch_size, dicom_rule=dicom_rule))
                kept.extend(range(start, start + len(batch)))
            except (ValueError, OSError):
                readable = []
                for offset, item in enumerate(batch):
                    try:
                        pixel_inputs(processor, [item], dicom_rule)
                    except (ValueError, OSError) as err:
                        entry = {
                            "where": wheres[start + offset],
                            "file": str(item),
                            "error": f"{type(err).__name__}: {err}",
                        }
                        skipped.append(entry)
                        if len(skipped) <= 10:
                            logger.warning(
                                "skipping unreadable image: %s: %s: %s", entry["where"], entry["file"], entry["error"]
                            )
                    else:
                        readable.append(start + offset)
                if readable:
                    chunks.append(
                        embed_images(model, processor, [items[i] for i in readable], batch_size, dicom_rule=dicom_rule)
                    )
                    kept.extend(readable)
            bar.update(len(batch))
    if skipped:
        logger.warning(
            "%s: skipped %d of %d images that could not be read (listed in the results)",
            desc,
            len(skipped),
            len(items),
        )
    if not kept:
        shown = "; ".join(f"{e['where']}: {e['file']}: {e['error']}" for e in skipped[:3])
        raise ValueError(f"no readable image among the {len(items)} {desc}{f' ({source})' if source else ''}: {shown}")
    return torch.cat(chunks), kept, skipped


def embed_texts_with_progress(
    model: Any, processor: Any, texts: Sequence[str], batch_size: int = 64, desc: str = "texts", **kwargs: Any
) -> torch.Tensor:
    """`embed_texts` batch by batch with a progress bar (the same batches, so the same numbers)."""
    from tqdm.auto import tqdm

    chunks = []
    with tqdm(total=len(texts), desc=desc, unit="text", disable=len(texts) <= batch_size) as bar:
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            chunks.append(embed_texts(model, processor, batch, batch_size, **kwargs))
            bar.update(len(batch))
    return torch.cat(chunks)


def skip_report(*groups: list[dict[str, str]]) -> dict[str, Any]:
    """The results-JSON entries for skipped images: their count and the first `MAX_LISTED_SKIPS`."""
    skipped = [entry for group in groups for entry in group]
    return {"num_skipped": len(skipped), "skipped_images": skipped[:MAX_LISTED_SKIPS]}


def select(values: Sequence[Any], indices: Sequence[int]) -> list[Any]:
    return [values[i] for i in indices]


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
        self.errors: dict[str, str] = {}
        self.enabled = enabled and output_dir is not None
        if self.enabled:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                logger.warning("matplotlib is not installed: no PNGs (install the `eval` extra)")
                self.enabled = False

    def path(self, name: str) -> Path:
        return self.output_dir / f"{self.prefix}_{name}.png"

    @contextlib.contextmanager
    def _guard(self, name: str) -> Iterator[None]:
        """A figure that fails is reported (log and results), never the end of an evaluation."""
        try:
            yield
        except Exception as err:
            self.errors[name] = f"{type(err).__name__}: {err}"
            logger.warning("%s: the %s figure failed: %s", self.prefix, name, self.errors[name])

    def confusion(self, predictions, references, class_names) -> None:
        if not self.enabled:
            return
        with self._guard("confusion_matrix"):
            self._confusion(predictions, references, class_names)

    def _confusion(self, predictions, references, class_names) -> None:
        from evaluation.plots import plot_confusion_matrix
        from evaluation.protocols import confusion_matrix

        matrix = confusion_matrix(predictions, references, num_classes=len(class_names))
        self.written["confusion_matrix"] = str(
            plot_confusion_matrix(matrix, list(class_names), self.path("confusion_matrix"), normalize=True)
        )

    def retrieval(self, processor, queries, gallery, query_labels, gallery_labels, top, names, title, rows=5, hits=5):
        if not self.enabled:
            return
        with self._guard("retrieval"):
            self._retrieval(processor, queries, gallery, query_labels, gallery_labels, top, names, title, rows, hits)

    def _retrieval(self, processor, queries, gallery, query_labels, gallery_labels, top, names, title, rows, hits):
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
        with self._guard("heatmap"):
            self._heatmap(model, processor, image, phrase, dicom_rule)

    def _heatmap(self, model, processor, image, phrase: str, dicom_rule: str | None = None) -> None:
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


def write_results(result: dict[str, Any], output_dir: Path | None, task: str) -> dict[str, Any]:
    """Write `<task>_results.json` atomically (a crash never leaves a truncated file); call it as soon as the
    metrics exist and again once the figures are drawn."""
    if output_dir is not None:
        path = output_dir / f"{task}_results.json"
        result["results_file"] = str(path)
        atomic_write_text(path, json.dumps(result, indent=2, default=str))
    return result


def finish_task(
    result: dict[str, Any],
    output_dir: Path | None,
    task: str,
    figures: Figures,
    embeddings: dict[str, torch.Tensor] | None = None,
    draw: Any = None,
) -> dict[str, Any]:
    """The end of every task: the embeddings file (when `embeddings` is given), the results JSON, then the figures
    (`draw()`), then the results JSON again with the figures' paths (and `figure_errors` if one failed). Numbers that
    took an hour to compute are on disk before any figure is drawn. Returns `result` with `embeddings_file`,
    `figures` and `results_file` added."""
    if embeddings is not None:
        result["embeddings_file"] = write_embeddings(output_dir, task, embeddings)
    write_results(result, output_dir, task)
    if draw is not None:
        draw()
    result["figures"] = figures.written
    if figures.errors:
        result["figure_errors"] = figures.errors
    return write_results(result, output_dir, task)


def prepare(model: Any, processor: Any, output_dir: str | os.PathLike | None) -> tuple[Any, Any, Path | None]:
    model, processor = load_model_and_processor(model, processor)
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    return model, processor, out


def model_name(model: Any) -> str:
    return str(getattr(model, "name_or_path", "") or type(model).__name__)


__all__ = [
    "MAX_LISTED_SKIPS",
    "embed_readable_images",
    "embed_texts_with_progress",
    "select",
    "skip_report",
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
