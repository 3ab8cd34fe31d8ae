# Copyright 2026 The alta developers. Licensed under the Apache License, Version 2.0.
"""transformers pipelines for ALTA that ship with the model as remote code: studies, DICOM and prompt ensembles.

`save_pretrained` writes `custom_pipelines` into `config.json` and copies this file beside the weights, so that with
`trust_remote_code=True` these classes replace the built-in tasks of the same name for ALTA folders (transformers
looks a model's custom pipeline up before its own tasks):

```python
>>> from transformers import pipeline
>>> clf = pipeline("zero-shot-image-classification", model="path/to/alta", trust_remote_code=True)
>>> clf("pa.png", candidate_labels=["pleural effusion", "no finding"], hypothesis_template="{}")    # as built in
>>> clf(["a.dcm", pydicom_dataset, {"frontal": "f.dcm", "lateral": "l.dcm", "prior_frontal": "p.dcm"}],
...     candidate_labels="chexpert5x200", batch_size=8)                            # DICOM, studies, an ensemble
>>> embed = pipeline("image-feature-extraction", model="path/to/alta", trust_remote_code=True)
>>> embed({"frontal": "f.dcm", "lateral": "l.dcm"}, return_tensors=True)         # [1, projection_dim]
```

Inputs, alone or in a list (a list is a batch; `batch_size` groups it into forwards):

- an image: a PNG/JPEG/DICOM path (DICOM is recognised by its "DICM" magic or a `.dcm` suffix), an http(s) URL,
  a PIL image, a numpy array or a pydicom `Dataset`; it goes through the model's single-frontal path
  (`pixel_values [B, 3, H, W]`, the reference's evaluation path);
- a study: a dict with keys among `STUDY_SLOTS` (`frontal`, `lateral`, `prior_frontal`, `prior_lateral`; missing
  or `None` = absent, the frontal is required) whose values are any of the image forms above; it goes through the
  multiview/temporal path (`pixel_values [B, 4, 3, H, W]` with `view_mask`). Images and studies may be mixed in one
  list.

Classes for the zero-shot pipeline (`candidate_labels=`):

- a list of labels, each put into `hypothesis_template` (default `"This is a photo of {}."`, as built in) and
  tokenised as the built-in pipeline does (padded to the longest, no cleanup): the scores are the built-in's;
- the name of a prompt ensemble (`"chexpert5x200"`, `"rsna"`; see `prompts_alta.NAMED_PROMPT_ENSEMBLES`), tokenised
  as its protocol is (cleanup and length), classes named as in the ensemble;
- a dict `{label: [prompts]}`: each class embedding is `normalize(mean of its unnormalised prompt embeddings)`, as
  the reference does; the prompts are used as given (the template is not applied);
- an `AltaClassEmbeddings` from `encode_classes(...)`, to reuse class embeddings across calls.

Class embeddings are computed once per call, before any image is processed, whatever the number of inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import Pipeline
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from .configuration_alta import STUDY_SLOTS
from .modeling_alta import unwrap_alta_model
from .processing_alta import encode_texts
from .prompts_alta import flatten_prompt_ensemble, named_prompt_ensemble, validate_prompt_ensemble


#: What `save_pretrained` writes into `config.json` (`impl` is `"<file>.<class>"` of this folder).
ALTA_CUSTOM_PIPELINES: dict[str, dict[str, Any]] = {
    "zero-shot-image-classification": {
        "impl": "pipeline_alta.AltaZeroShotImageClassificationPipeline",
        "pt": ["AutoModelForZeroShotImageClassification"],
        "type": "multimodal",
    },
    "image-feature-extraction": {
        "impl": "pipeline_alta.AltaImageFeatureExtractionPipeline",
        "pt": ["AutoModel"],
        "type": "image",
    },
}

DEFAULT_HYPOTHESIS_TEMPLATE = "This is a photo of {}."  # the built-in pipeline's default, kept for drop-in use
_TEXT_BATCH_SIZE = 256


def pooled_embeddings(output: Any) -> torch.Tensor:
    """The projected embedding `[B, P]` from `get_image_features`/`get_text_features`, whether they return a tensor
    or (the transformers 5 CLIP convention) an output whose `pooler_output` is the projection."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if not isinstance(pooled, torch.Tensor):
        raise TypeError(f"expected a tensor or an output with `pooler_output`; got {type(output).__name__}")
    return pooled


