"""AltaPretrainingCollator: exact keys and shapes, the reference MLM rule, per-study randomness, skipped samples."""

from __future__ import annotations

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
    "skipped",
    "truncated",
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
        {
            "index": 0,
            "frontal": image,
            "lateral": image.T.copy(),
            "prior_frontal": image,
            "prior_lateral": None,
            "report": REPORT,
        },
        {
            "index": 1,
            "frontal": image[::-1].copy(),
            "report": "Small left effusion. Stable cardiomegaly.",
            "study_id": "s2",
        },
    ]


def test_batch_keys_shapes_and_slots(processor):
    batch = AltaPretrainingCollator(processor, seed=0)(_samples())
    assert set(batch) == EXPECTED_KEYS
    assert batch["pixel_values"].shape == (2, 4, 3, 224, 224)
    assert batch["reconstruction_pixel_values"].shape == (2, 3, 448, 448)
    assert batch["view_mask"].tolist() == [[True, True, True, False], [True, False, False, False]]
    assert batch["pixel_values"][~batch["view_mask"]].abs().sum() == 0
    assert batch["skipped"] == [] and "mask_noise" not in batch
    longest = len(processor.tokenizer.tokenize(REPORT)) + 2  # the batch is padded to its longest report
    for key in ("input_ids", "attention_mask", "token_type_ids", "mlm_input_ids", "mlm_labels"):
        assert batch[key].shape == (2, longest) and batch[key].dtype == torch.long, key
    assert batch["attention_mask"][0].all() and not batch["attention_mask"][1].all()
    padded = AltaPretrainingCollator(processor, seed=0, padding="max_length")(_samples())
    assert padded["input_ids"].shape == (2, 128)
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


def test_always_masked_words_are_masked_everywhere_on_top_of_the_same_draw(processor):
    tokenizer = processor.tokenizer
    ids = tokenizer([REPORT] * 8, padding="max_length", max_length=128, return_tensors="pt")["input_ids"]
    always = sorted(set(ids[0, 1:4].tolist()) - set(tokenizer.all_special_ids))
    base_ids, base_labels = mask_tokens(
        ids, tokenizer.all_special_ids, tokenizer.mask_token_id, 0.3, torch.Generator().manual_seed(1)
    )
    mlm_ids, labels = mask_tokens(
        ids,
        tokenizer.all_special_ids,
        tokenizer.mask_token_id,
        0.3,
        torch.Generator().manual_seed(1),
        always_ids=always,
    )
    targeted = torch.isin(ids, torch.tensor(always))
    assert targeted.any()
    assert (mlm_ids[targeted] == tokenizer.mask_token_id).all() and torch.equal(labels[targeted], ids[targeted])
    # every other position is masked exactly as without them (same random draws)
    assert torch.equal(mlm_ids[~targeted], base_ids[~targeted]) and torch.equal(
        labels[~targeted], base_labels[~targeted]
    )
    collator = AltaPretrainingCollator(processor, seed=5, mlm_probability=0.0, mlm_always_mask_ids=always)
    batch = collator(_samples())
    masked = batch["mlm_labels"] != IGNORE_INDEX
    assert torch.equal(masked, torch.isin(batch["input_ids"], torch.tensor(always)))


def test_seeded_and_reproducible(processor):
    first, second = AltaPretrainingCollator(processor, seed=5), AltaPretrainingCollator(processor, seed=5)
    a, b = first(_samples()), second(_samples())
    for key in EXPECTED_KEYS - {"skipped", "truncated"}:
        assert torch.equal(a[key], b[key]), key
    # the same call again gives the same batch: a study's draws depend on (seed, epoch, index) only
    again = first(_samples())
    assert torch.equal(a["pixel_values"], again["pixel_values"])
    # another epoch or another seed draws new augmentations and masks
    first.set_epoch(1)
    c = first(_samples())
    assert not torch.equal(a["pixel_values"], c["pixel_values"])
    assert not torch.equal(a["mlm_labels"], c["mlm_labels"])
    other = AltaPretrainingCollator(processor, seed=6)(_samples())
    assert not torch.equal(a["mlm_labels"], other["mlm_labels"])
    # with augment=False the 448 frontal is the deterministic evaluation crop
    plain = AltaPretrainingCollator(processor, augment=False, shuffle_reports=False)(_samples())
    assert not torch.equal(plain["reconstruction_pixel_values"], a["reconstruction_pixel_values"])


