"""Radiograph loading for the dataset side: PNG/JPEG/DICOM → 8-bit PIL images.

The implementation lives in `modeling_alta/cxr_io_alta.py` because `AltaImageProcessor` (shipped to the Hub) needs it;
this module re-exports it and adds dataset-side conveniences.
"""

from __future__ import annotations

import os
from typing import Any

from PIL import Image

from modeling_alta.cxr_io_alta import (
    DICOM_RULES,
    SUPPORTED_PIL_MODES,
    describe_source,
    dicom_to_uint8,
    load_image,
    pil_to_working_image,
    read_dicom,
    scale_to_uint8,
)


def load_rsna_dicom(path: str | os.PathLike | bytes | Any) -> Image.Image:
    """Read a DICOM with the reference's RSNA rule (raw pixels × 255/max, |·|, round, saturate, invert MONOCHROME1).

    Returns a PIL "L" image; feed it to `AltaImageProcessor` to reproduce the official RSNA zero-shot inputs.
    """
    return Image.fromarray(read_dicom(path, rule="rsna"), "L")


__all__ = [
    "DICOM_RULES",
    "SUPPORTED_PIL_MODES",
    "describe_source",
    "dicom_to_uint8",
    "load_image",
    "load_rsna_dicom",
    "pil_to_working_image",
    "read_dicom",
    "scale_to_uint8",
]