@dataclass
class AltaClassEmbeddings:
    """Zero-shot classes ready to score against: `names` (C) and L2-normalised `embeddings` `[C, P]`."""

    names: list[str]
    embeddings: torch.Tensor

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.names):
            raise ValueError(
                f"class embeddings must be [C, P] with C = {len(self.names)} names; got {tuple(self.embeddings.shape)}"
            )


# ----------------------------------------------------------------------------------------------------------------
# Inputs: one image or study per item, batches that may mix both
# ----------------------------------------------------------------------------------------------------------------


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _fetch_urls(value: Any, timeout: float | None) -> Any:
    # Only URLs go through transformers' loader (PIL only, converts to RGB); files, DICOM and datasets are decoded by
    # the image processor itself.
    if _is_url(value):
        from transformers.image_utils import load_image

        return load_image(value, timeout=timeout)
    if isinstance(value, Mapping):
        return {key: _fetch_urls(view, timeout) for key, view in value.items()}
    return value


def collate_pixel_inputs(items: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, Any]:
    """Batch preprocessed items, images (`pixel_values [1, 3, H, W]`) and studies (`[1, V, 3, H, W]` plus
    `view_mask [1, V]`) possibly mixed: each kind is stacked on its own and `*_positions` say where its rows go."""
    images = [i for i, item in enumerate(items) if "view_mask" not in item]
    studies = [i for i, item in enumerate(items) if "view_mask" in item]
    batch: dict[str, Any] = {"num_items": len(items)}
    if images:
        batch["image_pixel_values"] = torch.cat([items[i]["pixel_values"] for i in images])
        batch["image_positions"] = torch.tensor(images, dtype=torch.long)
    if studies:
        batch["study_pixel_values"] = torch.cat([items[i]["pixel_values"] for i in studies])
        batch["study_view_mask"] = torch.cat([items[i]["view_mask"] for i in studies])
        batch["study_positions"] = torch.tensor(studies, dtype=torch.long)
    return batch


class _AltaImagePipelineMixin:
    """Preprocessing, batching and the image forward shared by the ALTA pipelines."""

    def _check_inputs(self, inputs: Any, kwargs: dict[str, Any]) -> Any:
        if "images" in kwargs:  # the built-in pipelines' older keyword
            if inputs is not None:
                raise ValueError("pass the images either positionally or as `images=`, not both")
            inputs = kwargs.pop("images")
        if inputs is None:
            raise ValueError(f"{type(self).__name__} needs an image, a study, or a list of them; got None")
        if isinstance(inputs, tuple):
            inputs = list(inputs)  # a tuple is a batch here, as a list is (a study is a dict)
        if isinstance(inputs, list) and not inputs:
            raise ValueError("got an empty list of images; nothing to process")
        return inputs

    def preprocess(self, item: Any, timeout: float | None = None, dicom_rule: str | None = None) -> dict[str, Any]:
        """One image or study → `pixel_values` `[1, 3, H, W]`, or `[1, V, 3, H, W]` and `view_mask` `[1, V]`."""
        if isinstance(item, (list, tuple)):
            raise TypeError(
                "a nested list is not an input: pass a study as a dict with keys among "
                f"{list(STUDY_SLOTS)}, and several inputs as one flat list"
            )
        kwargs = {"dicom_rule": dicom_rule} if dicom_rule else {}
        out = self.image_processor(images=[_fetch_urls(item, timeout)], return_tensors="pt", **kwargs)
        if isinstance(item, Mapping):
            return {"pixel_values": out["pixel_values"], "view_mask": out["view_mask"]}
        return {"pixel_values": out["pixel_values"]}

    def get_iterator(
        self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params, postprocess_params
    ):
        # As `Pipeline.get_iterator`, with a collate function that batches images and studies side by side (the
        # default one concatenates `pixel_values` and cannot mix [1,3,H,W] with [1,V,3,H,W]).
        if isinstance(inputs, Sized):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:
            num_workers = min(num_workers, 1)  # an iterable cannot be split between workers
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=collate_pixel_inputs)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def _image_embeddings(self, model_inputs: dict[str, Any], normalize: bool = True) -> torch.Tensor:
        """float32 embeddings `[N, P]` (L2-normalised unless `normalize=False`) of a collated batch or of one
        preprocessed item, in input order: images through the single-frontal path, studies through the study path."""
        batch = model_inputs if "num_items" in model_inputs else collate_pixel_inputs([model_inputs])
        model = unwrap_alta_model(self.model, "dual_encoder")
        dtype = next(model.parameters()).dtype
        out: torch.Tensor | None = None
        for kind in ("image", "study"):
            if f"{kind}_positions" not in batch:
                continue
            pixels = batch[f"{kind}_pixel_values"].to(dtype)
            view_mask = batch.get("study_view_mask") if kind == "study" else None
            embeds = pooled_embeddings(model.get_image_features(pixels, view_mask=view_mask, return_dict=True)).float()
            if out is None:
                out = embeds.new_zeros(int(batch["num_items"]), embeds.shape[-1])
            out[batch[f"{kind}_positions"].to(out.device)] = embeds
        return F.normalize(out, dim=-1) if normalize else out


