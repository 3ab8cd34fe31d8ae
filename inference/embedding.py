"""Embeddings of images, studies and reports from an ALTA model, in memory or into an on-disk `EmbeddingStore`.

Embedding conventions (alta_reference.md §8):

- an **image** (path, PIL, array, DICOM path or pydicom `Dataset`) goes through the model's single-frontal path
  (`pixel_values [B,3,H,W]`, slot-0 embeddings, CLS → `vision_projection`): the reference evaluation path;
- a **study** (a dict with keys among `frontal`, `lateral`, `prior_frontal`, `prior_lateral`, or an ordered list of up
  to four views with `None` for a gap) goes through the multiview/temporal path (`pixel_values [B,V,3,H,W]` with an
  explicit `view_mask`), which the reference does not evaluate;
- a **text** is tokenised like training (`max_length` from the processor, raw text) unless told otherwise
  (`clean_text=True` applies the reference's `process_text`; `truncation=False` pads to the longest text instead of
  cutting, as the reference's retrieval scripts do).

Embeddings are returned L2-normalised unless `normalize=False` (prompt ensembles need the unnormalised ones). Calls of
more than one batch show a progress bar with the rate and the time left (tqdm, on the main process only; pass
`progress=False` to hide it). A whole archive, on one process or many, is `alta-embed` (`inference.embed_archive`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from modeling_alta.modeling_alta import unwrap_alta_model
from modeling_alta.pipeline_alta import pooled_embeddings
from modeling_alta.processing_alta import DEFAULT_MAX_LENGTH, encode_texts

from .store import EmbeddingStore, EmbeddingStoreWriter, Id


# ---------------------------------------------------------------------------------------------------------------
# 1. Loading
# ---------------------------------------------------------------------------------------------------------------


def _is_hub_id(name: str) -> bool:
    """`owner/name` that is not an existing local path: a Hub model id (transformers says so if it is neither)."""
    if Path(name).exists() or name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        return False
    parts = name.split("/")
    return all(part and all(c.isalnum() or c in "-_." for c in part) for part in parts) and "/" in name


def load_model_and_processor(
    model: str | os.PathLike | Any,
    processor: Any = None,
    device: str | torch.device | None = None,
) -> tuple[Any, Any]:
    """An ALTA dual encoder in eval mode and its processor.

    Args:
        model: a folder written by `alta-convert`, `save_pretrained` or `training/align.py` (its `model/` folder;
            pre-training heads in the weights are ignored), a Hub model id (`"owner/name"`, loaded with
            `AutoModel`/`AutoProcessor` and `trust_remote_code=True`: the model's own code runs), or a model
            instance (`AltaModel`, `AltaForPreTraining`, or their custom-code classes).
        processor: an `AltaProcessor`; default: loaded from the model folder (`model.name_or_path` for instances).
        device: where to put the model; default: where it is (CPU for folders).

    Returns:
        `(model, processor)`; the model is the `AltaModel` part, in eval mode.
    """
    if isinstance(model, str) and _is_hub_id(model):
        from transformers import AutoModel, AutoProcessor

        from modeling_alta.configuration_alta import not_found_anywhere

        try:
            loaded = AutoModel.from_pretrained(model, trust_remote_code=True)
        except OSError as err:  # a mistyped folder name that also looks like a Hub id: say both were tried
            explained = not_found_anywhere(model, "model", err)
            if explained is err:
                raise
            raise explained from err
        if processor is None:
            processor = AutoProcessor.from_pretrained(model, trust_remote_code=True)
        return load_model_and_processor(loaded, processor, device)
    if isinstance(model, str | os.PathLike):
        folder = Path(model)
        if not folder.exists():
            raise FileNotFoundError(f"model folder {str(model)!r} does not exist ({folder.absolute()})")
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} is not a model folder: config.json is missing")
        from modeling_alta import AltaModel

        loaded = AltaModel.from_pretrained(folder)
    else:
        loaded = model
        folder = Path(getattr(model, "name_or_path", "") or "")
    loaded = unwrap_alta_model(loaded, "dual_encoder")
    if processor is None:
        if not str(folder) or not ((folder / "processor_config.json").is_file() or (folder / "vocab.txt").is_file()):
            raise ValueError(
                f"no processor given and none found in the model folder {str(folder)!r}; pass `processor=` "
                "(an AltaProcessor) or a folder saved with the processor"
            )
        from modeling_alta import AltaProcessor

        processor = AltaProcessor.from_pretrained(folder)
    if device is not None:
        loaded = loaded.to(device)
    return loaded.eval(), processor


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _batches(items: Sequence[Any], batch_size: int) -> Iterator[Sequence[Any]]:
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive; got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def is_main_process() -> bool:
    """True on the process that reports: rank 0 of an initialised process group, else `RANK` (set by
    `accelerate launch` and `torchrun`) 0 or unset."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0") or 0) == 0


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True) -> Any:
    """A tqdm bar (rate and time left) over `total` units, shown only on the main process and when `enabled`."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not (enabled and is_main_process()), dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------------------------
# 2. Images and studies
# ---------------------------------------------------------------------------------------------------------------


def pixel_inputs(processor: Any, images: Sequence[Any], dicom_rule: str | None = None) -> dict[str, torch.Tensor]:
    """Processor outputs for a batch of images or of studies (not mixed).

    Returns:
        `{"pixel_values": [B,3,H,W]}` for images, `{"pixel_values": [B,V,3,H,W], "view_mask": [B,V]}` for studies.
    """
    image_processor = getattr(processor, "image_processor", processor)
    kwargs = {"dicom_rule": dicom_rule} if dicom_rule else {}
    out = image_processor(list(images), return_tensors="pt", **kwargs)
    return {k: out[k] for k in ("pixel_values", "view_mask") if k in out}


@torch.no_grad()
def embed_images(
    model: Any,
    processor: Any,
    images: Sequence[Any],
    batch_size: int = 32,
    normalize: bool = True,
    dicom_rule: str | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Embed images (single-frontal path) or studies (multiview/temporal path with `view_mask`).

    Args:
        model: an ALTA model (see `load_model_and_processor`).
        processor: its `AltaProcessor` (or `AltaImageProcessor`).
        images: N images (paths, PIL, arrays, DICOM) **or** N studies (dicts / lists of views); each batch must be one
            kind. A `torch.Tensor` of ready `pixel_values` `[N,3,H,W]` is accepted too.
        batch_size: images or studies per forward.
        normalize: L2-normalise the embeddings (cosine retrieval); `False` returns the raw projections.
        dicom_rule: `"rsna"` for the reference's RSNA DICOM rule, else the processor's default.
        progress: show a progress bar (main process only) when there is more than one batch.

    Returns:
        float32 `[N, P]` on the CPU.
    """
    model = unwrap_alta_model(model, "dual_encoder")
    device = _device(model)
    if isinstance(images, torch.Tensor):
        total = len(images)
        batches: Iterable[dict[str, torch.Tensor]] = ({"pixel_values": b} for b in images.split(batch_size))
    else:
        images = list(images)
        if not images:
            raise ValueError("`images` is empty; nothing to embed")
        total = len(images)
        batches = (pixel_inputs(processor, batch, dicom_rule) for batch in _batches(images, batch_size))
    out = []
    with progress_bar(total, "embedding images", "img", progress and total > batch_size) as bar:
        for inputs in batches:
            view_mask = inputs.get("view_mask")
            feats = model.get_image_features(
                inputs["pixel_values"].to(device),
                view_mask=view_mask.to(device) if view_mask is not None else None,
                return_dict=True,
            )
            out.append(pooled_embeddings(feats).float().cpu())
            bar.update(len(inputs["pixel_values"]))
    embeds = torch.cat(out)
    return F.normalize(embeds, dim=-1) if normalize else embeds


