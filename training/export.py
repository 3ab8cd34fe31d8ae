"""Export a trained ALTA model: unwrap -> save_pretrained (model + processor + Hub code) -> model card -> optional push.

`export_model` is the one export path: `training/align.py` calls it at the end of a run, and it works on a model
loaded by hand. The folder is written once. What goes into it:

- an ALTA model: the model (safetensors + code), the processor, a card; with `save_alta_adapter=True` also the
  adapter set alone in `alta_adapter/`; with `adapter_only=True` only the adapter set (and the card);
- a PEFT-wrapped model (`--adapter lora|ia3`): with `peft_export="merged"` a plain ALTA folder with the adaptation
  merged in, plus PEFT's own files in `peft_adapter/` (for `PeftModel.from_pretrained`); with `"adapter"` only
  PEFT's files (`adapter_model.safetensors`, `adapter_config.json`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData
from torch import nn

from modeling_alta.modeling_alta import unwrap_alta_model


# The official ALTA code and weights are CC-BY-NC 4.0 and the pre-training data (MIMIC-CXR) is PhysioNet-credentialed,
# so a card for ALTA weights defaults to the non-commercial licence; the code in this repository is Apache-2.0.
DEFAULT_LICENSE = "cc-by-nc-4.0"
DEFAULT_TAGS = ("alta", "medical-imaging", "chest-x-ray", "radiology", "vision-language", "zero-shot")
INTENDED_USE = """## Intended use

Research on aligning chest radiographs with radiology reports: zero-shot classification, image-text retrieval and
representation learning, by researchers who can judge the outputs.

## Limitations

- **Research use only. This model is not a medical device**; it is not cleared or approved for any clinical use and
  must not be used to diagnose, treat or triage patients.
- Trained on MIMIC-CXR (one hospital system, adult patients, English reports); expect degraded and biased behaviour
  on other populations, scanners, paediatric images, other languages and report styles.
