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
