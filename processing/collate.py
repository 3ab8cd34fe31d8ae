"""Pretraining collation: studies + reports → the batch `AltaForPreTraining` takes.

Sample format (one mapping per study):
    ``{"frontal": img, "lateral": img | None, "prior_frontal": img | None, "prior_lateral": img | None,
    "report": str}``; images are anything `AltaImageProcessor` reads (PIL, numpy, path, DICOM). Other keys are
    ignored. A sample that is `None`, or has ``"unreadable": True``, or whose files cannot be decoded, is dropped
    from the batch and counted (`AltaPretrainingCollator.num_dropped`), with a warning.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from modeling_alta.configuration_alta import STUDY_SLOTS
from modeling_alta.processing_alta import DEFAULT_MAX_LENGTH, AltaProcessor

from .reports import shuffle_sentences


logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def mask_tokens(
    input_ids: torch.Tensor,
    special_ids: Sequence[int],
    mask_token_id: int,
    probability: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's MLM rule: each non-special token is picked with `probability` and *every* picked token
    becomes ``[MASK]`` (no 80/10/10 split, despite the reference docstring).

    Args:
        input_ids: long ``[B, L]``.
        special_ids: ids never masked ([CLS], [SEP], [PAD], ...).
        mask_token_id: id of ``[MASK]``.
        probability: masking probability (0.5 in ALTA).
        generator: torch generator, for reproducible masks.

    Returns:
        ``(mlm_input_ids, mlm_labels)``, both long ``[B, L]``; labels are the original ids where masked and -100
        elsewhere.
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"mlm probability must be in [0, 1]; got {probability}")
    special = torch.isin(input_ids, torch.as_tensor(list(special_ids), dtype=input_ids.dtype))
    draws = torch.rand(input_ids.shape, generator=generator)
    picked = (draws < probability) & ~special
    mlm_input_ids = torch.where(picked, torch.full_like(input_ids, mask_token_id), input_ids)
    mlm_labels = torch.where(picked, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return mlm_input_ids, mlm_labels


class AltaPretrainingCollator:
    """Collate study samples into an ALTA pretraining batch (use as a `DataLoader` `collate_fn`).

    Args:
        processor: an `AltaProcessor` (image processor + CXR-BERT tokenizer).
        mlm_probability: share of non-special report tokens replaced by ``[MASK]`` (0.5).
        max_length: report length in tokens (128); longer reports are truncated.
        seed: base seed. Each call draws from ``SeedSequence([seed, epoch, worker id, call index])``, so batches are
            reproducible and `DataLoader` workers (which each hold a copy of the collator) do not repeat each
            other's augmentations.
        augment: apply the training image augmentation (random affine + jitter with shared current/prior draws).
        shuffle_reports: shuffle report sentences (the reference does, in training).

    Returns (per call) a dict with exactly:
        `pixel_values` float ``[B, 4, 3, 224, 224]``, `view_mask` bool ``[B, 4]``, `reconstruction_pixel_values`
        float ``[B, 3, 448, 448]``, `input_ids`, `attention_mask`, `token_type_ids`, `mlm_input_ids`,
        `mlm_labels` long ``[B, max_length]``.
    """

    def __init__(
        self,
        processor: AltaProcessor,
        mlm_probability: float = 0.5,
        max_length: int = DEFAULT_MAX_LENGTH,
        seed: int = 0,
        augment: bool = True,
        shuffle_reports: bool = True,
    ) -> None:
        if not 0.0 <= mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in [0, 1]; got {mlm_probability}")
        self.processor = processor
        self.mlm_probability = mlm_probability
        self.max_length = max_length
        self.seed = seed
        self.augment = augment
        self.shuffle_reports = shuffle_reports
        self.epoch = 0
        self.num_calls = 0
        self.num_dropped = 0
        tokenizer = processor.tokenizer
        self.mask_token_id = tokenizer.mask_token_id
        self.special_ids = sorted(set(tokenizer.all_special_ids))

    def set_epoch(self, epoch: int) -> None:
        """Change the random stream per epoch (call it where `DistributedSampler.set_epoch` is called)."""
        self.epoch = int(epoch)
        self.num_calls = 0

    def _streams(self, key: Sequence[int] | None = None) -> tuple[np.random.Generator, random.Random, torch.Generator]:
        if key is None:
            worker = torch.utils.data.get_worker_info()
            worker_id = worker.id if worker is not None else 0
            key = [self.seed, self.epoch, worker_id, self.num_calls]
            self.num_calls += 1
        sequence = np.random.SeedSequence(list(key))
        image_seed, text_seed, mask_seed = (int(s) for s in sequence.generate_state(3, dtype=np.uint32))
        return np.random.default_rng(image_seed), random.Random(text_seed), torch.Generator().manual_seed(mask_seed)

    def _check_sample(self, sample: Any, index: int) -> str | None:
        """Return why a sample must be dropped, or None if it is usable."""
        if sample is None:
            return "sample is None"
        if not isinstance(sample, Mapping):
            raise TypeError(f"sample {index}: expected a mapping with views and 'report'; got {type(sample).__name__}")
        if sample.get("unreadable", False):
            return "marked unreadable"
        return None

    def collate_keyed(self, samples: Sequence[Any], key: Sequence[int]) -> dict[str, torch.Tensor]:
        """Like calling the collator, with every random draw taken from `SeedSequence(key)` alone (no worker id, no
        call count): with `key = [seed, epoch, study index]` a study gets the same augmentation, shuffle and MLM
        masking whichever process or DataLoader worker collates it."""
        return self._collate(samples, self._streams(key))

    def __call__(self, samples: Sequence[Any]) -> dict[str, torch.Tensor]:
        return self._collate(samples, self._streams())

    def _collate(
        self, samples: Sequence[Any], streams: tuple[np.random.Generator, random.Random, torch.Generator]
    ) -> dict[str, torch.Tensor]:
        image_rng, text_rng, mask_generator = streams
        processor = self.processor
        studies, reports = [], []
        dropped: list[str] = []
        for index, sample in enumerate(samples):
            reason = self._check_sample(sample, index)
            if reason is None:
                report = sample.get("report")
                if not isinstance(report, str) or not report.strip():
                    raise ValueError(f"sample {index}: 'report' must be a non-empty string; got {report!r}")
                if sample.get("frontal") is None:
                    raise ValueError(f"sample {index}: no frontal view ('frontal' is missing or None)")
                study = {name: sample.get(name) for name in STUDY_SLOTS}
                try:
                    # Decode now, so that an unreadable file drops this sample instead of failing the whole batch.
                    # (A missing pydicom raises ImportError and is not caught: it would drop every DICOM.)
                    study = {
                        name: processor.image_processor.load(img) if img is not None else None
                        for name, img in study.items()
                    }
                except (ValueError, FileNotFoundError) as err:
                    reason = str(err)
            if reason is not None:
                dropped.append(f"sample {index}: {reason}")
                continue
            studies.append(study)
            reports.append(shuffle_sentences(report, text_rng) if self.shuffle_reports else report)
        if dropped:
            self.num_dropped += len(dropped)
            logger.warning("dropped %d unreadable sample(s) from the batch: %s", len(dropped), "; ".join(dropped))
        if not studies:
            raise ValueError(f"every sample of the batch ({len(samples)}) was dropped: {'; '.join(dropped)}")

        images = processor.image_processor(
            studies, return_tensors="pt", train=self.augment, generator=image_rng, return_reconstruction=True
        )
        text = processor(
            text=reports, return_tensors="pt", padding="max_length", max_length=self.max_length, truncation=True
        )
        mlm_input_ids, mlm_labels = mask_tokens(
            text["input_ids"], self.special_ids, self.mask_token_id, self.mlm_probability, mask_generator
        )
        return {
            "pixel_values": images["pixel_values"],
            "view_mask": images["view_mask"],
            "reconstruction_pixel_values": images["reconstruction_pixel_values"],
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "token_type_ids": text["token_type_ids"],
            "mlm_input_ids": mlm_input_ids,
            "mlm_labels": mlm_labels,
        }


__all__ = ["IGNORE_INDEX", "AltaPretrainingCollator", "mask_tokens"]
