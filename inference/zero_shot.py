"""Zero-shot classification with prompt ensembles, class embeddings computed once and cached.

`ZeroShotClassifier` embeds every prompt of every class **once**, reduces each class to
`normalize(mean of its unnormalised prompt embeddings)` (the reference's rule, alta_reference.md §8), and then scores
any number of image batches against those class embeddings by cosine. The reference recomputes the text features
for every image batch (same result, wasted time); here they are computed lazily on first use and kept while the
text side of the model stays as it is: loading or switching an adapter, `disable_alta_adapters()`, training steps or
a dtype change make them recomputed. With `cache_dir` they are also saved to a file named by a key over everything
that changes the text embedding: the text tower and projection values as used now (the active adapter's included),
the adapter on/off state and module modes, the model config, the tokenizer (vocabulary and settings), the
tokenisation settings and the prompts. The full key is stored in the file and checked on load (a file whose key,
classes or shape do not match is recomputed and replaced, with a warning); files are written atomically under
unique temporary names, so concurrent writers never fail and readers never see half a file.

Presets: `"chexpert5x200"` (the reference's 489-prompt grid, `process_text` cleanup, 128 tokens), `"demo"` (the
built-in demo classes), `"rsna"` (the RSNA pair; use `clean_text=False, max_length=10` as the reference does).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import torch

from modeling_alta.image_processing_alta import is_single_input
from modeling_alta.modeling_alta import unwrap_alta_model

from .arrays import ArrayLike, as_1d_array, as_float_tensor, check_same_length, l2_normalize
from .embedding import embed_images, embed_texts


logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when the key's contents change, so old files are never taken for new ones
# Module attributes that switch adapters (ALTA's `enabled`, PEFT's layer flags) without touching any weight.
_MODE_ATTRIBUTES = ("enabled", "disable_adapters", "_disable_adapters", "merged_adapters", "active_adapter")


def _module_modes(module: Any) -> tuple:
    modes = [("training", bool(module.training))]
    for name in _MODE_ATTRIBUTES:
        value = getattr(module, name, None)
        if isinstance(value, (bool, str, int, list, tuple)):
            modes.append((name, repr(value)))
    return tuple(modes)


def prompt_preset(name: str) -> dict[str, list[str]]:
    """A named prompt ensemble: `"chexpert5x200"`, `"rsna"` (the ensembles that ship with the model, see
    `processing.prompts.NAMED_PROMPT_ENSEMBLES`) or `"demo"` (class -> prompts)."""
    from processing.prompts import NAMED_PROMPT_ENSEMBLES

    if name in NAMED_PROMPT_ENSEMBLES:
        return NAMED_PROMPT_ENSEMBLES[name].build()
    if name == "demo":
        from processing.demo_data import demo_class_prompts

        return demo_class_prompts()
    raise ValueError(f"unknown prompt preset {name!r}; available: {[*NAMED_PROMPT_ENSEMBLES, 'demo']}")


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
        max_length: prompt truncation length (128 for CheXpert 5x200, 10 for RSNA); each chunk of prompts is padded to
            its longest prompt only.
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
        self._token: tuple | None = None

    # -- class embeddings -------------------------------------------------------------------------------------

    def _text_side(self) -> list[tuple[str, Any]]:
        """The modules `get_text_features` runs."""
        return [(name, getattr(self.model, name)) for name in ("text_model", "text_projection")]

    def _state_token(self) -> tuple:
        """Cheap to compute, and different whenever the text embedding may have changed: each tensor's storage,
        version counter (bumped by every in-place write: optimizer steps, adapter switches, `load_state_dict`),
        dtype and device, and every module's mode (train/eval, adapter on/off)."""
        items: list[Any] = []
        for prefix, module in self._text_side():
            for name, tensor in chain(module.named_parameters(), module.named_buffers()):
                items.append((prefix, name, tensor.data_ptr(), tensor._version, str(tensor.dtype), str(tensor.device)))
            items.extend((prefix, name, _module_modes(m)) for name, m in module.named_modules())
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        items.append((id(tokenizer), len(tokenizer), self.clean_text, self.max_length))
        return tuple(items)

    def cache_key(self) -> str:
        """sha256 over everything that changes the text embedding: the text-side tensors as they are now, module
        modes (adapters on/off), the model config, the tokenizer (class, vocabulary, settings), the tokenisation
        settings and the prompts."""
        digest = hashlib.sha256(f"alta-class-embeddings/{CACHE_FORMAT}".encode())
        for prefix, module in self._text_side():
            state = module.state_dict()
            for name in sorted(state):
                tensor = state[name].detach().to("cpu").contiguous()
                digest.update(f"{prefix}.{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
            digest.update(repr([(name, _module_modes(m)) for name, m in module.named_modules()]).encode())
        config = self.model.config.to_dict()
        for volatile in ("_name_or_path", "transformers_version", "vision_config", "torch_dtype", "dtype"):
            config.pop(volatile, None)
        digest.update(json.dumps(config, sort_keys=True, default=str).encode())
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        settings = {
            name: getattr(tokenizer, name, None)
            for name in ("do_lower_case", "strip_accents", "tokenize_chinese_chars", "padding_side")
        }
        digest.update(type(tokenizer).__name__.encode())
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
        digest.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode())
        settings = {"clean_text": self.clean_text, "max_length": self.max_length, "prompts": self.class_prompts}
        digest.update(json.dumps(settings, sort_keys=False).encode())
        return digest.hexdigest()

    def _cache_file(self, key: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"alta-class-embeddings-{key[:32]}.safetensors"

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
        # All prompts in one call: `embed_texts` sorts them by length and runs chunks of `text_batch_size`, each
        # padded to its longest prompt.
        total = sum(len(p) for p in self.class_prompts.values())
        _, embeds = encode_prompt_ensemble(self.class_prompts, self._encode_prompts, batch_size=max(total, 1))
        return embeds

    def _load_cached(self, path: Path, key: str) -> torch.Tensor | None:
        """The cached embeddings if the file is intact and was written for `key`; None (with a warning) otherwise."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                embeds = handle.get_tensor("class_embeddings")
        except Exception as err:  # truncated or not a safetensors file
            logger.warning("class-embedding cache %s cannot be read (%s); recomputing it", path, err)
            return None
        problem = None
        if metadata.get("key") != key:
            problem = (
                f"it was written for another model, tokenizer or prompts (stored key {metadata.get('key')!r:.20})"
            )
        elif metadata.get("class_names") != json.dumps(self.class_names):
            problem = f"its classes {metadata.get('class_names')} differ from {self.class_names}"
        elif embeds.dim() != 2 or embeds.shape[0] != len(self.class_names):
            problem = f"its tensor has shape {tuple(embeds.shape)}, not [{len(self.class_names)}, P]"
        elif not torch.isfinite(embeds).all():
            problem = "its tensor holds non-finite values"
        if problem:
            logger.warning("class-embedding cache %s is not used: %s; recomputing it", path, problem)
            return None
        return embeds

    def _store(self, path: Path, key: str, embeds: torch.Tensor) -> None:
        from safetensors.torch import save

        from processing.atomic import atomic_write_bytes

        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"class_names": json.dumps(self.class_names), "key": key, "format": str(CACHE_FORMAT)}
        atomic_write_bytes(path, save({"class_embeddings": embeds.contiguous()}, metadata=metadata))

    @property
    def class_embeddings(self) -> torch.Tensor:
        """`[C, P]` L2-normalised class embeddings: computed on first access (or loaded from the cache file), and
        again whenever the text side of the model changed since (see the module docstring)."""
        token = self._state_token()
        if self._class_embeddings is not None and token == self._token:
            return self._class_embeddings
        key = self.cache_key() if self.cache_dir is not None else ""
        path = self._cache_file(key)
        embeds = self._load_cached(path, key) if path is not None and path.is_file() else None
        if embeds is None:
            embeds = self.compute_class_embeddings()
            if path is not None:
                self._store(path, key, embeds)
        self._class_embeddings, self._token = embeds, token
        return embeds

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
        self,
        images: Sequence[Any],
        batch_size: int = 32,
        dicom_rule: str | None = None,
        progress: bool = True,
    ) -> ZeroShotPrediction:
        """Classify images (single-frontal path) or studies (multiview/temporal path with `view_mask`).

        Args:
            images: N images (paths, PIL, arrays, DICOM) or N studies (dicts/lists of views); one kind per call.
                One image or one study alone is accepted too.
            batch_size: images per forward; the class embeddings are not recomputed per batch.
            dicom_rule: `"rsna"` for the reference's RSNA DICOM rule.
            progress: show a progress bar with the time left (tqdm) when there is more than one batch.

        Returns:
            `ZeroShotPrediction` with `[N, C]` cosines and probabilities and `[N]` predictions.
        """
        from tqdm.auto import tqdm

        if is_single_input(images):
            images = [images]  # one image or one study
        elif not isinstance(images, torch.Tensor):
            images = list(images)  # lists, tuples, a `datasets` column
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be positive; got {batch_size}")
        if len(images) == 0:
            raise ValueError("`images` is empty; nothing to classify")
        self.class_embeddings  # noqa: B018 - text tower first, so a bad prompt fails before the image work
        chunks = []
        with tqdm(
            total=len(images), unit="image", desc="zero-shot", disable=not progress or len(images) <= batch_size
        ) as bar:
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                try:
                    chunks.append(embed_images(self.model, self.processor, batch, batch_size, dicom_rule=dicom_rule))
                except (ValueError, TypeError, FileNotFoundError) as err:
                    # The processor numbers items within the batch; say where the batch starts in `images`.
                    raise type(err)(f"in the batch of items {start}..{start + len(batch) - 1}: {err}") from err
                bar.update(len(batch))
        return self.scores_from_embeddings(torch.cat(chunks))

    __call__ = predict


__all__ = [
    "ZeroShotClassifier",
    "ZeroShotPrediction",
    "class_embeddings_from_prompts",
    "encode_prompt_ensemble",
    "prompt_preset",
    "zero_shot_logits",
]