- Zero-shot scores depend strongly on the prompt wording; they are similarities, not calibrated probabilities.
- The training data carries the biases and label noise of automatically processed clinical reports.
"""


@dataclass
class ExportResult:
    """What `export_model` wrote and, when it pushed, where."""

    output_dir: Path
    files: list[str] = field(default_factory=list)
    commit_url: str | None = None


def _is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but a card should not need it
        return False
    return isinstance(model, PeftModel)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) values over de-duplicated parameters (tied weights once)."""
    params = list(model.parameters())  # parameters() already yields a tied tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _format_metric(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def build_model_card(
    *,
    model_name: str,
    base_model: str | None = None,
    license: str = DEFAULT_LICENSE,  # noqa: A002 - the model-card field's name
    datasets: list[str] | None = None,
    metrics: dict[str, Any] | None = None,
    trainable_parameters: int | None = None,
    total_parameters: int | None = None,
    adapter_method: str | None = None,
    library_name: str = "transformers",
    description: str | None = None,
    tags: list[str] | None = None,
) -> ModelCard:
    """A model card for an ALTA model or adapter (no template engine: YAML header + markdown body).

    Args:
        model_name (`str`):
            Title of the card, usually the Hub repository id.
        base_model (`str`, *optional*):
            Hub id of the model this one was trained from (absolute local paths are left out of the metadata).
        license (`str`, *optional*, defaults to `"cc-by-nc-4.0"`):
            Licence of the *weights*; ALTA's official weights and data terms are non-commercial.
        datasets (`list[str]`, *optional*):
            Training / evaluation datasets (Hub ids or names such as `"mimic-cxr"`).
        metrics (`dict[str, Any]`, *optional*):
            The last evaluation, `{"chexpert5x200/acc": 0.61, ...}`; names go to the metadata, values to a table.
        trainable_parameters, total_parameters (`int`, *optional*):
            Parameter counts reported in the card (the ALTA set is about 7.6 % at base size).
        adapter_method (`str`, *optional*):
            `"alta"`, `"lora"`, `"ia3"` or `"full"`: how the model was trained.
        library_name (`str`, *optional*, defaults to `"transformers"`):
            `"peft"` for a PEFT adapter repository.
    """
    if metrics is not None and not isinstance(metrics, dict):
        raise TypeError(f"`metrics` must be a dict of name -> value; got {type(metrics).__name__}.")
    if base_model is not None and os.path.isabs(base_model):
        base_model = None  # a local path means nothing on the Hub and leaks the training machine's layout
    card_data = ModelCardData(
        library_name=library_name,
        license=license,
        base_model=base_model,
        datasets=list(datasets) if datasets else None,
        metrics=sorted(metrics) if metrics else None,
        pipeline_tag="zero-shot-image-classification",
        tags=sorted(set(DEFAULT_TAGS) | set(tags or []) | ({adapter_method} if adapter_method else set())),
    )
    lines = [f"# {model_name}", ""]
    lines.append(
        description
        or "ALTA (ALign Through Adapting) aligns chest radiographs and radiology reports by adapting a masked-record "
        "ViT and CXR-BERT with small bottleneck adapters (Lian et al., IEEE TMI 2025)."
    )
    lines += ["", "## Model details", ""]
    if base_model:
        lines.append(f"- Base model: [`{base_model}`](https://huggingface.co/{base_model})")
    if adapter_method:
        lines.append(f"- Training method: `{adapter_method}`")
    if trainable_parameters is not None and total_parameters:
        share = 100.0 * trainable_parameters / total_parameters
        lines.append(f"- Trainable parameters: {trainable_parameters:,} of {total_parameters:,} ({share:.2f} %)")
    elif total_parameters is not None:
        lines.append(f"- Parameters: {total_parameters:,}")
    if datasets:
        lines.append(f"- Datasets: {', '.join(datasets)}")
    lines += ["", "## Usage", "", "```python", "from transformers import pipeline", ""]
    lines.append(f'clf = pipeline("zero-shot-image-classification", model="{model_name}", trust_remote_code=True)')
    lines.append('clf(image, candidate_labels=["pleural effusion", "no finding"], hypothesis_template="{}")')
    lines += ["```", ""]
    if metrics:
        lines += ["## Evaluation (last run)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {_format_metric(value)} |" for name, value in sorted(metrics.items())]
        lines.append("")
    lines.append(INTENDED_USE)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _is_custom(obj: Any) -> bool:
    return not type(obj).__module__.startswith("transformers.")


def _register_processor_code(processor: Any) -> None:
    """Same for the processor and its image processor (the tokenizer is stock BERT)."""
    if _is_custom(processor):
        processor.register_for_auto_class()
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None and _is_custom(image_processor):
        image_processor.register_for_auto_class()


