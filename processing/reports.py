"""Report text: sentence shuffling for pretraining, and the reference's evaluation cleanup (`process_text`)."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

import torch

from modeling_alta.processing_alta import DEFAULT_MAX_LENGTH, process_text


# The reference's sentence splitter: whitespace after "." or "?", except after abbreviations such as "e.g." or "Dr.".
SENTENCE_SPLIT = re.compile(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?)\s")


def split_sentences(text: str) -> list[str]:
    """Split a report into sentences with the reference's regular expression."""
    return SENTENCE_SPLIT.split(text)


def shuffle_sentences(text: str, rng: random.Random | None = None) -> str:
    """Shuffle the sentences of a report (pretraining augmentation) and re-join them with single spaces.

    Args:
        text: the raw report.
        rng: a seeded `random.Random`; the module-level `random` is used when omitted (as the reference does).
    """
    sentences = split_sentences(text)
    (rng or random).shuffle(sentences)
    return " ".join(sentences)


def tokenize_for_evaluation(
    texts: str | Sequence[str], tokenizer: Any, max_length: int = DEFAULT_MAX_LENGTH
) -> dict[str, torch.Tensor]:
    """`process_text` + tokenisation exactly as the reference's zero-shot evaluation does it (for parity).

    Unlike `AltaProcessor`, an empty cleaned string is allowed and gives ``[CLS] [SEP]``, as in the reference.

    Returns:
        `input_ids`, `attention_mask`, `token_type_ids`, each long ``[N, max_length]``.
    """
    items = [texts] if isinstance(texts, str) else list(texts)
    encoded = tokenizer(
        [process_text(item) for item in items],
        padding="max_length",
        max_length=max_length,
        truncation=True,
        return_tensors="pt",
        return_token_type_ids=True,
    )
    return {key: encoded[key] for key in ("input_ids", "attention_mask", "token_type_ids")}


__all__ = ["SENTENCE_SPLIT", "process_text", "shuffle_sentences", "split_sentences", "tokenize_for_evaluation"]