def test_a_study_draws_the_same_in_any_batch(processor):
    collator = AltaPretrainingCollator(processor, seed=2, mask_noise_shape=(4, 9))
    pair = collator(_samples())
    alone = collator(_samples()[1:])
    swapped = collator(_samples()[::-1])
    for key in ("pixel_values", "reconstruction_pixel_values", "mlm_input_ids", "mask_noise", "view_mask"):
        torch.testing.assert_close(swapped[key][0], pair[key][1], atol=0, rtol=0, msg=key)
        if key == "mlm_input_ids":  # alone, the short report is not padded to the other one's length
            length = alone[key].shape[1]
            assert length < pair[key].shape[1] and not pair["attention_mask"][1, length:].any()
            torch.testing.assert_close(alone[key][0], pair[key][1, :length], atol=0, rtol=0, msg=key)
        else:
            torch.testing.assert_close(alone[key][0], pair[key][1], atol=0, rtol=0, msg=key)
    assert pair["mask_noise"].shape == (2, 4, 9)


def test_padding_to_the_longest_report_changes_nothing_but_the_length(processor):
    # A study's MLM draws do not depend on the length its batch is padded to: the longest-padded batch is the
    # max_length-padded one cut at its longest report.
    longest = AltaPretrainingCollator(processor, seed=4)(_samples())
    full = AltaPretrainingCollator(processor, seed=4, padding="max_length")(_samples())
    length = longest["input_ids"].shape[1]
    assert length < full["input_ids"].shape[1]
    for key in ("input_ids", "attention_mask", "token_type_ids", "mlm_input_ids", "mlm_labels"):
        torch.testing.assert_close(longest[key], full[key][:, :length], atol=0, rtol=0, msg=key)
        assert not full["attention_mask"][:, length:].any()
    assert (full["mlm_labels"][:, length:] == IGNORE_INDEX).all()
    for key in ("pixel_values", "reconstruction_pixel_values", "view_mask"):
        torch.testing.assert_close(longest[key], full[key], atol=0, rtol=0, msg=key)
    with pytest.raises(ValueError, match="padding must be"):
        AltaPretrainingCollator(processor, padding="do_not_pad")


def test_unreadable_samples_are_skipped_and_named(processor, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    samples = _samples()
    batch_input = [
        samples[0],
        None,
        {**samples[1], "index": 7, "valid": False, "error": "frontal: 'x.png': OSError: gone"},
        {"index": 8, "frontal": corrupt, "report": "Lungs clear."},
        {"index": 9, "lateral": samples[0]["frontal"], "report": "Clear."},
        {**samples[1], "index": 10, "report": " "},
        samples[1],
    ]
    batch = AltaPretrainingCollator(processor, seed=0)(batch_input)
    assert batch["pixel_values"].shape[0] == 2
    skipped = batch["skipped"]
    assert len(skipped) == 5 and skipped[0] == "sample 1: sample is None"
    assert skipped[1] == "study index 7: frontal: 'x.png': OSError: gone"
    assert skipped[2].startswith("study index 8: frontal:") and "corrupt.png" in skipped[2]
    assert skipped[3] == "study index 9: frontal: missing (required view)"
    assert skipped[4].startswith("study index 10: 'report' must be a non-empty string")
    assert AltaPretrainingCollator(processor)([None, {"index": 3, "valid": False, "error": "e"}]) == {
        "skipped": ["sample 0: sample is None", "study index 3: e"],
        "truncated": [],
    }


def test_truncated_reports_are_listed_by_study_not_logged(processor, caplog):
    long_report = " ".join(["Mild bibasilar atelectasis."] * 20)
    samples = _samples()
    samples[1] = {**samples[1], "index": 41, "report": long_report}
    batch = AltaPretrainingCollator(processor, max_length=32, shuffle_reports=False)(samples)
    assert len(batch["truncated"]) == 1
    assert batch["truncated"][0].startswith("study index 41 (") and batch["truncated"][0].endswith(" tokens)")
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]  # the training loop reports them