# ---------------------------------------------------------------------------------------------------------------
# 3. Texts
# ---------------------------------------------------------------------------------------------------------------


def default_text_length(processor: Any) -> int:
    """The text length the model was trained with: the processor's `max_length` (saved with it; 128 for ALTA), or 128
    for a bare tokenizer. The model config holds no text length (it is a tokenizer setting)."""
    if isinstance(processor, torch.nn.Module):
        raise TypeError(
            f"default_text_length takes the processor (the text length is saved with it), not a model "
            f"({type(processor).__name__})"
        )
    return int(getattr(processor, "max_length", None) or DEFAULT_MAX_LENGTH)


@torch.no_grad()
def embed_texts(
    model: Any,
    processor: Any,
    texts: Sequence[str],
    batch_size: int = 64,
    normalize: bool = True,
    max_length: int | None = None,
    clean_text: bool = False,
    truncation: bool = True,
    progress: bool = True,
    sort_by_length: bool = True,
) -> torch.Tensor:
    """Embed reports or prompts: projected [CLS] features.

    Texts are tokenised once, then run in chunks of `batch_size`, each padded to its own longest text rather than
    to `max_length` (the text tower's work follows the text; masked padding does not change the [CLS] output, up to
    float rounding). With `sort_by_length` the chunks are formed from the texts in order of length, so that they are
    tight, and the rows come back in the input order.

    Args:
        texts: N strings.
        max_length: truncation length; default the training length the processor was saved with
            (`processor.max_length`).
        clean_text, truncation: see `modeling_alta.processing_alta.encode_texts`.
        normalize: L2-normalise (reports and queries); `False` for prompt-ensemble means.
        progress: show a progress bar (main process only) when there is more than one batch.
        sort_by_length: group texts of similar length into the chunks (the output order is the input order).

    Returns:
        float32 `[N, P]` on the CPU.
    """
    model = unwrap_alta_model(model, "dual_encoder")
    tokenizer = getattr(processor, "tokenizer", processor)
    length = max_length or default_text_length(processor)
    items = [texts] if isinstance(texts, str) else list(texts)
    if not items:
        raise ValueError("`texts` is empty; nothing to embed")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive; got {batch_size}")
    device = _device(model)
    enc = encode_texts(
        tokenizer,
        items,
        length if truncation else None,
        padding=False,
        truncation=truncation,
        clean_text=clean_text,
        allow_empty=True,
    )
    ids, types = enc["input_ids"], enc["token_type_ids"]
    order = list(range(len(items)))
    if sort_by_length:
        order.sort(key=lambda i: -len(ids[i]))  # stable: equal lengths keep their input order
    limit = model.config.text_config.max_position_embeddings
    out = torch.empty(0)
    with progress_bar(len(items), "embedding texts", "text", progress and len(items) > batch_size) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            rows = [ids[i] for i in chunk]
            longest = max(len(r) for r in rows)
            if longest > limit:
                first = chunk[max(range(len(rows)), key=lambda j: len(rows[j]))]
                raise ValueError(
                    f"a text in this batch has {longest} tokens, more than the model's {limit} positions; starts "
                    f"{items[first][:60]!r}"
                )
            padded = tokenizer.pad(
                {"input_ids": rows, "token_type_ids": [types[i] for i in chunk]},
                padding="longest",
                return_tensors="pt",
            )
            feats = model.get_text_features(**{k: v.to(device) for k, v in padded.items()}, return_dict=True)
            embeds = pooled_embeddings(feats).float().cpu()
            if out.numel() == 0:
                out = embeds.new_empty(len(items), embeds.shape[-1])
            out[torch.tensor(chunk)] = embeds
            bar.update(len(chunk))
    return F.normalize(out, dim=-1) if normalize else out


