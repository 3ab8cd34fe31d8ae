"""Zero-shot classification with prompt ensembles, class embeddings computed once and cached.

`ZeroShotClassifier` embeds every prompt of every class **once**, reduces each class to
`normalize(mean of its unnormalised prompt embeddings)` (the reference's rule, alta_reference.md §8), and then scores
any number of image batches against those class embeddings by cosine. The reference recomputes the text features
for every image batch (same result, wasted time); here they are computed lazily on first use and kept. With
`cache_dir` they are also saved to a file named by a hash of the model's text-side weights, the tokenizer
vocabulary, the tokenisation settings and the prompts, so a second run with the same model and prompts loads them
instead of running the text tower; any change to one of these gives a new file.

Presets: `"chexpert5x200"` (the reference's 489-prompt grid, `process_text` cleanup, 128 tokens), `"demo"` (the
built-in demo classes), `"rsna"` (the RSNA pair; use `clean_text=False, max_length=10` as the reference does).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modeling_alta.image_processing_alta import is_single_input
from modeling_alta.modeling_alta import unwrap_alta_model

from .arrays import ArrayLike, as_1d_array, as_float_tensor, check_same_length, l2_normalize
from .embedding import embed_images, embed_texts


def prompt_preset(name: str) -> dict[str, list[str]]:
    """A named prompt ensemble: `"chexpert5x200"`, `"rsna"` or `"demo"` (class -> prompts)."""
    from processing.prompts import chexpert_5x200_prompts, rsna_pneumonia_prompts

    if name == "chexpert5x200":
        return chexpert_5x200_prompts()
    if name == "rsna":
        return rsna_pneumonia_prompts()
    if name == "demo":
        from processing.demo_data import demo_class_prompts

        return demo_class_prompts()
    raise ValueError(f"unknown prompt preset {name!r}; available: 'chexpert5x200', 'rsna', 'demo'")


def class_embeddings_from_prompts(
    prompt_embeddings: ArrayLike, class_index: ArrayLike, num_classes: int | None = None
) -> torch.Tensor:
    """Class embeddings from prompt embeddings: `normalize(mean over the class's prompts)`.

    The prompt embeddings must be the **unnormalised** projections (`get_text_features`), as in the reference;
    normalising each prompt first gives a different mean. A prompt listed twice counts twice.

    Args:
        prompt_embeddings: `[N, P]` float, one row per prompt.
        class_index: `[N]` int, the class of each prompt (0 .. C-1).
        num_classes: C; default `max(class_index) + 1`.

    Returns:
        `[C, P]` L2-normalised class embeddings, in the dtype of `prompt_embeddings`.
    """
    emb = as_float_tensor(prompt_embeddings, "prompt_embeddings", 2)
    idx = torch.as_tensor(as_1d_array(class_index, "class_index")).long()
    check_same_length(prompt_embeddings=emb, class_index=idx)
    num_classes = int(idx.max()) + 1 if num_classes is None else num_classes
    if len(idx) and (idx.min() < 0 or idx.max() >= num_classes):
        raise ValueError(f"`class_index` values must lie in [0, {num_classes}); got {sorted(set(idx.tolist()))}")
    counts = torch.bincount(idx, minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(
            f"every class needs at least one prompt; classes without: {torch.nonzero(counts == 0).flatten().tolist()}"
        )
    sums = torch.zeros(num_classes, emb.shape[1], dtype=emb.dtype).index_add_(0, idx, emb)
    return l2_normalize(sums / counts.unsqueeze(1).to(emb.dtype))


def encode_prompt_ensemble(
    ensemble: Mapping[str, Sequence[str]],
    encode_text: Callable[[list[str]], ArrayLike],
    batch_size: int = 256,
) -> tuple[list[str], torch.Tensor]:
    """Embed a prompt ensemble once and reduce it to class embeddings.

    Compute this once per model and ensemble and reuse it for every image batch (the reference recomputes it per
    batch, with the same result).

    Args:
        ensemble: class -> prompts (see `processing.prompts`).
        encode_text: maps a list of prompts to `[n, P]` **unnormalised** embeddings (tokenisation, and any
            `process_text` cleanup, happen inside it).
        batch_size: prompts per `encode_text` call.

    Returns:
        `(class_names, class_embeddings [C, P])`.
    """
    from processing.prompts import flatten_prompt_ensemble

    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive; got {batch_size}")
    prompts, class_index, names = flatten_prompt_ensemble(ensemble)
    chunks = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            out = as_float_tensor(encode_text(batch), "encode_text(prompts)", 2)
            if out.shape[0] != len(batch):
                raise ValueError(f"`encode_text` returned {out.shape[0]} rows for {len(batch)} prompts")
            chunks.append(out)
    return names, class_embeddings_from_prompts(torch.cat(chunks), class_index, len(names))


def zero_shot_logits(image_embeds: ArrayLike, class_embeds: ArrayLike, normalize_images: bool = True) -> torch.Tensor:
    """Cosine similarities between images and class embeddings.

    Args:
        image_embeds: `[N, P]`; normalised here unless `normalize_images=False` (the reference's image features are
            already normalised; normalising again changes them by at most an ulp).
        class_embeds: `[C, P]`, already normalised (`class_embeddings_from_prompts`).

    Returns:
        `[N, C]` cosines.
    """
    img = as_float_tensor(image_embeds, "image_embeds", 2)
    cls = as_float_tensor(class_embeds, "class_embeds", 2)
    if img.shape[1] != cls.shape[1]:
        raise ValueError(f"embedding sizes differ: image_embeds {tuple(img.shape)}, class_embeds {tuple(cls.shape)}")
    if normalize_images:
        img = l2_normalize(img)
    return img @ cls.to(img.dtype).T


@dataclass
class ZeroShotPrediction:
    """Zero-shot scores of N images (or studies) against C classes.

    Attributes:
        class_names: the C class names, in column order.
        logits: `[N, C]` cosine similarities (what the reference ranks by).
        probabilities: `[N, C]` `softmax(exp(logit_scale) * cosine)` over the classes, as the pipeline reports.
        predictions: `[N]` argmax class indices (first maximum wins).
    """

    class_names: list[str]
    logits: torch.Tensor
    probabilities: torch.Tensor
    predictions: torch.Tensor

    @property
    def labels(self) -> list[str]:
        """The predicted class name of each image."""
        return [self.class_names[i] for i in self.predictions.tolist()]


class ZeroShotClassifier:
    """Prompt-ensemble zero-shot classifier over an ALTA model.

    Args:
        model: an ALTA model (`AltaModel`, `AltaForPreTraining` or their custom-code classes), in eval mode.
        processor: its `AltaProcessor`.
        class_prompts: class name -> prompts (several prompts per class are averaged as the reference does), or a
            preset name (see `prompt_preset`).
        clean_text: put every prompt through the reference's `process_text` first (the CheXpert 5x200 protocol; note
            it drops one-word sentences, so a bare "cardiomegaly" becomes an empty prompt).
        max_length: prompt padding length (128 for CheXpert 5x200, 10 for RSNA).
        cache_dir: if given, class embeddings are saved there and reused (see the module docstring).
        text_batch_size: prompts per text forward.

    Example:

    ```python
    >>> clf = ZeroShotClassifier(model, processor, "chexpert5x200")
    >>> pred = clf.predict(["a.png", "b.dcm"])          # images: the reference's single-frontal path
    >>> pred = clf.predict([{"frontal": "f.png", "lateral": "l.png", "prior_frontal": "p.png"}])  # studies
    >>> pred.labels, pred.probabilities
    ```
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        class_prompts: Mapping[str, Sequence[str]] | str,
        clean_text: bool = True,
        max_length: int = 128,
        cache_dir: str | os.PathLike | None = None,
        text_batch_size: int = 256,
    ) -> None:
        from processing.prompts import validate_prompt_ensemble

        self.model = unwrap_alta_model(model, "dual_encoder")
        self.processor = processor
        prompts = prompt_preset(class_prompts) if isinstance(class_prompts, str) else class_prompts
        self.class_prompts = validate_prompt_ensemble(prompts)
        self.class_names = list(self.class_prompts)
        self.clean_text = clean_text
        self.max_length = int(max_length)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.text_batch_size = text_batch_size
        self._class_embeddings: torch.Tensor | None = None

    # -- class embeddings -------------------------------------------------------------------------------------

    def cache_key(self) -> str:
        """sha256 over the text-side weights, the tokenizer vocabulary, the tokenisation settings and the prompts."""
        digest = hashlib.sha256()
        state = self.model.state_dict()
        for name in sorted(state):
            if name.startswith(("text_model.", "text_projection.")):
                tensor = state[name].detach().to("cpu").contiguous()
                digest.update(name.encode())
                digest.update(str(tensor.dtype).encode())
                digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        vocab = sorted(tokenizer.get_vocab().items())
        settings = {"clean_text": self.clean_text, "max_length": self.max_length, "prompts": self.class_prompts}
        digest.update(json.dumps(vocab).encode())
        digest.update(json.dumps(settings, sort_keys=False).encode())
        return digest.hexdigest()

    def _cache_file(self) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"alta-class-embeddings-{self.cache_key()[:32]}.safetensors"

    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return embed_texts(
            self.model,
            self.processor,
            prompts,
            batch_size=self.text_batch_size,
            normalize=False,  # the class mean is taken over unnormalised prompt embeddings, as the reference does
            max_length=self.max_length,
            clean_text=self.clean_text,
        )

    def compute_class_embeddings(self) -> torch.Tensor:
        """Run the text tower over all prompts now (no caching): `[C, P]` normalised class embeddings."""
        _, embeds = encode_prompt_ensemble(self.class_prompts, self._encode_prompts, batch_size=self.text_batch_size)
        return embeds

    @property
    def class_embeddings(self) -> torch.Tensor:
        """`[C, P]` L2-normalised class embeddings, computed on first access (or loaded from the cache file)."""
        if self._class_embeddings is None:
            path = self._cache_file()
            if path is not None and path.is_file():
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as f:
                    names = json.loads(f.metadata()["class_names"])
                    if names != self.class_names:
                        raise ValueError(f"{path}: cached classes {names} differ from {self.class_names}")
                    self._class_embeddings = f.get_tensor("class_embeddings")
            else:
                self._class_embeddings = self.compute_class_embeddings()
                if path is not None:
                    from safetensors.torch import save_file

                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(".tmp")
                    save_file(
                        {"class_embeddings": self._class_embeddings.contiguous()},
                        str(tmp),
                        metadata={"class_names": json.dumps(self.class_names), "key": self.cache_key()},
                    )
                    os.replace(tmp, path)
        return self._class_embeddings

    # -- scoring ----------------------------------------------------------------------------------------------

    def scores_from_embeddings(self, image_embeds: torch.Tensor) -> ZeroShotPrediction:
        """Score ready image embeddings `[N, P]` (normalised here) against the classes."""
        logits = zero_shot_logits(image_embeds, self.class_embeddings)
        scale = self.model.logit_scale.detach().float().exp().cpu()
        probabilities = torch.softmax(scale * logits, dim=-1)
        return ZeroShotPrediction(
            class_names=list(self.class_names),
            logits=logits,
            probabilities=probabilities,
            predictions=logits.argmax(dim=-1),
        )

    def predict(
        self, images: Sequence[Any], batch_size: int = 32, dicom_rule: str | None = None
    ) -> ZeroShotPrediction:
        """Classify images (single-frontal path) or studies (multiview/temporal path with `view_mask`).

        Args:
            images: N images (paths, PIL, arrays, DICOM) or N studies (dicts/lists of views); one kind per call.
                One image or one study alone is accepted too.
            batch_size: images per forward; the class embeddings are not recomputed per batch.
            dicom_rule: `"rsna"` for the reference's RSNA DICOM rule.

        Returns:
            `ZeroShotPrediction` with `[N, C]` cosines and probabilities and `[N]` predictions.
        """
        if is_single_input(images):
            images = [images]  # one image or one study
        elif not isinstance(images, torch.Tensor):
            images = list(images)  # lists, tuples, a `datasets` column
        self.class_embeddings  # noqa: B018 - text tower first, so a bad prompt fails before the image work
        return self.scores_from_embeddings(
            embed_images(self.model, self.processor, images, batch_size, dicom_rule=dicom_rule)
        )

    __call__ = predict


__all__ = [
    "ZeroShotClassifier",
    "ZeroShotPrediction",
    "class_embeddings_from_prompts",
    "encode_prompt_ensemble",
    "prompt_preset",
    "zero_shot_logits",
]
