"""Pretraining collation: a batch of studies + reports → the batch `AltaForPreTraining` takes.

Sample format (one mapping per study, as `processing.datasets.IndexedStudies` yields them):
    ``{"index": int, "frontal": img, "lateral": img | None, "prior_frontal": img | None, "prior_lateral": img | None,
    "report": str}``, plus ``"valid": False`` and ``"error"`` for a study the dataset could not decode. Images are
    anything `AltaImageProcessor` reads (PIL, numpy, path, DICOM); other keys are ignored.

Randomness: every random draw of a study (augmentation, sentence shuffle, MLM masking, patch-masking noise) comes
from ``SeedSequence([seed, epoch, index])`` alone, so a study gets the same draws whichever process or DataLoader
worker collates it and whatever else is in its batch: a run gives the same batches on any number of processes and
resumes exactly.

Unreadable or unusable studies (a `None` sample, a sample the dataset marked invalid, a file that does not decode,
no frontal view, an empty report) are left out of the batch; the batch's ``"skipped"`` list names each one with its
study index and reason (the training loop counts and logs them, also when a DataLoader worker collated the batch).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from modeling_alta.processing_alta import DEFAULT_MAX_LENGTH, AltaProcessor, encode_texts

from .datasets import decode_study
from .reports import shuffle_sentences


IGNORE_INDEX = -100


def mask_tokens(
    input_ids: torch.Tensor,
    special_ids: Sequence[int],
    mask_token_id: int,
    probability: float = 0.5,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    *,
    draw_length: int | None = None,
    always_ids: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's MLM rule: each non-special token is picked with `probability` and *every* picked token
    becomes ``[MASK]`` (no 80/10/10 split, despite the reference docstring). Tokens in `always_ids` are picked
    wherever they occur, on top of that draw (the draws are the same with or without them).

    Args:
        input_ids: long ``[B, L]``.
        special_ids: ids never masked ([CLS], [SEP], [PAD], ...).
        mask_token_id: id of ``[MASK]``.
        probability: masking probability (0.5 in ALTA).
        generator: one torch generator for the whole batch, or one per row (row `i` draws ``[1, draw_length]``
            from its own generator and keeps the first `L`, so a study's mask does not depend on its batch, nor on
            the length its batch is padded to).
        draw_length: draws per row with per-row generators (default `L`); give the longest possible length (the
            collator's `max_length`) when batches are padded to their longest text.
        always_ids: ids masked in every report (e.g. the words that name a finding, so that predicting them needs
            the image and not the rest of the report); empty for the reference rule.

    Returns:
        ``(mlm_input_ids, mlm_labels)``, both long ``[B, L]``; labels are the original ids where masked and -100
        elsewhere.
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"mlm probability must be in [0, 1]; got {probability}")
    special = torch.isin(input_ids, torch.as_tensor(list(special_ids), dtype=input_ids.dtype))
    if isinstance(generator, Sequence):
        if len(generator) != input_ids.shape[0]:
            raise ValueError(f"got {len(generator)} generators for {input_ids.shape[0]} rows")
        length = input_ids.shape[1]
        draw_length = length if draw_length is None else int(draw_length)
        if draw_length < length:
            raise ValueError(f"draw_length={draw_length} is shorter than the batch's {length} tokens")
        draws = torch.cat([torch.rand((1, draw_length), generator=g)[:, :length] for g in generator])
    else:
        draws = torch.rand(input_ids.shape, generator=generator)
    picked = draws < probability
    if len(always_ids):
        picked |= torch.isin(input_ids, torch.as_tensor(list(always_ids), dtype=input_ids.dtype))
    picked &= ~special
    mlm_input_ids = torch.where(picked, torch.full_like(input_ids, mask_token_id), input_ids)
    mlm_labels = torch.where(picked, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return mlm_input_ids, mlm_labels


def study_streams(key: Sequence[int]) -> tuple[np.random.Generator, random.Random, torch.Generator, torch.Generator]:
    """The random streams of one study, all derived from `key` (``[seed, epoch, index]``): image augmentation,
    sentence shuffle, MLM masking and patch-masking noise."""
    image_seed, text_seed, mask_seed = (int(s) for s in np.random.SeedSequence(list(key)).generate_state(3))
    noise_seed = int(np.random.SeedSequence([*key, 1]).generate_state(1)[0])
    return (
        np.random.default_rng(image_seed),
        random.Random(text_seed),
        torch.Generator().manual_seed(mask_seed),
        torch.Generator().manual_seed(noise_seed),
    )


class AltaPretrainingCollator:
    """Collate a batch of studies into an ALTA pretraining batch (a `DataLoader` `collate_fn`).

    Args:
        processor: an `AltaProcessor` (image processor + CXR-BERT tokenizer).
        mlm_probability: share of non-special report tokens replaced by ``[MASK]`` (0.5).
        max_length: longest report in tokens (128); longer reports are truncated and listed in `truncated`.
        padding: `"longest"` (default): pad each batch to its longest report, so the text tower's work follows the
            text; `"max_length"`: pad every batch to `max_length` (the reference). Masks, losses and gradients are
            the same either way (a study's MLM draws do not depend on the padded length; padding is masked out).
        mlm_always_mask_ids: token ids masked wherever they occur, on top of the `mlm_probability` draw (see
            `mask_tokens`; empty by default, the reference rule).
        seed: base seed of every study's random streams (see the module docstring).
        augment: apply the training image augmentation (random affine + jitter with shared current/prior draws).
        shuffle_reports: shuffle report sentences (the reference does, in training).
        mask_noise_shape: ``(num_slots, num_patches)``: also return each study's patch-masking noise
            ``mask_noise`` ``[B, num_slots, num_patches]``; `None` leaves the masking to the model's global RNG.

    Returns (per call) a dict with:
        `pixel_values` float ``[B, 4, 3, 224, 224]`` (slot 0 all zeros: the model derives the current frontal from
        `reconstruction_pixel_values`; `view_mask` marks it present), `view_mask` bool ``[B, 4]``, `reconstruction_pixel_values`
        float ``[B, 3, 448, 448]``, `input_ids`, `attention_mask`, `token_type_ids`, `mlm_input_ids`, `mlm_labels`
        long ``[B, L]`` (`L` = the batch's longest report, or `max_length`), `mask_noise` (when `mask_noise_shape` is set), `skipped`: a list of messages,
        one per study left out, and `truncated`: ``"study index N (K tokens)"`` for each report cut to
        `max_length` (the training loop names each study once and summarises, instead of one warning per batch).
        When every study of the batch was left out, only `skipped` and an empty `truncated` are returned.
    """

    def __init__(
        self,
        processor: AltaProcessor,
        mlm_probability: float = 0.5,
        max_length: int = DEFAULT_MAX_LENGTH,
        seed: int = 0,
        augment: bool = True,
        shuffle_reports: bool = True,
        mask_noise_shape: tuple[int, int] | None = None,
        padding: str = "longest",
        mlm_always_mask_ids: Sequence[int] = (),
    ) -> None:
        if not 0.0 <= mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in [0, 1]; got {mlm_probability}")
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length'; got {padding!r}")
        self.padding = padding
        self.processor = processor
        self.mlm_probability = mlm_probability
        self.max_length = max_length
        self.seed = seed
        self.augment = augment
        self.shuffle_reports = shuffle_reports
        self.mask_noise_shape = mask_noise_shape
        self.mlm_always_mask_ids = tuple(int(i) for i in mlm_always_mask_ids)
        self.epoch = 0
        tokenizer = processor.tokenizer
        self.mask_token_id = tokenizer.mask_token_id
        self.special_ids = sorted(set(tokenizer.all_special_ids))

    def set_epoch(self, epoch: int) -> None:
        """Change every study's random streams per epoch (call it where `Sampler.set_epoch` is called)."""
        self.epoch = int(epoch)

    def _usable(self, sample: Any, position: int) -> tuple[int | None, dict[str, Any] | None, str | None]:
        """`(index, decoded study, None)` for a usable sample, `(index, None, reason)` for one to leave out."""
        if sample is None:
            return None, None, f"sample {position}: sample is None"
        if not isinstance(sample, Mapping):
            raise TypeError(f"sample {position}: expected a mapping with views and 'report'; got {type(sample)}")
        index = sample.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            raise ValueError(
                f"sample {position} has no integer 'index' (got {index!r}); every random draw of a study is keyed by "
                "its index: wrap the dataset in processing.datasets.IndexedStudies, or add 'index' yourself"
            )
        where = f"study index {index}"
        if not sample.get("valid", True):
            return index, None, f"{where}: {sample.get('error')}"
        report = sample.get("report")
        if not isinstance(report, str) or not report.strip():
            return index, None, f"{where}: 'report' must be a non-empty string; got {report!r}"
        images, error = decode_study(sample, dicom_rule=self.processor.image_processor.dicom_rule)
        if error is not None:
            return index, None, f"{where}: {error}"
        return index, {**images, "report": report}, None

    def __call__(self, samples: Sequence[Any]) -> dict[str, Any]:
        studies, keys, skipped = [], [], []
        for position, sample in enumerate(samples):
            index, study, reason = self._usable(sample, position)
            if reason is not None:
                skipped.append(reason)
                continue
            studies.append(study)
            # A sample that carries its epoch (IndexedStudies with (epoch, index) keys) is drawn for that epoch,
            # whatever this collator's copy in a persistent DataLoader worker was last told by `set_epoch`.
            keys.append([self.seed, int(sample.get("epoch", self.epoch)), index])
        indices = [key[2] for key in keys]
        if not studies:
            return {"skipped": skipped, "truncated": []}
        streams = [study_streams(key) for key in keys]
        reports = [
            shuffle_sentences(study["report"], text_rng) if self.shuffle_reports else study["report"]
            for study, (_, text_rng, _, _) in zip(studies, streams)
        ]
        images = self.processor.image_processor(
            [{slot: image for slot, image in study.items() if slot != "report"} for study in studies],
            return_tensors="pt",
            train=self.augment,
            generator=[image_rng for image_rng, _, _, _ in streams],
            return_reconstruction=True,
            # The model derives slot 0 from the reconstruction-size frontal: its own crop would be thrown away.
            reconstruction_replaces_frontal=True,
        )
        truncated: list[str] = []
        text = encode_texts(
            self.processor.tokenizer,
            reports,
            max_length=self.max_length,
            padding=self.padding,
            return_tensors="pt",
            names=[f"study index {index}" for index in indices],
            truncated=truncated,
        )
        mlm_input_ids, mlm_labels = mask_tokens(
            text["input_ids"],
            self.special_ids,
            self.mask_token_id,
            self.mlm_probability,
            [s[2] for s in streams],
            draw_length=self.max_length,
            always_ids=self.mlm_always_mask_ids,
        )
        batch: dict[str, Any] = {
            "pixel_values": images["pixel_values"],
            "view_mask": images["view_mask"],
            "reconstruction_pixel_values": images["reconstruction_pixel_values"],
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "token_type_ids": text["token_type_ids"],
            "mlm_input_ids": mlm_input_ids,
            "mlm_labels": mlm_labels,
        }
        if self.mask_noise_shape is not None:
            batch["mask_noise"] = torch.stack([torch.rand(self.mask_noise_shape, generator=s[3]) for s in streams])
        batch["skipped"] = skipped
        batch["truncated"] = truncated
        return batch


__all__ = ["IGNORE_INDEX", "AltaPretrainingCollator", "mask_tokens", "study_streams"]
