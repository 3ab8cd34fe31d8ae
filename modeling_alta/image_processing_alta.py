"""Image processor for ALTA: chest radiographs (PIL, numpy, files, DICOM) and four-slot studies → model inputs.

Pure PIL/numpy (no torchvision), so it runs everywhere transformers runs and ships to the Hub as custom code.

The evaluation transform reproduces the reference implementation bitwise at the uint8 stage: PIL bicubic resize of
the shorter side (long side ``int(size * long / short)``), center crop with Python's ``round`` (half to even),
conversion to 8-bit gray, replication to three channels, ``(x / 255 - mean) / std``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.utils import logging

from .configuration_alta import STUDY_SLOTS
from .cxr_io_alta import DICOM_RULES, describe_source, load_image


logger = logging.get_logger(__name__)

# ----------------------------------------------------------------------------------------------------------------
# Deterministic geometry (the evaluation transform)
# ----------------------------------------------------------------------------------------------------------------


def resize_shorter_side(image: Image.Image, size: int, resample: int = Image.BICUBIC) -> Image.Image:
    """Resize so the shorter side is `size`; the longer side is ``int(size * long / short)`` (truncated, as the
    reference computes it). PIL returns a copy when the size already matches, as the reference does."""
    width, height = image.size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    return image.resize((new_width, new_height), resample)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Square center crop; offsets use Python's ``round`` (half to even): a floor shifts some images by one pixel.
    A crop larger than the image pads with zeros, as PIL's crop does."""
    width, height = image.size
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def resize_and_crop_uint8(
    image: Image.Image, shortest_edge: int, crop_size: int, resample: int = Image.BICUBIC
) -> np.ndarray:
    """The uint8 stage of the evaluation transform: resize, center crop, gray. Returns uint8 ``[crop, crop]``.

    Colour ("RGB") inputs are resized before the gray conversion, as the reference does (the orders differ by
    rounding); grayscale inputs stay in "L", which is bitwise identical and cheaper.
    """
    cropped = center_crop(resize_shorter_side(image, shortest_edge, resample), crop_size)
    if cropped.mode != "L":
        cropped = cropped.convert("L")
    return np.asarray(cropped)


