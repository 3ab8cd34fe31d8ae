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
