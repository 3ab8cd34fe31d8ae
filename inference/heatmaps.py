"""Word-to-patch similarity maps: where in a radiograph a phrase matches, from ALTA's local projection heads."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from modeling_alta.modeling_alta import unwrap_alta_model
from modeling_alta.processing_alta import encode_texts

from .embedding import _device, default_text_length, pixel_inputs


def model_view(processor: Any, image: Any, dicom_rule: str | None = None) -> Any:
    """The uint8 gray crop the model sees for one image (PIL "L", `crop_size` square): for drawing heatmaps, whose
    patch grid covers this crop and not the uncropped radiograph."""
    from PIL import Image

    from modeling_alta.image_processing_alta import resize_and_crop_uint8

    image_processor = getattr(processor, "image_processor", processor)
    loaded = image_processor.load(image, dicom_rule)
    crop = resize_and_crop_uint8(
        loaded, image_processor.shortest_edge, image_processor.crop_size, image_processor.resample
    )
    return Image.fromarray(crop, "L")


@torch.no_grad()
def word_patch_similarity(
    model: Any,
    processor: Any,
    image: Any,
    phrase: str,
    reduction: Literal["mean", "max"] = "mean",
    dicom_rule: str | None = None,
) -> np.ndarray:
    """Similarity of a phrase to every patch of a radiograph, from the local projection heads.

    Patch features are `get_image_patch_features` of the single frontal `[1, N, P]`; word features are
    `get_text_token_features` `[1, L, P]` at the phrase's word-piece positions ([CLS], [SEP] and padding left
    out). Both are L2-normalised. With `reduction="mean"` (default) each patch scores the cosine with the
    normalised mean of the word features, i.e. with the phrase as a whole; with `"max"` it scores its best-matching
    word (sharper, but one generic word can dominate). The local heads are the ones trained by ALTA's word-patch
    loss, so this is the similarity that loss shapes (without its attention softmaxes, which would need the whole
    text batch).

    Args:
        image: one image (path, PIL, array, DICOM).
        phrase: e.g. "left pleural effusion" (raw; tokenised like training).

    Returns:
        float32 `[g, g]` patch grid (g = image_size / patch_size), row-major as the image.
    """
    if reduction not in ("mean", "max"):
        raise ValueError(f"`reduction` must be 'mean' or 'max'; got {reduction!r}")
    if not isinstance(phrase, str) or not phrase.strip():
        raise ValueError(f"`phrase` must be a non-empty string; got {phrase!r}")
    model = unwrap_alta_model(model, "dual_encoder")
    device = _device(model)
    pixels = pixel_inputs(processor, [image], dicom_rule)["pixel_values"]
    if pixels.dim() != 4:
        raise ValueError(f"the heatmap needs one image, not a study; got pixel_values of shape {tuple(pixels.shape)}")
    patches = F.normalize(model.get_image_patch_features(pixels.to(device))[0].float(), dim=-1)  # [N, P]
    tokenizer = getattr(processor, "tokenizer", processor)
    enc = encode_texts(tokenizer, [phrase], default_text_length(processor), return_tensors="pt")
    tokens = model.get_text_token_features(**{k: v.to(device) for k, v in enc.items()})[0].float()  # [L, P]
    n_tokens = int(enc["attention_mask"][0].sum())
    if n_tokens <= 2:
        raise ValueError(f"the phrase {phrase!r} has no word tokens after tokenisation")
    words = F.normalize(tokens[1 : n_tokens - 1], dim=-1)  # without [CLS] and [SEP]
    if reduction == "mean":
        sim = patches @ F.normalize(words.mean(0), dim=-1)
    else:
        sim = (patches @ words.T).max(dim=1).values
    grid = int(round(sim.shape[0] ** 0.5))
    if grid * grid != sim.shape[0]:
        raise ValueError(f"{sim.shape[0]} patches do not form a square grid")
    return sim.reshape(grid, grid).cpu().numpy()


__all__ = ["model_view", "word_patch_similarity"]