def normalize_uint8(gray: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 ``[..., H, W]`` → float32 ``[..., 3, H, W]``: ``(x / 255 - mean) / std`` in float32, three channels."""
    gray = np.asarray(gray)
    if gray.dtype != np.uint8:
        raise TypeError(f"normalize_uint8 expects uint8 pixels; got {gray.dtype}")
    # In place, in float32, in the formula's order: bitwise the element-wise result without its temporaries; the
    # channel copies are written straight into the output (called once per batch, not per study).
    gray_float = gray.astype(np.float32)
    gray_float /= np.float32(255.0)
    gray_float -= np.float32(mean)
    gray_float /= np.float32(std)
    out = np.empty((*gray.shape[:-2], 3, *gray.shape[-2:]), dtype=np.float32)
    out[...] = gray_float[..., None, :, :]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Training augmentation (PIL): random affine + brightness/contrast jitter, shared between current and prior
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AltaAugmentParams:
    """One random draw of the training augmentation.

    Args:
        angle: rotation in degrees (positive = counter-clockwise on screen).
        translate: shift as a fraction of (width, height); converted to whole pixels per image size, so a 448 and a
            224 crop of the same view move alike.
        scale: isotropic zoom factor.
        shear: x-shear in degrees.
        brightness, contrast: PIL `ImageEnhance` factors.
        brightness_first: order of the two jitter operations.
    """

    angle: float
    translate: tuple[float, float]
    scale: float
    shear: float
    brightness: float
    contrast: float
    brightness_first: bool


def sample_augment_params(
    rng: np.random.Generator,
    degrees: float = 20.0,
    translate: float = 0.1,
    scale: tuple[float, float] = (0.95, 1.05),
    shear: float = 10.0,
    brightness: tuple[float, float] = (0.8, 1.2),
    contrast: tuple[float, float] = (0.8, 1.2),
) -> AltaAugmentParams:
    """Draw one set of augmentation parameters from `rng` (always 8 draws, so streams stay aligned)."""
    angle = float(rng.uniform(-degrees, degrees))
    shift_x, shift_y = (float(v) for v in rng.uniform(-translate, translate, size=2))
    zoom = float(rng.uniform(scale[0], scale[1]))
    shear_x = float(rng.uniform(-shear, shear))
    bright = float(rng.uniform(brightness[0], brightness[1]))
    contr = float(rng.uniform(contrast[0], contrast[1]))
    brightness_first = bool(rng.random() < 0.5)
    return AltaAugmentParams(angle, (shift_x, shift_y), zoom, shear_x, bright, contr, brightness_first)


def _inverse_affine_coefficients(params: AltaAugmentParams, width: int, height: int) -> tuple[float, ...]:
    # Forward map about the image centre c: p' = c + t + s * R(angle) * Shear(shear) * (p - c). PIL's AFFINE
    # transform wants the inverse (output pixel -> input pixel), so we invert the 2x2 part analytically.
    theta, phi = math.radians(params.angle), math.radians(params.shear)
    cos_t, sin_t, tan_p = math.cos(theta), math.sin(theta), math.tan(phi)
    # y points down in image coordinates, so this is a counter-clockwise rotation on screen.
    a, b = cos_t, cos_t * tan_p + sin_t
    c, d = -sin_t, -sin_t * tan_p + cos_t
    a, b, c, d = (params.scale * v for v in (a, b, c, d))
    det = a * d - b * c
    inv_a, inv_b, inv_c, inv_d = d / det, -b / det, -c / det, a / det
    center_x, center_y = width * 0.5, height * 0.5
    shift_x = float(round(params.translate[0] * width))
    shift_y = float(round(params.translate[1] * height))
    offset_x, offset_y = center_x + shift_x, center_y + shift_y
    return (
        inv_a,
        inv_b,
        center_x - inv_a * offset_x - inv_b * offset_y,
        inv_c,
        inv_d,
        center_y - inv_c * offset_x - inv_d * offset_y,
    )


_GRAY_RAMP = bytes(range(256))


def _blend_table(base: int, factor: float) -> np.ndarray:
    """The value `Image.blend(constant base, image, factor)` gives each gray level (uint8 `[256]`): PIL's own blend
    of a constant row with the 256 levels, so the table is that operation's result, rounding included."""
    ramp = Image.frombytes("L", (256, 1), _GRAY_RAMP)
    return np.frombuffer(Image.blend(Image.new("L", (256, 1), base), ramp, factor).tobytes(), dtype=np.uint8)


def jitter_brightness_contrast(
    image: Image.Image, brightness: float, contrast: float, brightness_first: bool
) -> Image.Image:
    """PIL `ImageEnhance.Brightness(.).enhance(brightness)` and `ImageEnhance.Contrast(.).enhance(contrast)` of an
    "L" image, in the given order, as one lookup table (bitwise the two operations, tested).

    Both are blends of the image with a constant (black; the image's mean gray, rounded) and so act on each gray
    level alone; the only thing that depends on the whole image is the mean, read from its histogram (after the
    brightness change when that comes first). `ImageEnhance` builds two full-size constant images and blends twice.
    """
    bright = _blend_table(0, brightness)
    histogram = np.asarray(image.histogram(), dtype=np.int64)
    if brightness_first:
        histogram = np.bincount(bright, weights=histogram, minlength=256).astype(np.int64)
    # `ImageEnhance.Contrast`'s gray: the histogram mean rounded half up. ImageStat sums level * count in floats;
    # every partial sum is an integer below 2**53, so the integer sum here is the same number.
    total = int(histogram @ np.arange(256, dtype=np.int64))
    mean = int(float(total) / int(histogram.sum()) + 0.5)
    contr = _blend_table(mean, contrast)
    table = contr[bright] if brightness_first else bright[contr]
    return image.point(table.tolist())


def apply_augment_params(image: Image.Image, params: AltaAugmentParams) -> Image.Image:
    """Apply one draw to a PIL "L" image: affine (nearest neighbour, fill 0), then brightness/contrast jitter."""
    if image.mode != "L":
        image = image.convert("L")
    coefficients = _inverse_affine_coefficients(params, image.width, image.height)
    out = image.transform(image.size, Image.AFFINE, coefficients, resample=Image.NEAREST, fillcolor=0)
    return jitter_brightness_contrast(out, params.brightness, params.contrast, params.brightness_first)


def augment_with_shared_params(
    current: Image.Image | None,
    prior: Image.Image | None,
    rng: np.random.Generator,
    **ranges: Any,
) -> tuple[Image.Image | None, Image.Image | None, AltaAugmentParams]:
    """Augment the current and prior image of one view with the *same* random draw, as the reference does by
    re-seeding its RNGs before each of them. Either image may be `None` (missing); the draw is made regardless, so
    the random stream does not depend on which views exist. Returns ``(current, prior, params)``."""
    params = sample_augment_params(rng, **ranges)
    current_out = apply_augment_params(current, params) if current is not None else None
    prior_out = apply_augment_params(prior, params) if prior is not None else None
    return current_out, prior_out, params


# ----------------------------------------------------------------------------------------------------------------
# Input structure: single images, lists of images, studies
# ----------------------------------------------------------------------------------------------------------------


def is_image(value: Any) -> bool:
    """True for one image: a path, bytes, a PIL image, an array (a 4-D array is a batch of images) or a pydicom
    dataset."""
    if isinstance(value, (str, bytes, bytearray, Image.Image, np.ndarray)):
        return True
    return hasattr(value, "__fspath__") or hasattr(value, "PixelData") or hasattr(value, "__array__")


def is_study(value: Any) -> bool:
    """True for one study: a mapping of slot names to images, or an ordered list/tuple of up to four slots."""
    return isinstance(value, Mapping) or isinstance(value, (list, tuple))


def is_single_input(value: Any) -> bool:
    """True for one image or one study given alone (a mapping), False for a batch (a list of images or studies, or
    a 4-D array)."""
    if isinstance(value, Mapping):
        return True
    return is_image(value) and getattr(value, "ndim", 0) <= 3


def _study_slots(study: Any, index: int, num_slots: int) -> list[Any]:
    """A study (mapping of slot names, or an ordered sequence) → `num_slots` slots (None = missing)."""
    label = f"study {index}"
    if isinstance(study, Mapping):
        unknown = [key for key in study if key not in STUDY_SLOTS[:num_slots]]
        if unknown:
            raise ValueError(f"{label}: unknown slot name(s) {unknown}; expected keys among {STUDY_SLOTS[:num_slots]}")
        slots = [study.get(name) for name in STUDY_SLOTS[:num_slots]]
    elif isinstance(study, Sequence) and not isinstance(study, (str, bytes, bytearray)):
        if len(study) > num_slots:
            raise ValueError(
                f"{label}: {len(study)} views given but a study has at most {num_slots} "
                f"(slots {STUDY_SLOTS[:num_slots]})"
            )
        slots = list(study) + [None] * (num_slots - len(study))
    else:
        raise TypeError(f"{label}: expected a dict of views or a list of up to {num_slots} images; got {type(study)}")
    if slots[0] is None:
        raise ValueError(f"{label}: no frontal view (slot 0, key 'frontal'); the current frontal image is required")
    return slots


def _structure_inputs(images: Any, num_slots: int) -> tuple[bool, list[Any]]:
    """Return ``(is_study_batch, items)``: items are images, or per-study slot lists."""
    if images is None:
        raise ValueError("no images given (`images=None`)")
    if isinstance(images, Mapping):
        return True, [_study_slots(images, 0, num_slots)]
    if is_single_input(images):
        return False, [images]
    if getattr(images, "ndim", 0) == 4:  # a numpy array or tensor of images
        return False, list(images)
    if not isinstance(images, Sequence) or len(images) == 0:
        raise ValueError(f"expected an image, a list of images or a list of studies; got {describe_source(images)}")
    kinds = {"study" if is_study(item) else "image" for item in images}
    if len(kinds) > 1:
        raise ValueError("a batch mixes studies (dicts or lists of views) and single images; use one form")
    if kinds == {"study"}:
        return True, [_study_slots(item, i, num_slots) for i, item in enumerate(images)]
    return False, list(images)


def _as_pil(gray: np.ndarray | None) -> Image.Image | None:
    return Image.fromarray(gray, "L") if gray is not None else None


def _as_array(image: Image.Image | None) -> np.ndarray | None:
    return np.asarray(image) if image is not None else None


# ----------------------------------------------------------------------------------------------------------------
# The image processor
# ----------------------------------------------------------------------------------------------------------------


class AltaImageProcessor(BaseImageProcessor):
    r"""
    Constructs an ALTA image processor (PIL/numpy only).

    Args:
        shortest_edge (`int`, *optional*, defaults to 256):
            Shorter side after resizing, for the 224 views.
        crop_size (`int`, *optional*, defaults to 224):
            Side of the center crop fed to the vision tower.
        reconstruction_shortest_edge (`int`, *optional*, defaults to 512):
            Shorter side for the reconstruction-size frontal.
        reconstruction_crop_size (`int`, *optional*, defaults to 448):
            Side of the reconstruction-size frontal crop (the MAE target).
        image_mean (`float`, *optional*, defaults to 0.4785):
            Normalisation mean, shared by the three (identical) channels.
        image_std (`float`, *optional*, defaults to 0.2834):
            Normalisation standard deviation.
        resample (`int`, *optional*, defaults to `PIL.Image.BICUBIC` (3)):
            PIL resampling filter for the resize.
        num_slots (`int`, *optional*, defaults to 4):
            Slots of a study, the first `num_slots` of `STUDY_SLOTS` (frontal, lateral, prior_frontal,
            prior_lateral). (Older processor configs call it `num_views`; that key is still read.)
        dicom_rule (`str`, *optional*, defaults to `"voi"`):
            `"voi"` (rescale slope/intercept, VOI LUT or window, MONOCHROME1 inverted) or `"rsna"` (the reference's
            RSNA evaluation rule: raw pixels × 255/max, saturated to uint8, MONOCHROME1 inverted).
        augment_degrees (`float`, *optional*, defaults to 20.0): training rotation range ±degrees.
        augment_translate (`float`, *optional*, defaults to 0.1): training shift range, fraction of each side.
        augment_scale (`list[float]`, *optional*, defaults to `[0.95, 1.05]`): training zoom range.
        augment_shear (`float`, *optional*, defaults to 10.0): training x-shear range ±degrees.
        augment_brightness (`list[float]`, *optional*, defaults to `[0.8, 1.2]`): brightness factor range.
        augment_contrast (`list[float]`, *optional*, defaults to `[0.8, 1.2]`): contrast factor range.
        min_image_size (`int`, *optional*, defaults to 16):
            Smallest accepted side of an input, in pixels (one ViT patch). A smaller image (a thumbnail, an icon,
            a 3x3 test pattern) carries no usable detail once resized to `crop_size`, so it is refused with a
            `ValueError` naming it rather than silently upscaled; set 1 to accept any size.

    Inputs (`images`):
        - one image: PIL, numpy (uint8, uint16 and other integers, bool, float in [0, 1]), `str`/`Path` to a
          PNG/JPEG/DICOM file, `bytes`, or a pydicom `Dataset` → `pixel_values` `[1, 3, H, W]`;
        - a list of images → `pixel_values` `[B, 3, H, W]`;
        - a study (dict with keys among `frontal`, `lateral`, `prior_frontal`, `prior_lateral`; missing or `None`
          = absent) or a list of studies (dicts, or ordered lists of up to 4 images with `None` for a gap) →
          `pixel_values` `[B, 4, 3, H, W]` (absent views are all zeros) and `view_mask` bool `[B, 4]`.

    Example:

    ```python
    >>> processor = AltaImageProcessor()
    >>> batch = processor({"frontal": "pa.dcm", "lateral": "lat.png"}, return_tensors="pt")
    >>> batch["pixel_values"].shape, batch["view_mask"].tolist()
    (torch.Size([1, 4, 3, 224, 224]), [[True, True, False, False]])
    ```
    """

    model_input_names = ["pixel_values", "view_mask"]

    def __init__(
        self,
        shortest_edge: int = 256,
        crop_size: int = 224,
        reconstruction_shortest_edge: int = 512,
        reconstruction_crop_size: int = 448,
        image_mean: float = 0.4785,
        image_std: float = 0.2834,
        resample: int = Image.BICUBIC,
        num_slots: int = 4,
        dicom_rule: str = "voi",
        augment_degrees: float = 20.0,
        augment_translate: float = 0.1,
        augment_scale: Sequence[float] = (0.95, 1.05),
        augment_shear: float = 10.0,
        augment_brightness: Sequence[float] = (0.8, 1.2),
        augment_contrast: Sequence[float] = (0.8, 1.2),
        min_image_size: int = 16,
        **kwargs: Any,
    ) -> None:
        num_slots = kwargs.pop("num_views", num_slots)  # the key's name before 0.2
        super().__init__(**kwargs)
        self.shortest_edge = int(shortest_edge)
        self.crop_size = int(crop_size)
        self.reconstruction_shortest_edge = int(reconstruction_shortest_edge)
        self.reconstruction_crop_size = int(reconstruction_crop_size)
        self.image_mean = float(image_mean)
        self.image_std = float(image_std)
        self.resample = int(resample)
        self.num_slots = int(num_slots)
        self.dicom_rule = dicom_rule
        self.augment_degrees = float(augment_degrees)
        self.augment_translate = float(augment_translate)
        self.augment_scale = [float(v) for v in augment_scale]
        self.augment_shear = float(augment_shear)
        self.augment_brightness = [float(v) for v in augment_brightness]
        self.augment_contrast = [float(v) for v in augment_contrast]
        self.min_image_size = int(min_image_size)
        if self.min_image_size < 1:
            raise ValueError(f"`min_image_size` must be >= 1; got {self.min_image_size}")
        self._validate(
            self.shortest_edge, self.crop_size, self.reconstruction_shortest_edge, self.reconstruction_crop_size
        )
        if self.image_std <= 0:
            raise ValueError(f"`image_std` must be > 0; got {self.image_std}")
        if not 1 <= self.num_slots <= len(STUDY_SLOTS):
            raise ValueError(f"`num_slots` must be in 1..{len(STUDY_SLOTS)}; got {self.num_slots}")
        if self.dicom_rule not in DICOM_RULES:
            raise ValueError(f"`dicom_rule` must be one of {DICOM_RULES}; got {self.dicom_rule!r}")

    @classmethod
    def for_vision_config(cls, vision_config: Any, **kwargs: Any) -> AltaImageProcessor:
        """The reference transform scaled to a model's sizes: crops of `image_size` and `reconstruction_image_size`
        from resizes to 256/224 and 512/448 of them (at base size: 256 → 224 and 512 → 448).

        Args:
            vision_config: an `AltaVisionConfig` (or anything with `image_size` and `reconstruction_image_size`).
            kwargs: other `AltaImageProcessor` arguments.
        """
        return cls(
            shortest_edge=round(vision_config.image_size * 256 / 224),
            crop_size=vision_config.image_size,
            reconstruction_shortest_edge=round(vision_config.reconstruction_image_size * 512 / 448),
            reconstruction_crop_size=vision_config.reconstruction_image_size,
            **kwargs,
        )

    @staticmethod
    def _validate(shortest_edge: int, crop_size: int, rec_edge: int, rec_crop: int) -> None:
        for name, value in (
            ("shortest_edge", shortest_edge),
            ("crop_size", crop_size),
            ("reconstruction_shortest_edge", rec_edge),
            ("reconstruction_crop_size", rec_crop),
        ):
            if value <= 0:
                raise ValueError(f"`{name}` must be a positive integer; got {value}")
        if crop_size > shortest_edge or rec_crop > rec_edge:
            raise ValueError(
                f"crop sizes must not exceed the resize sizes; got crop_size={crop_size} > shortest_edge="
                f"{shortest_edge}"
                if crop_size > shortest_edge
                else f"reconstruction_crop_size={rec_crop} > reconstruction_shortest_edge={rec_edge}"
            )

    def __call__(self, images: Any = None, **kwargs: Any) -> BatchFeature:
        """Same as `preprocess`."""
        return self.preprocess(images, **kwargs)

    # -- pieces -----------------------------------------------------------------------------------------------

    def augment_ranges(self) -> dict[str, Any]:
        """The training augmentation ranges, as keyword arguments of `sample_augment_params`."""
        return {
            "degrees": self.augment_degrees,
            "translate": self.augment_translate,
            "scale": tuple(self.augment_scale),
            "shear": self.augment_shear,
            "brightness": tuple(self.augment_brightness),
            "contrast": tuple(self.augment_contrast),
        }

    def load(self, image: Any, dicom_rule: str | None = None) -> Image.Image:
        """Decode one input into a PIL "L" (or colour "RGB") image; see `cxr_io_alta.load_image`."""
        return load_image(image, dicom_rule=dicom_rule or self.dicom_rule)

    def _load_named(self, image: Any, dicom_rule: str, where: str) -> Image.Image | None:
        if image is None:
            return None
        try:
            loaded = self.load(image, dicom_rule)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{where}: {err}") from err
        if min(loaded.size) < self.min_image_size:
            raise ValueError(
                f"{where}: {describe_source(image)} is {loaded.width}x{loaded.height} pixels, smaller than "
                f"min_image_size={self.min_image_size}; an image this small holds no usable detail at "
                f"{self.crop_size}x{self.crop_size} (lower `min_image_size` to accept it)"
            )
        return loaded

    # -- main entry point -------------------------------------------------------------------------------------

    def preprocess(
        self,
        images: Any,
        return_tensors: str | None = None,
        *,
        train: bool = False,
        seed: int | None = None,
        generator: np.random.Generator | Sequence[np.random.Generator] | None = None,
        return_reconstruction: bool | None = None,
        reconstruction_replaces_frontal: bool = False,
        shortest_edge: int | None = None,
        crop_size: int | None = None,
        reconstruction_shortest_edge: int | None = None,
        reconstruction_crop_size: int | None = None,
        image_mean: float | None = None,
        image_std: float | None = None,
        resample: int | None = None,
        dicom_rule: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Turn images or studies into model inputs.

        Args:
            images: see the class docstring (one image, a list of images, a study or a list of studies).
            return_tensors (`str`, *optional*): `"pt"` for torch tensors, `"np"` or `None` for numpy arrays.
            train (`bool`, defaults to `False`): apply the training augmentation (random affine ±20°, shift 0.1,
                zoom 0.95–1.05, shear ±10°, then brightness/contrast 0.8–1.2). In a study the current and prior
                frontal share one draw and the current and prior lateral share another (`augment_with_shared_params`).
            seed (`int`, *optional*) / generator (`np.random.Generator`, *optional*): randomness for `train=True`;
                a fixed seed gives identical outputs. Without either, a fresh unseeded generator is used. A list of
                generators, one per image or study, gives each item its own draws (independent of its batch).
            return_reconstruction (`bool`, *optional*, defaults to `train`): also return the frontal at the
                reconstruction size, `reconstruction_pixel_values` `[B, 3, 448, 448]` (slot 0 of a study, or the
                image itself), with the same augmentation draw as slot 0.
            reconstruction_replaces_frontal (`bool`, defaults to `False`): with `return_reconstruction`, do not compute
                the `crop_size` current frontal of a study: slot 0 of `pixel_values` stays all zeros while
                `view_mask` marks it present. `AltaForPreTraining` derives slot 0 from `reconstruction_pixel_values`
                and ignores it (as the reference does), so training need not compute it; the random draws are the
                same either way.
            shortest_edge, crop_size, reconstruction_shortest_edge, reconstruction_crop_size, image_mean,
            image_std, resample, dicom_rule: per-call overrides of the attributes of the same name.

        Returns:
            `BatchFeature` with `pixel_values` float32 `[B, 3, H, W]` (images) or `[B, V, 3, H, W]` (studies),
            `view_mask` bool `[B, V]` (studies only) and, when requested, `reconstruction_pixel_values`
            float32 `[B, 3, Hr, Wr]`.
        """
        kwargs.pop("do_convert_rgb", None)  # inputs are always reduced to gray; accepted for API compatibility
        if kwargs:
            raise TypeError(f"AltaImageProcessor.preprocess got unexpected keyword argument(s) {sorted(kwargs)}")
        shortest_edge = int(shortest_edge or self.shortest_edge)
        crop_size = int(crop_size or self.crop_size)
        rec_edge = int(reconstruction_shortest_edge or self.reconstruction_shortest_edge)
        rec_crop = int(reconstruction_crop_size or self.reconstruction_crop_size)
        self._validate(shortest_edge, crop_size, rec_edge, rec_crop)
        mean = self.image_mean if image_mean is None else float(image_mean)
        std = self.image_std if image_std is None else float(image_std)
        resample = self.resample if resample is None else int(resample)
        dicom_rule = dicom_rule or self.dicom_rule
        if return_reconstruction is None:
            return_reconstruction = train
        study_batch, items = _structure_inputs(images, self.num_slots)
        rngs: list[np.random.Generator | None] = [None] * len(items)
        if train and isinstance(generator, Sequence):
            if len(generator) != len(items):
                raise ValueError(f"got {len(generator)} generators for {len(items)} images or studies")
            rngs = list(generator)
        elif train:
            shared = generator if generator is not None else np.random.default_rng(seed)
            rngs = [shared] * len(items)
        ranges = self.augment_ranges()
        views: list[np.ndarray] = []  # uint8 [V, H, W] per item
        blank: list[list[bool]] = []  # frames that stay all zeros after normalisation
        masks: list[list[bool]] = []
        reconstructions: list[np.ndarray] = []
        for index, item in enumerate(items):
            slots = item if study_batch else [item]
            where = [
                f"study {index} view {STUDY_SLOTS[slot]!r}" if study_batch else f"image {index}"
                for slot in range(len(slots))
            ]
            loaded = [self._load_named(view, dicom_rule, where[slot]) for slot, view in enumerate(slots)]
            skip_frontal = bool(reconstruction_replaces_frontal and return_reconstruction and study_batch)
            crops = [
                resize_and_crop_uint8(image, shortest_edge, crop_size, resample)
                if image is not None and not (skip_frontal and slot == 0)
                else None
                for slot, image in enumerate(loaded)
            ]
            params: list[AltaAugmentParams | None] = [None] * len(slots)
            rng = rngs[index]
            if rng is not None:
                # Slots 0/2 (frontal now/before) share one draw and slots 1/3 (lateral now/before) another. Both draws
                # happen even for missing views, so the random stream does not depend on which views exist.
                for first in range(min(2, len(slots))):
                    second = first + 2 if first + 2 < len(slots) else None
                    prior = crops[second] if second is not None else None
                    current_aug, prior_aug, params[first] = augment_with_shared_params(
                        _as_pil(crops[first]), _as_pil(prior), rng, **ranges
                    )
                    crops[first] = _as_array(current_aug)
                    if second is not None:
                        crops[second], params[second] = _as_array(prior_aug), params[first]
            present = [image is not None for image in loaded]
            # Frames stay uint8 until the whole batch is in: one normalisation pass writes the float32 output.
            views.append(np.stack([np.zeros((crop_size, crop_size), np.uint8) if c is None else c for c in crops]))
            # A missing view is all zeros *after* normalisation (the model's fallback rule: frame sum == 0); so is
            # slot 0 when the model derives it from the reconstruction-size frontal.
            blank.append([not p or (skip_frontal and slot == 0) for slot, p in enumerate(present)])
            masks.append(present)
            if return_reconstruction:
                big = resize_and_crop_uint8(loaded[0], rec_edge, rec_crop, resample)
                if params[0] is not None:
                    big = np.asarray(apply_augment_params(Image.fromarray(big, "L"), params[0]))
                reconstructions.append(big)

        pixels = normalize_uint8(np.stack(views), mean, std)
        pixels[np.asarray(blank, dtype=bool)] = 0.0
        data: dict[str, Any] = {"pixel_values": pixels if study_batch else pixels[:, 0]}
        if study_batch:
            data["view_mask"] = np.asarray(masks, dtype=bool)
        if return_reconstruction:
            data["reconstruction_pixel_values"] = normalize_uint8(np.stack(reconstructions), mean, std)
        return BatchFeature(data=data, tensor_type=return_tensors)


# `save_pretrained` then copies this file (and `cxr_io_alta.py`) and writes `auto_map`, for `trust_remote_code`.
AltaImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "is_image",
    "is_single_input",
    "is_study",
    "AltaAugmentParams",
    "AltaImageProcessor",
    "apply_augment_params",
    "augment_with_shared_params",
    "center_crop",
    "jitter_brightness_contrast",
    "normalize_uint8",
    "resize_and_crop_uint8",
    "resize_shorter_side",
    "sample_augment_params",
]