def test_structural_errors_name_the_sample(processor):
    collator = AltaPretrainingCollator(processor)
    with pytest.raises(ValueError, match=r"sample 1 has no integer 'index'.*IndexedStudies"):
        collator([_samples()[0], {"frontal": np.zeros((8, 8), np.uint8), "report": "Clear."}])
    with pytest.raises(TypeError, match=r"sample 0: expected a mapping"):
        collator(["a.png"])


def test_study_randomness_does_not_depend_on_the_dataloader_worker(processor, tmp_path):
    from processing.datasets import IndexedStudies, dataset_from_rows
    from tests.training.synthetic import write_studies

    studies = IndexedStudies(dataset_from_rows(write_studies(tmp_path, n=8)))
    collate = AltaPretrainingCollator(processor, seed=3, mask_noise_shape=(4, 4))
    in_main = collate([studies[5], studies[2]])
    loader = torch.utils.data.DataLoader(
        studies, batch_size=2, collate_fn=collate, num_workers=2, sampler=[7, 1, 5, 2]
    )
    in_workers = list(loader)[1]  # the second batch is collated by worker 1
    for key in ("pixel_values", "reconstruction_pixel_values", "mlm_input_ids", "mask_noise"):
        torch.testing.assert_close(in_workers[key], in_main[key], atol=0, rtol=0, msg=key)