# ---------------------------------------------------------------------------------------------------------------
# 4. On-disk galleries
# ---------------------------------------------------------------------------------------------------------------


def _check_ids(ids: Sequence[Id], count: int, what: str) -> list[Id]:
    ids = list(ids)
    if len(ids) != count:
        raise ValueError(f"got {count} {what} but {len(ids)} ids")
    return ids


def embed_images_to_store(
    model: Any,
    processor: Any,
    images: Sequence[Any],
    ids: Sequence[Id],
    store_dir: str | os.PathLike,
    batch_size: int = 32,
    shard_size: int = 65536,
    overwrite: bool = True,
    dicom_rule: str | None = None,
    progress: bool = True,
) -> EmbeddingStore:
    """Embed a gallery of images or studies batch by batch into an on-disk `EmbeddingStore`.

    Only one batch of pixels and one shard of embeddings are in memory at a time, so galleries larger than memory
    work. Embeddings are stored L2-normalised (float32).

    Args:
        images: N images or N studies (see `embed_images`).
        ids: N ids (strings or ints), returned by `search`.
        store_dir: the store folder; replaced unless `overwrite=False` (then appended to).

    Returns:
        the `EmbeddingStore`.
    """
    images = list(images)
    ids = _check_ids(ids, len(images), "images")
    with EmbeddingStoreWriter(store_dir, shard_size=shard_size, overwrite=overwrite) as writer:
        with progress_bar(len(images), "embedding images", "img", progress) as bar:
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                emb = embed_images(model, processor, batch, batch_size, dicom_rule=dicom_rule, progress=False)
                writer.add(emb, ids[start : start + batch_size])
                bar.update(len(batch))
    return EmbeddingStore(store_dir)


def embed_reports_to_store(
    model: Any,
    processor: Any,
    reports: Sequence[str],
    ids: Sequence[Id],
    store_dir: str | os.PathLike,
    batch_size: int = 64,
    shard_size: int = 65536,
    overwrite: bool = True,
    max_length: int | None = None,
    clean_text: bool = False,
    truncation: bool = True,
    progress: bool = True,
) -> EmbeddingStore:
    """Embed a gallery of reports batch by batch into an on-disk `EmbeddingStore` (see `embed_images_to_store`)."""
    reports = list(reports)
    ids = _check_ids(ids, len(reports), "reports")
    with EmbeddingStoreWriter(store_dir, shard_size=shard_size, overwrite=overwrite) as writer:
        with progress_bar(len(reports), "embedding reports", "text", progress) as bar:
            for start in range(0, len(reports), batch_size):
                batch = reports[start : start + batch_size]
                emb = embed_texts(
                    model,
                    processor,
                    batch,
                    batch_size,
                    max_length=max_length,
                    clean_text=clean_text,
                    truncation=truncation,
                    progress=False,
                )
                writer.add(emb, ids[start : start + batch_size])
                bar.update(len(batch))
    return EmbeddingStore(store_dir)


__all__ = [
    "default_text_length",
    "embed_images",
    "embed_images_to_store",
    "embed_reports_to_store",
    "embed_texts",
    "is_main_process",
    "load_model_and_processor",
    "pixel_inputs",
    "progress_bar",
]
