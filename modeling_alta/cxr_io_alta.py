"""Decoding of chest radiographs (PIL, numpy, file paths, bytes, DICOM) into 8-bit PIL images.

This file ships to the Hub next to `image_processing_alta.py`, so it imports only the standard library, numpy and
Pillow; pydicom is optional and imported lazily (`pip install pydicom`, or the `alta[dicom]` extra).

Every reader returns a PIL image in mode ``"L"`` (grayscale) or ``"RGB"`` (only for genuinely coloured inputs,
whose channels differ), because the reference transform resizes colour images before converting them to gray and
the two orders differ by rounding.

Size limit. A small compressed file can declare an enormous image (a 219 KB DICOM declaring 15000x15000 pixels
decodes to 2.4 GB). DICOMs follow PIL's own decompression-bomb rule, with PIL's setting: above
``PIL.Image.MAX_IMAGE_PIXELS`` pixels (width x height x frames) a ``PIL.Image.DecompressionBombWarning`` is issued,
above twice that the file is refused *before its pixel data is decoded*, with `ImageTooLargeError` naming the file
and its size. Raise ``PIL.Image.MAX_IMAGE_PIXELS`` (or set it to ``None``) to read larger images; PNG and JPEG files
obey the same setting through PIL, and their refusal is reported the same way.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError


# PIL modes that map onto a grayscale radiograph without guessing; colour spaces such as CMYK or LAB would need a
# colour-management decision we do not want to make silently.
SUPPORTED_PIL_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "I", "I;16", "I;16B", "I;16L", "F")
DICOM_RULES = ("voi", "rsna")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


class ImageTooLargeError(ValueError, Image.DecompressionBombError):
    """An image over twice `PIL.Image.MAX_IMAGE_PIXELS`, refused before decoding (a `ValueError`, and PIL's
    `DecompressionBombError` for code that catches that)."""


def check_image_pixels(width: int, height: int, frames: int, name: str, kind: str = "image") -> None:
    """Apply PIL's decompression-bomb rule to a declared size: warn above `PIL.Image.MAX_IMAGE_PIXELS` pixels,
    raise `ImageTooLargeError` above twice that (no limit when it is None)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return
    pixels = int(width) * int(height) * max(int(frames), 1)
    size = f"{width}x{height}" + (f" x {frames} frames" if frames > 1 else "")
    if pixels > 2 * limit:
        raise ImageTooLargeError(
            f"{name}: the {kind} declares {size} pixels ({pixels:,}), more than twice PIL.Image.MAX_IMAGE_PIXELS "
            f"({limit:,}); refused before decoding (it could be a decompression bomb). Raise "
            "PIL.Image.MAX_IMAGE_PIXELS, or set it to None, to read it."
        )
    if pixels > limit:
        warnings.warn(
            f"{name}: the {kind} declares {size} pixels ({pixels:,}), more than PIL.Image.MAX_IMAGE_PIXELS "
            f"({limit:,}); it could be a decompression bomb.",
            Image.DecompressionBombWarning,
            stacklevel=3,
        )


def describe_source(source: Any) -> str:
    """A short human-readable name for an input, used in error messages (file name or type and shape)."""
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, np.ndarray):
        return f"numpy array {source.dtype} {tuple(source.shape)}"
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or ""
        return f"PIL image {source.mode} {source.size[0]}x{source.size[1]}" + (f" from {name!r}" if name else "")
    if isinstance(source, (bytes, bytearray)):
        return f"{len(source)} bytes"
    return type(source).__name__


def _is_dicom_bytes(head: bytes) -> bool:
    # Part 10 files carry a 128-byte preamble followed by the magic "DICM".
    return len(head) >= 132 and head[128:132] == b"DICM"


def _import_pydicom():
    # Inside `try:` so that transformers' remote-code import check does not make pydicom a hard requirement.
    try:
        import pydicom
        import pydicom.pixels
    except ImportError as err:  # pragma: no cover - exercised only without the optional extra
        raise ImportError(
            "Reading DICOM files needs pydicom>=3: `pip install pydicom` (or the `alta[dicom]` extra)."
        ) from err
    return pydicom