def export_model(
    model: nn.Module,
    processor: Any | None,
    output_dir: str | os.PathLike,
    push_to_hub: bool = False,
    repo_id: str | None = None,
    *,
    metrics: dict[str, Any] | None = None,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    license: str = DEFAULT_LICENSE,  # noqa: A002
    adapter_method: str | None = None,
    adapter_only: bool = False,
    save_alta_adapter: bool = False,
    peft_export: str = "adapter",
    extra_files: dict[str, str] | None = None,
    include_code: bool = True,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
) -> ExportResult:
    """Save a model (or its adapter) with its processor and a model card to `output_dir`; optionally push it.

    Args:
        model (`nn.Module`):
            The trained model; training wrappers are removed (`unwrap_model`). A `PeftModel` saves its adapter.
        processor (`ProcessorMixin`, *optional*):
            Saved beside the weights so `AutoProcessor`/pipelines load from the same folder.
        output_dir (`str` or `os.PathLike`):
            Created if missing; existing files with the same names are overwritten.
        push_to_hub (`bool`, *optional*, defaults to `False`):
            Upload the whole folder in one commit to `repo_id` (created if needed).
        metrics (`dict`, *optional*):
            The last evaluation, shown in the card and written to `eval_results.json`.
        adapter_only (`bool`, *optional*, defaults to `False`):
            For a native ALTA model, write only the adapter set (`save_alta_adapter`) instead of the full model.
        save_alta_adapter (`bool`, *optional*, defaults to `False`):
            For a native ALTA model, also write the adapter set alone into `alta_adapter/`.
        peft_export (`str`, *optional*, defaults to `"adapter"`):
            For a `PeftModel`: `"adapter"` writes PEFT's files; `"merged"` writes the merged ALTA model and PEFT's
            files in `peft_adapter/`.
        extra_files (`dict[str, str]`, *optional*):
            More text files to write into the folder (name -> content), e.g. `train_results.json`.
        include_code (`bool`, *optional*, defaults to `True`):
            Register a custom processor for its auto class, so its code ships too (the ALTA model always ships its
            code: its `save_pretrained` does that).

    Returns:
        `ExportResult` with the folder, the files written and the commit URL when pushed.
    """
    if push_to_hub and not repo_id:
        raise ValueError("`push_to_hub=True` needs a `repo_id` (e.g. 'user/alta-mimic').")
    if peft_export not in ("adapter", "merged"):
        raise ValueError(f"`peft_export` must be 'adapter' or 'merged'; got {peft_export!r}.")
    model = unwrap_alta_model(model, "saveable")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_peft = _is_peft(model)
    trainable, total = parameter_counts(model)

    if adapter_only and not is_peft:
        if not hasattr(model, "save_alta_adapter"):
            raise TypeError(f"`adapter_only=True` needs an ALTA model; got {type(model).__name__}.")
        model.save_alta_adapter(out, base_model_name_or_path=base_model)
        trainable = model.num_alta_adapter_parameters()
        adapter_method = adapter_method or "alta"
    elif is_peft and peft_export == "merged":
        from .peft_utils import merge_peft_model

        model.save_pretrained(out / "peft_adapter")  # PEFT's own files, for PeftModel.from_pretrained
        model = merge_peft_model(model)
        model.save_pretrained(out)
        is_peft = False
    else:
        # ALTA's own save_pretrained registers the auto classes, copies the flat modeling_alta files and writes a
        # complete auto_map (modeling_alta.py), so nothing to add here for the model.
        model.save_pretrained(out)
        if save_alta_adapter and not is_peft and hasattr(model, "save_alta_adapter"):
            model.save_alta_adapter(out / "alta_adapter", base_model_name_or_path=base_model)
    for name, content in (extra_files or {}).items():
        (out / name).write_text(content)
    if processor is not None:
        if include_code:
            _register_processor_code(processor)
        processor.save_pretrained(out)

    if base_model is None:
        inner = model.get_base_model() if is_peft else model
        name = getattr(getattr(inner, "config", None), "_name_or_path", None)
        base_model = name or None
    if metrics:
        (out / "eval_results.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    card = build_model_card(
        model_name=repo_id or out.name,
        base_model=base_model,
        license=license,
        datasets=datasets,
        metrics=metrics,
        trainable_parameters=trainable,
        total_parameters=total,
        adapter_method=adapter_method or ("peft" if is_peft else None),
        library_name="peft" if is_peft else "transformers",
    )
    card.save(out / "README.md")

    result = ExportResult(output_dir=out, files=sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()))
    if push_to_hub:
        result.commit_url = push_folder(out, repo_id, private=private, token=token, commit_message=commit_message)
    return result


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a folder written by `export_model` to `repo_id` (created if needed) in one commit; returns its URL."""
    folder = Path(folder)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    commit = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, commit_message=commit_message or f"Upload {folder.name}"
    )
    return str(commit)


__all__ = ["ExportResult", "build_model_card", "export_model", "parameter_counts", "push_folder"]
