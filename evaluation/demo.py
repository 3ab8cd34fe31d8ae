"""The demo benchmark (`demo`): zero-shot accuracy over the demo classes and image/report retrieval P@5 on a
held-out split of the built-in synthetic studies (`processing.demo_data`)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from inference.embedding import default_text_length
from modeling_alta.configuration_alta import STUDY_SLOTS

from .readers import input_columns
from .registry import InputFile, Protocol
from .results import (
    Figures,
    embed_readable_images,
    embed_texts_with_progress,
    finish_task,
    model_name,
    precision_at_k_metric,
    prepare,
    select,
    skip_report,
    zero_shot_accuracy_metric,
)


def _demo_split(dataset_split: Any, split: str = "test") -> Any:
    if isinstance(dataset_split, str | os.PathLike):
        import datasets

        loaded = datasets.load_from_disk(str(dataset_split))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{dataset_split}: no split {split!r}; has {list(loaded)}")
            loaded = loaded[split]
        dataset_split = loaded
    columns = getattr(dataset_split, "column_names", None)
    if columns is None:
        raise TypeError(f"expected a datasets.Dataset (or a save_to_disk folder); got {type(dataset_split).__name__}")
    missing = [c for c in input_columns("demo", "--dataset") if c not in columns]
    if missing:
        raise ValueError(f"the demo split lacks column(s) {missing}; it has {columns}")
    return dataset_split


def evaluate_demo(
    model_dir_or_model: Any,
    dataset_split: Any,
    output_dir: str | os.PathLike | None = None,
    frontal_only: bool = False,
    processor: Any = None,
    batch_size: int = 32,
    class_prompts: dict[str, list[str]] | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Zero-shot accuracy on the demo classes and image/report retrieval P@5 on a held-out demo split.

    Inputs are whole studies (current frontal, lateral, priors; `view_mask` from the missing views) through the
    model's multiview/temporal path, or with `frontal_only=True` the current frontal alone through the
    single-frontal path (the reference's evaluation path). Zero-shot uses `demo_class_prompts()` (raw text, the
    model's training length); a study's label must be one of its classes. Retrieval: i2t = each study's image
    embedding against all reports of the split, t2i = each report against all studies; relevant = same label.

    Args:
        model_dir_or_model: a model folder (`align.py`'s `model/`, `save_pretrained`, `alta-convert`) or a model.
        dataset_split: a demo `datasets.Dataset` (columns `frontal`, `lateral`, `prior_frontal`, `prior_lateral`,
            `report`, `label`), or a `save_to_disk` folder (its `test` split if it holds a `DatasetDict`).
        output_dir: where to write `demo_results.json` and the PNGs (confusion matrix, i2t retrieval sheet, heatmap);
            `None` writes nothing.
        frontal_only: use only the current frontal.
        processor: default: the one saved with the model.

    Returns:
        `{"zero_shot_accuracy", "per_class_accuracy", "i2t_p@5", "t2i_p@5", "chance_accuracy", "num_studies",
        "class_names", "frontal_only", "figures"}`.
    """
    from inference.zero_shot import ZeroShotClassifier

    task = "demo"
    model, processor, out = prepare(model_dir_or_model, processor, output_dir)
    ds = _demo_split(dataset_split)
    view_columns = [c for c in STUDY_SLOTS if c in ds.column_names]
    columns = {c: list(ds[c]) for c in [*view_columns, "report", "label"]}
    n = len(columns["label"])
    if frontal_only:
        inputs: list[Any] = columns["frontal"]
    else:
        inputs = [{c: columns[c][i] for c in view_columns} for i in range(n)]
    for i, frontal in enumerate(columns["frontal"]):
        if frontal is None:
            raise ValueError(f"demo split row {i} (study {ds[i].get('study_id', i)!r}) has no frontal image")
    clf = ZeroShotClassifier(
        model, processor, class_prompts or "demo", clean_text=False, max_length=default_text_length(processor)
    )
    names = clf.class_names
    unknown = sorted({label for label in columns["label"] if label not in names})
    if unknown:
        raise ValueError(f"demo split labels {unknown} are not among the prompt classes {names}")
    labels = [names.index(label) for label in columns["label"]]
    wheres = [f"demo split row {i}" for i in range(n)]
    image_embeds, kept, skipped = embed_readable_images(
        model, processor, inputs, wheres, batch_size, desc="demo studies"
    )
    if len(kept) < n:  # scored on the readable studies only, reports included
        labels = select(labels, kept)
        columns = {c: select(values, kept) for c, values in columns.items()}
        n = len(kept)
    text_embeds = embed_texts_with_progress(model, processor, columns["report"], batch_size, desc="demo reports")
    pred = clf.scores_from_embeddings(image_embeds)
    zero_shot = zero_shot_accuracy_metric(pred.predictions.tolist(), labels, names)
    k = min(5, n)
    i2t, top_i2t = precision_at_k_metric(image_embeds, text_embeds, labels, labels, [k])
    t2i, _ = precision_at_k_metric(text_embeds, image_embeds, labels, labels, [k])
    result = {
        "task": task,
        "zero_shot_accuracy": zero_shot["accuracy"],
        "per_class_accuracy": zero_shot["per_class_accuracy"],
        "i2t_p@5": i2t[f"p@{k}"],
        "t2i_p@5": t2i[f"p@{k}"],
        "chance_accuracy": 1.0 / len(names),
        "num_studies": n,
        **skip_report(skipped),
        "class_names": names,
        "frontal_only": frontal_only,
        "model": model_name(model),
    }
    figures = Figures(out, task, plots)
    finding = next((i for i, y in enumerate(columns["label"]) if y != "No Finding"), 0)

    def draw() -> None:
        figures.confusion(pred.predictions, labels, names)
        figures.retrieval(
            processor, columns["frontal"], columns["report"], labels, labels, top_i2t, dict(enumerate(names)),
            "Demo image-to-report retrieval (frontal shown)",
        )  # fmt: skip
        figures.heatmap(model, processor, columns["frontal"][finding], columns["label"][finding].lower())

    return finish_task(result, out, task, figures, draw=draw)


def _run(model: Any, args: argparse.Namespace, common: dict[str, Any]) -> dict[str, Any]:
    if args.dataset is not None:
        split = _demo_split(args.dataset, args.split)
    else:
        from processing.demo_data import generate_demo_dataset

        split = generate_demo_dataset(args.num_studies, seed=args.seed, image_size=args.image_size)[args.split]
    return evaluate_demo(model, split, frontal_only=args.frontal_only, **common)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-studies", type=int, default=300, help="when generating: studies over all splits")
    parser.add_argument("--seed", type=int, default=0, help="when generating")
    parser.add_argument("--image-size", type=int, default=256, help="when generating")
    parser.add_argument("--frontal-only", action="store_true", help="current frontal only (the reference's eval path)")


PROTOCOLS = (
    Protocol(
        name="demo",
        summary="demo split: zero-shot accuracy on the demo classes, i2t/t2i P@5",
        inputs=(
            InputFile(
                "--dataset",
                "save_to_disk folder of the demo data (default: generate it); `lateral`, `prior_frontal`, "
                "`prior_lateral` columns are used when present",
                ("frontal", "report", "label"),
                required=False,
            ),
        ),
        metrics=("zero_shot_accuracy", "per_class_accuracy", "i2t_p@5", "t2i_p@5"),
        run=_run,
        add_arguments=_arguments,
        data_root_help=None,
    ),
)


__all__ = ["PROTOCOLS", "evaluate_demo"]