# ----------------------------------------------------------------------------------------------------------------
# Zero-shot classification
# ----------------------------------------------------------------------------------------------------------------


class AltaZeroShotImageClassificationPipeline(_AltaImagePipelineMixin, Pipeline):
    r"""
    Zero-shot classification of chest radiographs and studies with an ALTA model: a drop-in for transformers'
    `ZeroShotImageClassificationPipeline` (same call, same output, same scores for a list of labels) that also
    takes DICOM files, pydicom datasets, four-slot studies and prompt ensembles (see the module docstring).

    Call arguments:
        inputs: one image or study, or a list of them (then the result is a list, one entry per input).
        candidate_labels (`list[str]`, `str`, `dict[str, list[str]]` or `AltaClassEmbeddings`): the classes.
        hypothesis_template (`str`, *optional*, defaults to `"This is a photo of {}."`): for a list of labels only.
        clean_text (`bool`, *optional*): override the prompt cleanup (`process_text`); default: the ensemble's
            protocol for a named ensemble, off otherwise.
        max_length (`int`, *optional*): pad and truncate prompts to this many tokens; default: the ensemble's for a
            named ensemble, otherwise pad to the longest prompt without truncation.
        dicom_rule (`str`, *optional*): `"voi"` or `"rsna"` (see `cxr_io_alta.dicom_to_uint8`).
        batch_size (`int`, *optional*), num_workers (`int`, *optional*): as for every pipeline.
        timeout (`float`, *optional*): for URLs.

    Returns:
        Per input, a list of `{"score": float, "label": str}` sorted by decreasing score, the scores being
        `softmax(exp(logit_scale) * cosine)` over the classes.
    """

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = True

    def __call__(self, inputs: Any = None, candidate_labels: Any = None, **kwargs: Any) -> Any:
        inputs = self._check_inputs(inputs, kwargs)
        if candidate_labels is None:
            raise ValueError(
                "`candidate_labels` is required: a list of labels, the name of a prompt ensemble "
                "(e.g. 'chexpert5x200'), a dict {label: [prompts]} or an AltaClassEmbeddings"
            )
        classes = self.encode_classes(
            candidate_labels,
            hypothesis_template=kwargs.pop("hypothesis_template", None),
            clean_text=kwargs.pop("clean_text", None),
            max_length=kwargs.pop("max_length", None),
        )
        kwargs.pop("tokenizer_kwargs", None)  # accepted and ignored by the built-in pipeline too
        return super().__call__(inputs, classes=classes, **kwargs)

    def _sanitize_parameters(
        self,
        classes: AltaClassEmbeddings | None = None,
        timeout: float | None = None,
        dicom_rule: str | None = None,
        **unknown: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword argument(s) {sorted(unknown)}")
        preprocess: dict[str, Any] = {}
        if timeout is not None:
            preprocess["timeout"] = timeout
        if dicom_rule is not None:
            preprocess["dicom_rule"] = dicom_rule
        forward = {"classes": classes} if classes is not None else {}
        postprocess = {"class_names": classes.names} if classes is not None else {}
        return preprocess, forward, postprocess

    # -- classes ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_classes(
        self,
        candidate_labels: Any,
        hypothesis_template: str | None = None,
        clean_text: bool | None = None,
        max_length: int | None = None,
    ) -> AltaClassEmbeddings:
        """Run the text tower over the classes' prompts once: see the class docstring for the argument forms.

        Returns:
            `AltaClassEmbeddings` (names and `[C, P]` normalised embeddings), reusable as `candidate_labels`.
        """
        if isinstance(candidate_labels, AltaClassEmbeddings):
            return candidate_labels
        settings = {"clean_text": False, "max_length": None}
        if isinstance(candidate_labels, str):
            named = named_prompt_ensemble(candidate_labels)
            ensemble = named.build()
            settings = {"clean_text": named.clean_text, "max_length": named.max_length}
        elif isinstance(candidate_labels, Mapping):
            ensemble = validate_prompt_ensemble(candidate_labels)
        elif isinstance(candidate_labels, Sequence) and not candidate_labels:
            raise ValueError("`candidate_labels` is an empty list; pass at least one label")
        elif isinstance(candidate_labels, Sequence):
            labels = list(candidate_labels)
            bad = [label for label in labels if not isinstance(label, str)]
            if bad:
                raise TypeError(f"`candidate_labels` must be strings; got {bad[:5]!r}")
            template = DEFAULT_HYPOTHESIS_TEMPLATE if hypothesis_template is None else hypothesis_template
            # One single-prompt class per label, duplicates kept as separate columns (the built-in does so).
            prompts = [template.format(label) for label in labels]
            return AltaClassEmbeddings(
                labels, self._class_means(prompts, list(range(len(labels))), len(labels), settings)
            )
        else:
            raise TypeError(
                "`candidate_labels` must be a non-empty list of labels, an ensemble name, a dict {label: [prompts]} "
                f"or an AltaClassEmbeddings; got {candidate_labels!r}"
            )
        if clean_text is not None:
            settings["clean_text"] = bool(clean_text)
        if max_length is not None:
            settings["max_length"] = int(max_length)
        prompts, class_index, names = flatten_prompt_ensemble(ensemble)
        return AltaClassEmbeddings(names, self._class_means(prompts, class_index, len(names), settings))

    def _class_means(
        self, prompts: list[str], class_index: list[int], num_classes: int, settings: dict[str, Any]
    ) -> torch.Tensor:
        """`normalize(mean of the unnormalised prompt embeddings of each class)`: `[C, P]` float32 on the CPU."""
        model = unwrap_alta_model(self.model, "dual_encoder")
        device = next(model.parameters()).device
        max_length = settings["max_length"]
        chunks = []
        for start in range(0, len(prompts), _TEXT_BATCH_SIZE):
            batch = prompts[start : start + _TEXT_BATCH_SIZE]
            if max_length is None:
                enc = encode_texts(self.tokenizer, batch, max_length=None, padding=True, truncation=False,
                                   clean_text=settings["clean_text"], allow_empty=True, return_tensors="pt")  # fmt: skip
            else:
                enc = encode_texts(self.tokenizer, batch, max_length=max_length, truncation=True,
                                   clean_text=settings["clean_text"], allow_empty=True, return_tensors="pt")  # fmt: skip
            enc = {key: value.to(device) for key, value in enc.items()}
            chunks.append(pooled_embeddings(model.get_text_features(**enc, return_dict=True)).float().cpu())
        embeds = torch.cat(chunks)
        index = torch.tensor(class_index, dtype=torch.long)
        sums = torch.zeros(num_classes, embeds.shape[1]).index_add_(0, index, embeds)
        counts = torch.bincount(index, minlength=num_classes).clamp_min(1).unsqueeze(1)
        return F.normalize(sums / counts, dim=-1)

    # -- images -------------------------------------------------------------------------------------------------

    def _forward(self, model_inputs: dict[str, Any], classes: AltaClassEmbeddings) -> dict[str, torch.Tensor]:
        image_embeds = self._image_embeddings(model_inputs)
        model = unwrap_alta_model(self.model, "dual_encoder")
        scale = model.logit_scale.detach().float().exp()
        logits = scale * image_embeds @ classes.embeddings.to(image_embeds.device).T
        return {"logits": logits, "image_embeds": image_embeds}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], class_names: list[str]) -> list[dict[str, Any]]:
        logits = model_outputs["logits"].reshape(-1, len(class_names))[0].float().cpu()
        scores = logits.softmax(dim=-1).tolist()
        return [
            {"score": score, "label": label}
            for score, label in sorted(zip(scores, class_names), key=lambda pair: -pair[0])
        ]


