"""Embed images, studies and reports with onnxruntime from a folder written by `alta-export-onnx`.

The inputs are prepared by the same `AltaProcessor` as for PyTorch (saved in the folder), so

    OnnxAltaEncoder(folder).embed_images(images)  ==  inference.embed_images(model, processor, images)

up to float rounding (the export checks 1e-4), for images (single-frontal path), studies (multiview/temporal path
with `view_mask`) and texts. Only onnxruntime runs the networks; torch is used by the processor's tensors alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .onnx_export import MANIFEST, ONNX_FORMAT, TEXT_INPUTS


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _batches(items: Sequence[Any], batch_size: int) -> Iterator[Sequence[Any]]:
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive; got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


class OnnxAltaEncoder:
    """ALTA's towers in onnxruntime, with the model's processor.

    Args:
        folder: a folder written by `alta-export-onnx` (`alta_onnx.json` marks it complete).
        processor: default: the `AltaProcessor` saved in the folder.
        providers: onnxruntime execution providers (default: CPU).
        threads: intra-op threads per session (default: onnxruntime's choice).

    Example:

    ```python
    >>> encoder = OnnxAltaEncoder("alta-onnx")
    >>> images = encoder.embed_images(["a.png", {"frontal": "f.dcm", "lateral": "l.dcm"}][:1])  # [1, P], normalised
    >>> texts = encoder.embed_texts(["small left pleural effusion", "no acute process"])        # [2, P]
    >>> scores = images @ texts.T
    ```
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        processor: Any = None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        manifest_path = self.folder / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{self.folder} is not a complete ONNX export: {MANIFEST} is missing (run `alta-export-onnx`)"
            )
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != ONNX_FORMAT:
            raise ValueError(f"{manifest_path}: format is {self.manifest.get('format')!r}, not {ONNX_FORMAT!r}")
        for tower, spec in self.manifest["towers"].items():
            file = self.folder / spec["file"]
            # The manifest is data: its file names must stay inside the folder.
            if Path(spec["file"]).name != spec["file"] or not file.is_file():
                raise FileNotFoundError(
                    f"{manifest_path}: the {tower} tower file {spec['file']!r} is missing or unsafe"
                )
        if processor is None:
            from modeling_alta import AltaProcessor

            processor = AltaProcessor.from_pretrained(self.folder)
        self.processor = processor
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.threads = threads
        self._sessions: dict[str, Any] = {}

    @property
    def towers(self) -> list[str]:
        """The exported towers (`image`, `study`, `text`)."""
        return list(self.manifest["towers"])

    @property
    def logit_scale(self) -> float:
        """`exp(logit_scale)` of the model: zero-shot probabilities are `softmax(logit_scale * cosine)`."""
        return float(self.manifest["logit_scale"])

    def session(self, tower: str) -> Any:
        """The onnxruntime `InferenceSession` of a tower (created on first use)."""
        if tower not in self.manifest["towers"]:
            raise ValueError(f"{self.folder} has no {tower} tower; exported: {self.towers}")
        if tower not in self._sessions:
            import onnxruntime as ort

            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
            path = self.folder / self.manifest["towers"][tower]["file"]
            self._sessions[tower] = ort.InferenceSession(str(path), options, providers=self.providers)
        return self._sessions[tower]

    # -- raw tensors --------------------------------------------------------------------------------------------

    def image_features(self, pixel_values: Any, view_mask: Any = None) -> np.ndarray:
        """Unnormalised features of processor outputs: `[B, 3, H, W]` (image tower) or `[B, V, 3, H, W]` with
        `view_mask [B, V]` (study tower; fewer than `num_slots` views are padded as missing, as the model does)."""
        pixels = np.asarray(pixel_values, dtype=np.float32)
        if pixels.ndim == 4:
            return self.session("image").run(None, {"pixel_values": pixels})[0]
        if pixels.ndim != 5:
            raise ValueError(f"`pixel_values` must be [B, 3, H, W] or [B, V, 3, H, W]; got shape {pixels.shape}")
        batch, views = pixels.shape[:2]
        mask = (
            np.asarray(view_mask, dtype=bool)
            if view_mask is not None
            else pixels.reshape(batch, views, -1).sum(-1) != 0  # the model's rule without a mask
        )
        if mask.shape != (batch, views):
            raise ValueError(f"`view_mask` must have shape {(batch, views)}; got {mask.shape}")
        slots = int(self.manifest["num_slots"])
        if views > slots:
            raise ValueError(f"a study holds at most {slots} views; got {views}")
        if views < slots:
            pixels = np.concatenate([pixels, np.zeros((batch, slots - views, *pixels.shape[2:]), np.float32)], 1)
            mask = np.concatenate([mask, np.zeros((batch, slots - views), bool)], 1)
        return self.session("study").run(None, {"pixel_values": pixels, "view_mask": mask})[0]

    def text_features(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> np.ndarray:
        """Unnormalised features of tokenised texts `[B, L]`."""
        ids = np.asarray(input_ids, dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.asarray(attention_mask, dtype=np.int64),
            "token_type_ids": np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids, np.int64),
        }
        limit = int(self.manifest["max_position_embeddings"])
        if ids.ndim != 2 or ids.shape[1] > limit:
            raise ValueError(f"`input_ids` must be [B, L] with L <= {limit}; got shape {ids.shape}")
        return self.session("text").run(None, {k: feeds[k] for k in TEXT_INPUTS})[0]

    # -- what inference.embedding offers, through onnxruntime ---------------------------------------------------

    def embed_images(
        self, images: Sequence[Any], batch_size: int = 32, normalize: bool = True, dicom_rule: str | None = None
    ) -> np.ndarray:
        """Embed images (paths, PIL, arrays, DICOM; image tower) or studies (dicts / lists of views; study tower),
        one kind per call, as `inference.embed_images` does.

        Returns:
            float32 `[N, P]`, L2-normalised unless `normalize=False`.
        """
        from .embedding import pixel_inputs

        items = list(images)
        if not items:
            raise ValueError("`images` is empty; nothing to embed")
        out = []
        for batch in _batches(items, batch_size):
            inputs = pixel_inputs(self.processor, batch, dicom_rule)
            mask = inputs.get("view_mask")
            out.append(self.image_features(inputs["pixel_values"].numpy(), None if mask is None else mask.numpy()))
        embeds = np.concatenate(out).astype(np.float32)
        return _normalize(embeds) if normalize else embeds

    def embed_texts(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        normalize: bool = True,
        max_length: int | None = None,
        clean_text: bool = False,
        truncation: bool = True,
    ) -> np.ndarray:
        """Embed reports or prompts as `inference.embed_texts` does (same tokenisation, `encode_texts`).

        Returns:
            float32 `[N, P]`, L2-normalised unless `normalize=False`.
        """
        from modeling_alta.processing_alta import encode_texts

        items = [texts] if isinstance(texts, str) else list(texts)
        if not items:
            raise ValueError("`texts` is empty; nothing to embed")
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        length = max_length or int(self.manifest["text_max_length"])
        out = []
        for batch in _batches(items, batch_size):
            enc = encode_texts(
                tokenizer,
                batch,
                length,
                truncation=truncation,
                clean_text=clean_text,
                allow_empty=True,  # as `embed_texts`: a prompt that cleans to nothing is `[CLS] [SEP]`
                return_tensors="pt",
            )
            out.append(self.text_features(*(enc[k].numpy() for k in TEXT_INPUTS)))
        embeds = np.concatenate(out).astype(np.float32)
        return _normalize(embeds) if normalize else embeds


__all__ = ["OnnxAltaEncoder"]
