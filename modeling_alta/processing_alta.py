"""Processor for ALTA: `AltaImageProcessor` plus the stock `BertTokenizer` of the CXR-BERT vocabulary.

`processor(images=..., text=...)` returns exactly the keyword arguments `AltaModel.forward` takes
(`pixel_values`, `view_mask` for studies, `input_ids`, `attention_mask`, `token_type_ids`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

# Imported so that `save_pretrained` follows this relative import and ships the image processor's file too.
from .image_processing_alta import AltaImageProcessor  # noqa: F401


logger = logging.get_logger(__name__)

DEFAULT_MAX_LENGTH = 128  # the reference's caption length, for training and evaluation alike

_NUMBERED_ITEM = re.compile(r"[0-9]+\.")
_WORD = re.compile(r"\w+")


def process_text(text: str) -> str:
    """The reference's evaluation text cleanup (`process_text` of its CheXpert 5x200 zero-shot script).

    It exists for evaluation parity: the official zero-shot numbers were computed on prompts cleaned this way, so
    prompts must go through it to reproduce them (goldens: `../shared/parity/process_text.json`). Training
    tokenises raw reports, without it. Quirks kept on purpose: numbered items are split on ``[0-9]+\\.`` (so
    "10.5 cm" becomes "5 cm"), pieces with at most one word are dropped, non-ASCII characters inside words are
    removed ("Pneumonía" → "pneumona"), and an empty result stays empty.
    """
    pieces = [piece for item in _NUMBERED_ITEM.split(text.replace("\n", " ")) for piece in item.split(".")]
    sentences = []
    for piece in pieces:
        words = _WORD.findall(piece.replace("\ufffd\ufffd", " ").lower())
        if len(words) <= 1:
            continue
        ascii_words = [word.encode("ascii", "ignore").decode("ascii") for word in words]
        sentences.append(" ".join(word for word in ascii_words if word))
    return " ".join(sentences)


def encode_texts(
    tokenizer: Any,
    text: str | Sequence[str],
    max_length: int | None = DEFAULT_MAX_LENGTH,
    padding: bool | str = "max_length",
    truncation: bool = True,
    clean_text: bool = False,
    allow_empty: bool = False,
    return_tensors: str | None = None,
    names: Sequence[str] | None = None,
    truncated: list[str] | None = None,
    **kwargs: Any,
) -> BatchFeature:
    """Tokenise reports or prompts: the one text path of the package (processor, collators, inference, evaluation).

    Args:
        tokenizer: the CXR-BERT `BertTokenizer`.
        text: one string or a list of strings.
        max_length: the padding (and truncation) length.
        padding: `"max_length"` (the default, as in training) or any tokenizer padding mode.
        truncation: cut texts longer than `max_length`, with one warning per text naming it. `False` keeps texts
            whole and pads the batch to `max(max_length, longest)` instead (the reference tokenises retrieval texts
            so; masked padding does not change the [CLS] output).
        clean_text: apply [`process_text`] first (evaluation prompts and reports, for parity with the official
            numbers).
        allow_empty: accept texts that are empty after cleanup (they become `[CLS] [SEP]`, as in the reference's
            evaluation); otherwise an empty text raises `ValueError`.
        names: how the warnings and errors name each text (default `"report {i}"`).
        truncated: a list to collect `"<name> (<n> tokens)"` for each truncated text instead of logging a warning
            per text (a training loop names each study once and summarises; see `training/notices.py`).
        kwargs: other tokenizer arguments.

    Returns:
        `BatchFeature` with `input_ids`, `attention_mask`, `token_type_ids` `[N, L]`.
    """
    texts = [text] if isinstance(text, str) else list(text)
    if not texts:
        raise ValueError("`text` is an empty list; pass at least one report")
    labels = list(names) if names is not None else [f"report {i}" for i in range(len(texts))]
    if len(labels) != len(texts):
        raise ValueError(f"got {len(labels)} names for {len(texts)} texts")
    checked = []
    for label, item in zip(labels, texts):
        if not isinstance(item, str):
            raise TypeError(f"{label}: expected a string; got {type(item).__name__} ({item!r})")
        if not allow_empty and not item.strip():
            raise ValueError(f"{label} is empty ({item!r}); every sample needs a non-empty report")
        if clean_text:
            cleaned = process_text(item)
            if not cleaned and not allow_empty:
                raise ValueError(f"{label} is empty after process_text cleanup (input {item!r})")
            item = cleaned
        checked.append(item)
    if max_length is not None and not truncation and padding == "max_length":
        longest = max(len(ids) for ids in tokenizer(checked, add_special_tokens=True)["input_ids"])
        max_length = max(max_length, longest)
    encoded = tokenizer(
        checked,
        padding=padding,
        max_length=max_length,
        truncation=truncation,
        return_tensors=return_tensors,
        return_token_type_ids=True,
        return_attention_mask=True,
        **kwargs,
    )
    if max_length is not None and truncation:
        counts = None if kwargs else _lengths_before_truncation(tokenizer, encoded)
        if counts is None:
            _warn_if_truncated(tokenizer, checked, max_length, labels, truncated)
        else:
            _report_truncated(list(zip(labels, checked, counts)), max_length, truncated)
    return encoded


def _lengths_before_truncation(tokenizer: Any, encoded: Any) -> list[int] | None:
    """Each text's token count before truncation, read from the output of a `tokenizers`-backed tokenizer (whose
    encodings keep the cut-off tokens in `overflowing`), so a truncated batch is tokenised once. `None` for a
    tokenizer without such encodings."""
    encodings = getattr(encoded, "encodings", None)
    if not encodings:
        return None
    special = tokenizer.num_special_tokens_to_add(pair=False)
    counts = []
    for encoding in encodings:
        # Content tokens only: the template's [CLS]/[SEP] and the padding are marked special in each piece.
        pieces = [encoding, *encoding.overflowing]
        counts.append(special + sum(len(p.special_tokens_mask) - sum(p.special_tokens_mask) for p in pieces))
    return counts


def _report_truncated(texts: list[tuple[str, str, int]], max_length: int, collect: list[str] | None) -> None:
    """Name each `(label, text, token count)` longer than `max_length`: into `collect`, or one warning each."""
    for label, item, count in texts:
        if count > max_length and collect is not None:
            collect.append(f"{label} ({count} tokens)")
        elif count > max_length:
            logger.warning(
                f"{label} has {count} tokens and is truncated to max_length={max_length} (starts {item[:60]!r})"
            )


def _warn_if_truncated(
    tokenizer: Any, texts: list[str], max_length: int, labels: Sequence[str], collect: list[str] | None = None
) -> None:
    # A WordPiece token covers at least one non-space character, so short strings cannot overflow; only longer
    # ones pay for a second tokenisation.
    special = tokenizer.num_special_tokens_to_add(pair=False)
    long = [(label, item) for label, item in zip(labels, texts) if len(item) > max_length - special]
    if not long:
        return
    # One batched call for all of them (a call per text costs more than the tokenisation itself).
    found = tokenizer([item for _, item in long], add_special_tokens=True, verbose=False)["input_ids"]
    _report_truncated([(label, item, len(ids)) for (label, item), ids in zip(long, found)], max_length, collect)


class AltaProcessor(ProcessorMixin):
    r"""
    Constructs an ALTA processor: an [`AltaImageProcessor`] and a [`BertTokenizer`] with the CXR-BERT vocabulary.

    Build the tokenizer with `BertTokenizer.from_pretrained(folder_with_vocab_txt)` (or `BertTokenizer(vocab=path)`);
    `BertTokenizerFast(vocab_file=path)` silently ignores the file in transformers 5.

    Args:
        image_processor ([`AltaImageProcessor`], *optional*): the image processor.
        tokenizer ([`BertTokenizer`], *optional*): the CXR-BERT tokenizer.
        max_length (`int`, *optional*, defaults to 128): the report length in tokens the model was trained with
            (the reference's 128): the default padding and truncation length of texts. It is saved in
            `processor_config.json`; the model config holds no tokenizer limit.

    Text defaults are those of training: `padding="max_length"`, `max_length=self.max_length`, `truncation=True`.
    An empty (or whitespace-only) report raises `ValueError`; a report longer than `max_length` tokens is truncated
    and a warning names it.

    Example:

    ```python
    >>> from transformers import BertTokenizer
    >>> processor = AltaProcessor(AltaImageProcessor(), BertTokenizer.from_pretrained("BiomedVLP-CXR-BERT-specialized"))
    >>> inputs = processor(images=[{"frontal": "pa.png", "lateral": "lat.png"}], text=["No acute process."],
    ...                    return_tensors="pt")
    >>> sorted(inputs)
    ['attention_mask', 'input_ids', 'pixel_values', 'token_type_ids', 'view_mask']
    ```
    """

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, max_length: int | None = None, **kwargs: Any
    ) -> None:
        max_length = DEFAULT_MAX_LENGTH if max_length is None else int(max_length)
        if max_length < 2:
            raise ValueError(f"`max_length` must hold at least [CLS] and [SEP] (2 tokens); got {max_length}.")
        self.max_length = max_length
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(
        self,
        images: Any = None,
        text: str | Sequence[str] | None = None,
        return_tensors: str | None = None,
        padding: bool | str = "max_length",
        max_length: int | None = None,
        truncation: bool = True,
        clean_text: bool = False,
        images_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Prepare images and/or reports for the model.

        Args:
            images: anything [`AltaImageProcessor`] accepts (one image, a list, a study dict, a list of studies).
            text (`str` or `list[str]`): reports or prompts.
            return_tensors (`str`, *optional*): `"pt"` or `"np"`.
            padding, max_length, truncation: tokenizer settings; defaults pad and truncate to `self.max_length` tokens
                (128 unless the processor was saved with another length).
            clean_text (`bool`, defaults to `False`): apply [`process_text`] first (evaluation prompts, for parity
                with the official zero-shot numbers).
            images_kwargs (`dict`, *optional*): extra arguments for the image processor (e.g. `train=True, seed=0`).
            kwargs: other tokenizer arguments.

        Returns:
            `BatchFeature` with `pixel_values` (`[B,3,H,W]` or `[B,V,3,H,W]`), `view_mask` (`[B,V]`, studies only),
            and `input_ids`, `attention_mask`, `token_type_ids` (`[N, L]`).
        """
        if images is None and text is None:
            raise ValueError("AltaProcessor needs `images`, `text` or both; got neither")
        data: dict[str, Any] = {}
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors, **(images_kwargs or {})))
        if text is not None:
            data.update(
                encode_texts(
                    self.tokenizer,
                    text,
                    max_length=self.max_length if max_length is None else max_length,
                    padding=padding,
                    truncation=truncation,
                    clean_text=clean_text,
                    return_tensors=return_tensors,
                    **kwargs,
                )
            )
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "token_type_ids", "pixel_values", "view_mask"]

    def save_pretrained(self, save_directory: Any, push_to_hub: bool = False, **kwargs: Any) -> list[str]:
        """Save as `ProcessorMixin` does, and also write `preprocessor_config.json`.

        `ProcessorMixin` nests the image-processor settings inside `processor_config.json`; the separate file lets
        `AutoImageProcessor` (used by the zero-shot pipeline) and older transformers versions load the folder
        directly.
        """
        # Written first so that a push (done inside ProcessorMixin.save_pretrained) uploads it too.
        self.image_processor.save_pretrained(save_directory)
        return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)


# `save_pretrained` then copies this file (and its siblings) and writes `auto_map`, for `trust_remote_code` loading.
AltaProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["AltaProcessor", "encode_texts", "process_text"]
