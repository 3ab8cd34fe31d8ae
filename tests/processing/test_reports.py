"""Report text: process_text goldens (evaluation parity) and seeded sentence shuffling."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertTokenizer

from processing.reports import process_text, shuffle_sentences, split_sentences, tokenize_for_evaluation


@pytest.fixture(scope="module")
def cases(parity_dir):
    return json.loads((parity_dir / "process_text.json").read_text())["cases"]


@pytest.fixture(scope="module")
def tokenizer(parity_dir):
    return BertTokenizer.from_pretrained(parity_dir / "BiomedVLP-CXR-BERT-specialized")


def test_process_text_reproduces_the_cleaned_strings(cases):
    for case in cases:
        assert process_text(case["input"]) == case["cleaned"], case["input"]


def test_token_ids_match_goldens(cases, tokenizer, parity_dir):
    golden = load_file(str(parity_dir / "process_text.safetensors"))
    batch = tokenize_for_evaluation([case["input"] for case in cases], tokenizer)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert batch[key].shape == (12, 128)
        assert torch.equal(batch[key], golden[key]), key
    for case in cases:
        single = tokenize_for_evaluation(case["input"], tokenizer)["input_ids"]
        assert single.shape == (1, 128)
        assert single[0, : case["length"]].tolist() == case["input_ids"]
        assert tokenizer.convert_ids_to_tokens(case["input_ids"]) == case["tokens"]


def test_sentence_split_uses_the_reference_rule():
    text = "No effusion. E.g. the heart is normal. Dr. Smith called? Yes. Size 2.5 cm."
    assert split_sentences(text) == [
        "No effusion.",
        "E.g. the heart is normal.",
        "Dr. Smith called?",
        "Yes.",
        "Size 2.5 cm.",
    ]


def test_shuffle_is_seeded_and_keeps_sentences():
    text = "One. Two. Three. Four. Five. Six."
    first = shuffle_sentences(text, random.Random(3))
    assert first == shuffle_sentences(text, random.Random(3))
    assert sorted(first.split(" ")) == sorted(text.split(" "))
    outcomes = {shuffle_sentences(text, random.Random(seed)) for seed in range(20)}
    assert len(outcomes) > 5
    random.seed(0)
    global_stream = shuffle_sentences(text)
    random.seed(0)
    assert shuffle_sentences(text) == global_stream
