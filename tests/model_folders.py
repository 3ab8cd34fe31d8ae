"""Tiny model folders for the inference, evaluation, pipeline and notebook tests (written into tmp paths)."""

from __future__ import annotations

from pathlib import Path


def converted_tiny_model(parity_dir: Path, output: Path) -> Path:
    """`alta-convert` of the parity checkpoint `ALTA_tiny.pth` (+ the fake CXR-BERT folder) into `output`."""
    from training.convert_original_checkpoint import convert

    convert(
        parity_dir / "ALTA_tiny.pth",
        parity_dir / "BiomedVLP-CXR-BERT-specialized",
        output,
        vision_heads=4,
        decoder_heads=4,
    )
    return output


def tiny_preset_model(parity_dir: Path, output: Path, seed: int = 0) -> Path:
    """A randomly initialised `alta-tiny` preset model (adapters made non-zero, so they count) saved with a processor
    (the parity folder's CXR-BERT tokenizer) into `output`."""
    import torch
    from transformers import BertTokenizer

    from configuration import load_preset
    from modeling_alta import AltaImageProcessor, AltaModel, AltaProcessor

    torch.manual_seed(seed)
    model = AltaModel(load_preset("alta-tiny")).eval()
    with torch.no_grad():
        for adapter in model.alta_adapters():
            for param in adapter.parameters():
                param.normal_(0.0, 0.02)  # zero-initialised up-projections would make the adapters a no-op
    model.save_pretrained(output)
    tokenizer = BertTokenizer.from_pretrained(parity_dir / "BiomedVLP-CXR-BERT-specialized")
    AltaProcessor(image_processor=AltaImageProcessor(), tokenizer=tokenizer).save_pretrained(output)
    return output


def demo_preset_model(output: Path, seed: int = 0) -> Path:
    """An untrained `alta-demo` preset model (the sizes `python -m training.demo` trains) saved into `output` with
    a processor built as the demo builds it: a word-level vocabulary of the demo reports and prompts, and the image
    processor scaled to the model (146-px resize, 128-px crop). Needs no goldens."""
    import numpy as np
    import torch

    from configuration import load_preset
    from modeling_alta import AltaImageProcessor, AltaModel, AltaProcessor
    from processing.demo_data import DEMO_CLASSES, demo_class_prompts, generate_study, strip_boilerplate
    from training.demo import build_vocabulary

    reports = [
        strip_boilerplate(generate_study(label, np.random.default_rng([seed, i]), image_size=32).report)
        for i, label in enumerate(DEMO_CLASSES * 4)
    ]
    prompts = [p for ps in demo_class_prompts().values() for p in ps]
    tokenizer_dir = build_vocabulary(reports + prompts, output / "tokenizer")
    vocab_size = len((tokenizer_dir / "vocab.txt").read_text().splitlines())
    config = load_preset("alta-demo")
    config.text_config.vocab_size = vocab_size
    torch.manual_seed(seed)
    model = AltaModel(config).eval()
    with torch.no_grad():
        for adapter in model.alta_adapters():
            for param in adapter.parameters():
                param.normal_(0.0, 0.02)
    folder = output / "model"
    model.save_pretrained(folder)
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.model_max_length = 80  # the report length `python -m training.demo` trains with (--max_length 80)
    processor = AltaProcessor(
        image_processor=AltaImageProcessor.for_vision_config(config.vision_config),
        tokenizer=tokenizer,
        max_length=tokenizer.model_max_length,
    )
    processor.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    return folder