# ----------------------------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------------------------


class AltaImageFeatureExtractionPipeline(_AltaImagePipelineMixin, Pipeline):
    r"""
    Image and study embeddings from an ALTA model, in the shape of transformers' `image-feature-extraction` pipeline
    with `pool=True`: per input a `[1, projection_dim]` nested list (a tensor with `return_tensors=True`). The
    embedding is the projected one that zero-shot scoring and retrieval use: an image through the single-frontal
    path, a study (a dict of views) through the multiview/temporal path.

    Call arguments:
        inputs: one image or study, or a list of them (see the module docstring).
        normalize (`bool`, *optional*, defaults to `True`): L2-normalise (cosine retrieval).
        return_tensors (`bool`, *optional*, defaults to `False`): a torch tensor instead of a nested list.
        dicom_rule, batch_size, num_workers, timeout: as for the zero-shot pipeline.
    """

    _load_processor = False
    _load_image_processor = True
    _load_feature_extractor = False
    _load_tokenizer = False

    def __call__(self, inputs: Any = None, **kwargs: Any) -> Any:
        return super().__call__(self._check_inputs(inputs, kwargs), **kwargs)

    def _sanitize_parameters(
        self,
        normalize: bool | None = None,
        return_tensors: bool | None = None,
        pool: bool | None = None,
        timeout: float | None = None,
        dicom_rule: str | None = None,
        **unknown: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword argument(s) {sorted(unknown)}")
        if pool is False:
            raise ValueError(
                "ALTA's feature-extraction pipeline returns pooled (projected) embeddings only; got pool=False"
            )
        preprocess: dict[str, Any] = {}
        if timeout is not None:
            preprocess["timeout"] = timeout
        if dicom_rule is not None:
            preprocess["dicom_rule"] = dicom_rule
        forward = {"normalize": normalize} if normalize is not None else {}
        postprocess = {"return_tensors": return_tensors} if return_tensors is not None else {}
        return preprocess, forward, postprocess

    def _forward(self, model_inputs: dict[str, Any], normalize: bool = True) -> dict[str, torch.Tensor]:
        return {"image_embeds": self._image_embeddings(model_inputs, normalize=normalize)}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], return_tensors: bool = False) -> Any:
        embeds = model_outputs["image_embeds"].reshape(1, -1).cpu()
        return embeds if return_tensors else embeds.tolist()


__all__ = [
    "ALTA_CUSTOM_PIPELINES",
    "AltaClassEmbeddings",
    "AltaImageFeatureExtractionPipeline",
    "AltaZeroShotImageClassificationPipeline",
    "collate_pixel_inputs",
    "pooled_embeddings",
]