def scale_to_uint8(array: np.ndarray, name: str = "image") -> np.ndarray:
    """Linearly map a high-bit-depth or integer array to uint8 ``[H, W]`` (or ``[H, W, C]``).

    Non-negative data is scaled by ``255 / max`` so that zero stays black (the reference's RSNA rule does the same);
    data with negative values is min-max scaled. A constant image maps to zeros.
    """
    data = array.astype(np.float64)
    if not np.isfinite(data).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    low, high = float(data.min()), float(data.max())
    if low >= 0:
        scaled = data * (255.0 / high) if high > 0 else np.zeros_like(data)
    else:
        scaled = (data - low) * (255.0 / (high - low)) if high > low else np.zeros_like(data)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _window_to_uint8(data: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing straight to the 0..255 output range."""
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(-4.0 * (data - center) / width))
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"DICOM WindowWidth must be > 0 for LINEAR_EXACT; got {width}")
        out = (data - (center - width / 2.0)) / width * 255.0
    else:
        if width < 1:
            raise ValueError(f"DICOM WindowWidth must be >= 1 for LINEAR; got {width}")
        low = center - 0.5 - (width - 1) / 2.0
        span = max(width - 1, 1e-12)
        out = ((data - (center - 0.5)) / span + 0.5) * 255.0
        out = np.where(data <= low, 0.0, out)
        out = np.where(data > center - 0.5 + (width - 1) / 2.0, 255.0, out)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _lut_values(item: Any) -> np.ndarray:
    # LUT Data may arrive as a list of ints (VR US) or as raw OW bytes whose width the descriptor gives.
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        dtype = np.uint16 if int(item.LUTDescriptor[2]) > 8 else np.uint8
        return np.frombuffer(bytes(data), dtype=dtype).astype(np.float64)
    return np.asarray(data, dtype=np.float64).ravel()


def _first(value: Any) -> float:
    # Window Center/Width may be multi-valued; the first pair is the default presentation.
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def dicom_to_uint8(dataset: Any, rule: str = "voi", name: str = "DICOM") -> np.ndarray:
    """Decode a pydicom dataset into a uint8 grayscale array ``[H, W]``.

    Args:
        dataset (`pydicom.Dataset`): a dataset with pixel data (any transfer syntax pydicom and Pillow decode).
        rule (`str`, defaults to `"voi"`):
            - ``"voi"``: Rescale Slope/Intercept (modality LUT), then the VOI LUT Sequence if present, else the
              first Window Center/Width (LINEAR, LINEAR_EXACT or SIGMOID), mapped to 0..255; without VOI data,
              8-bit data is kept as is and deeper data is scaled by `scale_to_uint8`. MONOCHROME1 is inverted.
            - ``"rsna"``: the reference's RSNA evaluation rule: raw pixels × 255/max, absolute value, rounded half
              to even and saturated to uint8 (OpenCV ``convertScaleAbs``), then inverted if MONOCHROME1. No
              rescale or window is applied. Use it to reproduce the official RSNA zero-shot numbers.
        name (`str`): the file name for error messages.
    """
    if rule not in DICOM_RULES:
        raise ValueError(f"{name}: unknown dicom_rule {rule!r}; expected one of {DICOM_RULES}")
    try:
        rows, columns = int(getattr(dataset, "Rows", 0) or 0), int(getattr(dataset, "Columns", 0) or 0)
        declared_frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: unreadable DICOM image size (Rows/Columns/NumberOfFrames): {err}") from err
    check_image_pixels(columns, rows, declared_frames, name, kind="DICOM")  # before the pixel data is decoded
    try:
        pixels = dataset.pixel_array
    except Exception as err:  # pydicom raises several types for missing or undecodable pixel data
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ValueError(f"{name}: cannot decode DICOM pixel data (transfer syntax {syntax}): {err}") from err
    frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"{name}: multi-frame DICOM ({frames} frames) is not a single radiograph")
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if pixels.size == 0:
        raise ValueError(f"{name}: empty image (pixel array shape {tuple(pixels.shape)})")

    if pixels.ndim == 3:
        # Colour DICOM (RGB, or YBR which pydicom converts to RGB by default): collapse to gray like PIL does.
        rgb = pixels if pixels.dtype == np.uint8 else scale_to_uint8(pixels, name)
        return np.asarray(Image.fromarray(np.ascontiguousarray(rgb), "RGB").convert("L"))

    if rule == "rsna":
        peak = float(pixels.max())
        alpha = np.float32(255.0 / peak) if peak != 0 else np.float32(0.0)
        # convertScaleAbs computes in float32 and rounds with cvRound (half to even).
        out = np.clip(np.rint(np.abs(pixels.astype(np.float32) * alpha)), 0, 255).astype(np.uint8)
        return 255 - out if photometric == "MONOCHROME1" else out

    pixel_tools = _import_pydicom().pixels
    data = pixel_tools.apply_modality_lut(pixels, dataset).astype(np.float64)
    voi_sequence = getattr(dataset, "VOILUTSequence", None)
    if voi_sequence:
        # LUTs are indexed by stored integers; a rescaled (float) image is rounded first.
        looked_up = pixel_tools.apply_voi(np.rint(data).astype(np.int64), dataset, index=0).astype(np.float64)
        lut = _lut_values(voi_sequence[0])
        low, high = float(lut.min()), float(lut.max())
        scaled = (looked_up - low) * (255.0 / (high - low)) if high > low else np.zeros_like(looked_up)
        out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        function = str(getattr(dataset, "VOILUTFunction", "LINEAR") or "LINEAR")
        out = _window_to_uint8(data, _first(dataset.WindowCenter), _first(dataset.WindowWidth), function)
    elif data.min() >= 0 and data.max() <= 255 and int(getattr(dataset, "BitsStored", 8)) <= 8:
        out = data.astype(np.uint8)
    else:
        out = scale_to_uint8(data, name)
    return 255 - out if photometric == "MONOCHROME1" else out


def read_dicom(source: str | os.PathLike | bytes | Any, rule: str = "voi") -> np.ndarray:
    """Read a DICOM file (path, bytes or file object) into uint8 ``[H, W]``; see `dicom_to_uint8` for the rules."""
    pydicom = _import_pydicom()
    name = describe_source(source)
    handle = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray)) else source
    try:
        dataset = pydicom.dcmread(handle, force=True)
    except Exception as err:
        raise ValueError(f"{name}: not a readable DICOM file: {err}") from err
    if "PixelData" not in dataset:
        raise ValueError(f"{name}: DICOM file has no pixel data (truncated or not an image)")
    return dicom_to_uint8(dataset, rule=rule, name=name)


def _array_to_pil(array: np.ndarray, name: str) -> Image.Image:
    """numpy ``[H, W]``, ``[H, W, C]`` (C in 1, 3, 4) or ``[C, H, W]`` (C in 1, 3) → PIL "L" or "RGB"."""
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first, as torch tensors come
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]  # alpha is dropped, as PIL's convert("RGB") does
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise ValueError(
            f"{name}: expected an image array [H,W], [H,W,C] or [C,H,W] with C in (1, 3, 4); got shape "
            f"{tuple(array.shape)}"
        )
    if array.size == 0 or 0 in array.shape:
        raise ValueError(f"{name}: empty image (shape {tuple(array.shape)})")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{name}: contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{name}: float images must lie in [0, 1]; got values in [{low:g}, {high:g}] "
                "(pass uint8/uint16 data, or rescale to [0, 1])"
            )
        array = np.clip(np.rint(array.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        if array.dtype != np.uint8:
            array = scale_to_uint8(array, name)
    else:
        raise TypeError(f"{name}: unsupported array dtype {array.dtype}")
    array = np.ascontiguousarray(array)
    if array.ndim == 2:
        return Image.fromarray(array, "L")
    return _gray_if_equal_channels(Image.fromarray(array, "RGB"))


def _gray_if_equal_channels(image: Image.Image) -> Image.Image:
    # Grayscale radiographs saved as RGB have R == G == B; working in "L" is then bitwise identical and 3x cheaper.
    red, green, blue = image.split()
    if red.tobytes() == green.tobytes() == blue.tobytes():
        return red
    return image


def pil_to_working_image(image: Image.Image, name: str) -> Image.Image:
    """Normalise a PIL image's mode to "L" (or "RGB" for coloured images), rejecting unsupported modes."""
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{name}: empty image ({image.width}x{image.height})")
    mode = image.mode
    if mode not in SUPPORTED_PIL_MODES:
        raise ValueError(f"{name}: unsupported image mode {mode!r}; supported modes are {SUPPORTED_PIL_MODES}")
    if mode == "L":
        return image
    if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return _array_to_pil(np.asarray(image), name)
    if mode == "1":
        return image.convert("L")
    return _gray_if_equal_channels(image.convert("RGB"))


def _open_image_file(handle: Any, name: str) -> Image.Image:
    try:
        with Image.open(handle) as image:
            image.load()  # decode now, so a truncated file fails here with its name and not later
            return pil_to_working_image(image, name)
    except UnidentifiedImageError as err:
        raise ValueError(f"{name}: not a recognised image file (PNG, JPEG, DICOM, ...): {err}") from err
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(
            f"{name}: refused before decoding: {err} Raise PIL.Image.MAX_IMAGE_PIXELS, or set it to None, to read it."
        ) from err
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{name}: corrupt or truncated image file: {err}") from err


def load_image(source: Any, dicom_rule: str = "voi") -> Image.Image:
    """Load one radiograph from any supported source into a PIL image in mode "L" (or "RGB" for colour).

    Args:
        source: a `PIL.Image.Image`; a numpy array (uint8, uint16/other integers scaled by `scale_to_uint8`, bool,
            or float in [0, 1]) shaped ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]``; anything with ``__array__``
            (e.g. a torch tensor); a `str`/`Path` to a PNG, JPEG, ... or DICOM file; raw `bytes`; or a pydicom
            `Dataset`.
        dicom_rule (`str`): ``"voi"`` or ``"rsna"``, see `dicom_to_uint8`.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: corrupt/truncated file, empty image, unsupported mode, bad value range; the message names the
            source.
        TypeError: an input type that is not an image.
    """
    name = describe_source(source)
    if isinstance(source, Image.Image):
        return pil_to_working_image(source, name)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {name}")
        if path.stat().st_size == 0:
            raise ValueError(f"{name}: empty file (0 bytes)")
        with open(path, "rb") as handle:
            head = handle.read(132)
        if _is_dicom_bytes(head) or path.suffix.lower() in DICOM_SUFFIXES:
            return Image.fromarray(read_dicom(path, rule=dicom_rule), "L")
        return _open_image_file(path, name)
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise ValueError("empty bytes object given as an image")
        if _is_dicom_bytes(bytes(source[:132])):
            return Image.fromarray(read_dicom(bytes(source), rule=dicom_rule), "L")
        return _open_image_file(io.BytesIO(bytes(source)), name)
    if hasattr(source, "PixelData") or type(source).__name__ in ("Dataset", "FileDataset"):
        return Image.fromarray(dicom_to_uint8(source, rule=dicom_rule, name=name), "L")
    if isinstance(source, np.ndarray) or hasattr(source, "__array__"):
        array = source.detach().cpu().numpy() if hasattr(source, "detach") else np.asarray(source)
        return _array_to_pil(array, name)
    raise TypeError(
        f"unsupported image input of type {type(source).__name__}; expected a PIL image, numpy array, file path, "
        "bytes or pydicom Dataset"
    )


__all__ = [
    "ImageTooLargeError",
    "check_image_pixels",
    "DICOM_RULES",
    "SUPPORTED_PIL_MODES",
    "describe_source",
    "dicom_to_uint8",
    "load_image",
    "pil_to_working_image",
    "read_dicom",
    "scale_to_uint8",
]