def test_the_current_frontal_is_not_cropped_twice(processor):
    # Training derives slot 0 from the reconstruction-size frontal, so the collator does not compute its own crop:
    # the same draws, the same other slots, and the same model outputs as with the crop.
    from configuration import load_preset
    from modeling_alta import AltaForPreTraining

    samples = _samples()
    collator = AltaPretrainingCollator(processor, seed=3, mask_noise_shape=(4, 196))
    batch = collator(samples)
    studies = [{k: v for k, v in s.items() if k in ("frontal", "lateral", "prior_frontal", "prior_lateral")}
               for s in samples]  # fmt: skip
    streams = [np.random.default_rng(7), np.random.default_rng(8)]
    kwargs = {"return_tensors": "pt", "train": True, "return_reconstruction": True}
    with_crop = processor.image_processor(studies, generator=streams, **kwargs)
    streams = [np.random.default_rng(7), np.random.default_rng(8)]
    without = processor.image_processor(studies, generator=streams, reconstruction_replaces_frontal=True, **kwargs)
    assert without["pixel_values"][:, 0].abs().sum() == 0 and without["view_mask"][:, 0].all()
    assert with_crop["pixel_values"][:, 0].abs().sum() > 0
    for key in ("view_mask", "reconstruction_pixel_values"):
        assert torch.equal(with_crop[key], without[key]), key
    assert torch.equal(with_crop["pixel_values"][:, 1:], without["pixel_values"][:, 1:])
    assert batch["pixel_values"][:, 0].abs().sum() == 0 and batch["view_mask"][:, 0].all()

    torch.manual_seed(0)
    model = AltaForPreTraining(load_preset("alta-tiny")).eval()
    inputs = {k: v for k, v in batch.items() if k not in ("skipped", "truncated")}
    cropped = {**inputs, "pixel_values": with_crop["pixel_values"].clone()}
    cropped["pixel_values"][:, 1:] = inputs["pixel_values"][:, 1:]
    with torch.no_grad():
        a, b = model(**inputs), model(**cropped)
    for key in ("contrastive_loss", "local_loss", "reconstruction_loss", "mlm_loss"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key


def test_a_sample_carrying_its_epoch_is_drawn_for_that_epoch(processor, tmp_path):
    from processing.datasets import IndexedStudies, dataset_from_rows
    from tests.training.synthetic import write_studies

    studies = IndexedStudies(dataset_from_rows(write_studies(tmp_path, n=4)))
    assert studies[(3, 1)]["epoch"] == 3 and studies[(3, 1)]["index"] == 1 and "epoch" not in studies[1]
    collate = AltaPretrainingCollator(processor, seed=3, augment=True, mask_noise_shape=(4, 4))
    collate.set_epoch(2)
    told = collate([studies[1], studies[3]])
    collate.set_epoch(0)  # a persistent worker's copy that never heard of epoch 2
    carried = collate([studies[(2, 1)], studies[(2, 3)]])
    stale = collate([studies[1], studies[3]])
    for key in ("pixel_values", "reconstruction_pixel_values", "mlm_input_ids", "mask_noise"):
        torch.testing.assert_close(carried[key], told[key], atol=0, rtol=0, msg=key)
    assert not torch.equal(stale["mask_noise"], told["mask_noise"])


def test_cached_studies_collate_bitwise_as_decoded_ones_and_are_not_decoded_again(
    processor, tmp_path, monkeypatch, caplog
):
    import processing.datasets as datasets_module
    from processing.datasets import IndexedStudies, dataset_from_rows
    from tests.training.synthetic import write_studies

    rows = dataset_from_rows(write_studies(tmp_path, n=6, corrupt=(4,)))
    decoded = []
    decode_view = datasets_module.decode_view

    def counting(value, *args, **kwargs):
        if isinstance(value, dict):  # a stored cell ({"bytes", "path"}), not an image decoded before
            decoded.append(value.get("path"))
        return decode_view(value, *args, **kwargs)

    monkeypatch.setattr(datasets_module, "decode_view", counting)
    plain, cached = IndexedStudies(rows), IndexedStudies(rows, cache_mb=1)
    collate = AltaPretrainingCollator(processor, seed=3, augment=True, mask_noise_shape=(4, 4))
    for epoch in range(3):
        keys = [(epoch, i) for i in np.random.default_rng(epoch).permutation(6)]
        decoded.clear()
        expected = collate([plain[k] for k in keys])
        files = len(decoded)
        assert files >= 6  # every study's frontal at least, read every time
        decoded.clear()
        got = collate([cached[k] for k in keys])
        assert len(decoded) == (files if epoch == 0 else 0)  # later epochs: nothing read or decoded
        assert got["skipped"] == expected["skipped"] and len(got["skipped"]) == 1  # the corrupt study, every epoch
        for key in ("pixel_values", "reconstruction_pixel_values", "mlm_input_ids", "mask_noise", "view_mask"):
            assert torch.equal(got[key], expected[key]), (epoch, key)
    assert cached.cache_info()["studies"] == 6 and cached.cache_info()["hits"] == 12
    assert cached.cache_info()["misses"] == 6

    # A budget for about two studies: those stay, the rest are decoded each time, and the log says so once.
    small = IndexedStudies(rows, cache_mb=(2 * 3 * 48 * 48 + 200) / 2**20)
    with caplog.at_level("INFO", logger="processing.datasets"):
        for _ in range(2):
            for i in range(6):
                small[i]
    info = small.cache_info()
    assert 1 <= info["studies"] <= 3 and info["bytes"] <= info["budget"]
    assert info["hits"] == info["studies"] and info["misses"] == 12 - info["studies"]
    assert sum("decoded-study cache full" in r.message for r in caplog.records) == 1
    with pytest.raises(ValueError, match="cache_mb must be >= 0"):
        IndexedStudies(rows, cache_mb=-1)
