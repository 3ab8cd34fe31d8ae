"""AltaPretrainingCollator: exact keys and shapes, the reference MLM rule, reproducibility, dropped samples."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from transformers import BertTokenizer

from modeling_alta.image_processing_alta import AltaImageProcessor
from modeling_alta.processing_alta import AltaProcessor
from processing.collate import IGNORE_INDEX, AltaPretrainingCollator, mask_tokens


EXPECTED_KEYS = {
    "pixel_values",
    "view_mask",
    "reconstruction_pixel_values",
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "mlm_input_ids",
    "mlm_labels",
}
REPORT = "The lungs are clear. No pneumothorax. Heart size normal. Mild bibasilar atelectasis."


@pytest.fixture(scope="module")
def processor(parity_dir):
    tokenizer = BertTokenizer.from_pretrained(parity_dir / "BiomedVLP-CXR-BERT-specialized")
    return AltaProcessor(image_processor=AltaImageProcessor(), tokenizer=tokenizer)


def _samples() -> list[dict]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 280), dtype=np.uint8)
    return [
        {"frontal": image, "lateral": image.T.copy(), "prior_frontal": image, "prior_lateral": None, "report": REPORT},
        {"frontal": image[::-1].copy(), "report": "Small left effusion. Stable cardiomegaly.", "study_id": "s2"},
    ]


def test_batch_keys_shapes_and_slots(processor):
    batch = AltaPretrainingCollator(processor, seed=0)(_samples())
    assert set(batch) == EXPECTED_KEYS
    assert batch["pixel_values"].shape == (2, 4, 3, 224, 224)
    assert batch["reconstruction_pixel_values"].shape == (2, 3, 448, 448)
    assert batch["view_mask"].tolist() == [[True, True, True, False], [True, False, False, False]]
    assert batch["pixel_values"][~batch["view_mask"]].abs().sum() == 0
    for key in ("input_ids", "attention_mask", "token_type_ids", "mlm_input_ids", "mlm_labels"):
        assert batch[key].shape == (2, 128) and batch[key].dtype == torch.long, key
    # sentence shuffling keeps the words
    tokens = processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    reference = processor.tokenizer.tokenize(REPORT)
    assert sorted(tokens[1:-1]) == sorted(reference)


def test_mlm_rule_masks_half_of_the_non_special_tokens(processor):
    tokenizer = processor.tokenizer
    ids = tokenizer([REPORT] * 64, padding="max_length", max_length=128, return_tensors="pt")["input_ids"]
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    mlm_ids, labels = mask_tokens(
        ids, tokenizer.all_special_ids, tokenizer.mask_token_id, 0.5, torch.Generator().manual_seed(0)
    )
    picked = labels != IGNORE_INDEX
    assert not (picked & special).any()  # [CLS], [SEP], [PAD] are never picked
    assert torch.equal(mlm_ids[picked], torch.full_like(mlm_ids[picked], tokenizer.mask_token_id))  # all -> [MASK]
    assert torch.equal(labels[picked], ids[picked])
    assert torch.equal(mlm_ids[~picked], ids[~picked])
    share = picked.sum().item() / (~special).sum().item()
    assert 0.45 < share < 0.55, share
    none_masked = mask_tokens(ids, tokenizer.all_special_ids, tokenizer.mask_token_id, 0.0)[1]
    assert (none_masked == IGNORE_INDEX).all()


def test_seeded_and_reproducible(processor):
    first, second = AltaPretrainingCollator(processor, seed=5), AltaPretrainingCollator(processor, seed=5)
    a, b = first(_samples()), second(_samples())
    for key in EXPECTED_KEYS:
        assert torch.equal(a[key], b[key]), key
    # later calls (and other seeds) draw new augmentations and masks
    c = first(_samples())
    assert not torch.equal(a["pixel_values"], c["pixel_values"])
    assert not torch.equal(a["mlm_labels"], c["mlm_labels"])
    other = AltaPretrainingCollator(processor, seed=6)(_samples())
    assert not torch.equal(a["mlm_labels"], other["mlm_labels"])
    # with augment=False the 448 frontal is the deterministic evaluation crop
    plain = AltaPretrainingCollator(processor, augment=False, shuffle_reports=False)(_samples())
    assert not torch.equal(plain["reconstruction_pixel_values"], a["reconstruction_pixel_values"])


def test_unreadable_samples_are_dropped_and_counted(processor, tmp_path, caplog):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    samples = _samples()
    batch_input = [
        samples[0],
        None,
        {**samples[1], "unreadable": True},
        {"frontal": corrupt, "report": "Lungs clear."},
        samples[1],
    ]
    collator = AltaPretrainingCollator(processor, seed=0)
    with caplog.at_level(logging.WARNING, logger="processing.collate"):
        batch = collator(batch_input)
    assert batch["pixel_values"].shape[0] == 2 and collator.num_dropped == 3
    message = caplog.records[-1].getMessage()
    assert (
        "dropped 3 unreadable sample(s)" in message
        and "corrupt.png" in message
        and "sample 1: sample is None" in message
    )
    with pytest.raises(ValueError, match=r"every sample of the batch \(2\) was dropped"):
        collator([None, {"unreadable": True}])
    assert collator.num_dropped == 5


def test_structural_errors_name_the_sample(processor):
    collator = AltaPretrainingCollator(processor)
    with pytest.raises(ValueError, match=r"sample 1: no frontal view"):
        collator([_samples()[0], {"lateral": np.zeros((8, 8), np.uint8), "report": "Clear."}])
    with pytest.raises(ValueError, match=r"sample 0: 'report' must be a non-empty string; got ''"):
        collator([{**_samples()[0], "report": ""}])
