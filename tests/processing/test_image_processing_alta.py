"""AltaImageProcessor: bitwise parity with the reference transform, study slots, overrides, augmentation, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance
from safetensors.numpy import load_file

from modeling_alta.image_processing_alta import (
    AltaImageProcessor,
    apply_augment_params,
    augment_with_shared_params,
    jitter_brightness_contrast,
    normalize_uint8,
    resize_and_crop_uint8,
    sample_augment_params,
)


GOLDEN_IMAGES = ("img0_300x400.png", "img1_512x512.png", "img2_1024x800.png")


@pytest.fixture(scope="module")
def goldens(parity_dir):
    return load_file(str(parity_dir / "preprocess" / "preprocess.safetensors"))


@pytest.fixture(scope="module")
def processor():
    return AltaImageProcessor()


# ------------------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("index", range(3))
def test_uint8_stages_are_bitwise_equal(parity_dir, goldens, index):
    image = Image.open(parity_dir / "preprocess" / GOLDEN_IMAGES[index])
    resized = np.asarray(image.convert("L").resize(goldens[f"img{index}.resize256_u8"].shape[::-1], Image.BICUBIC))
    np.testing.assert_array_equal(resized, goldens[f"img{index}.resize256_u8"])
    np.testing.assert_array_equal(resize_and_crop_uint8(image, 256, 224), goldens[f"img{index}.crop224_u8"])
    np.testing.assert_array_equal(resize_and_crop_uint8(image, 512, 448), goldens[f"img{index}.crop448_u8"])
    # The reference opens images as RGB; the RGB path must give the same bytes.
    np.testing.assert_array_equal(
        resize_and_crop_uint8(image.convert("RGB"), 256, 224), goldens[f"img{index}.crop224_u8"]
    )


def test_normalised_outputs_match_goldens(parity_dir, goldens, processor):
    paths = [parity_dir / "preprocess" / name for name in GOLDEN_IMAGES]
    out = processor(paths, return_tensors="pt", return_reconstruction=True)
    assert out["pixel_values"].shape == (3, 3, 224, 224) and out["pixel_values"].dtype == torch.float32
    assert out["reconstruction_pixel_values"].shape == (3, 3, 448, 448)
    for index in range(3):
        golden = torch.from_numpy(goldens[f"img{index}.eval224_ch0"])
        for channel in range(3):
            torch.testing.assert_close(out["pixel_values"][index, channel], golden, atol=1e-6, rtol=0)
        # big448 float golden exists for img0; for the others the uint8 crop defines it exactly.
        big_u8 = torch.from_numpy(goldens[f"img{index}.crop448_u8"]).float() / 255
        torch.testing.assert_close(
            out["reconstruction_pixel_values"][index, 0], (big_u8 - 0.4785) / 0.2834, atol=1e-6, rtol=0
        )
    torch.testing.assert_close(
        out["reconstruction_pixel_values"][0, 1], torch.from_numpy(goldens["img0.big448_ch0"]), atol=1e-6, rtol=0
    )


def test_colour_input_is_resized_before_gray_conversion():
    rng = np.random.default_rng(0)
    colour = Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8), "RGB")
    expected = colour.resize((256, int(256 * 300 / 260)), Image.BICUBIC)
    top = int(round((expected.height - 224) / 2))
    left = int(round((expected.width - 224) / 2))
    expected = np.asarray(expected.crop((left, top, left + 224, top + 224)).convert("L"))
    out = AltaImageProcessor()(colour)["pixel_values"][0, 0]
    np.testing.assert_allclose(out, (expected.astype(np.float32) / 255 - 0.4785) / 0.2834, atol=1e-6)


# ------------------------------------------------------------------------------------------------ inputs and slots


def test_single_image_list_and_numpy_return_types(processor):
    image = np.full((260, 300), 128, dtype=np.uint8)
    single = processor(image)
    assert isinstance(single["pixel_values"], np.ndarray) and single["pixel_values"].shape == (1, 3, 224, 224)
    assert "view_mask" not in single
    batch = processor([image, Image.fromarray(image)], return_tensors="pt")
    assert batch["pixel_values"].shape == (2, 3, 224, 224)
    torch.testing.assert_close(batch["pixel_values"][0], batch["pixel_values"][1])


def test_numpy_dtypes_map_to_the_same_gray(processor):
    base = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    expected = processor(base)["pixel_values"]
    variants = [base.astype(np.float32) / 255, base.astype(np.uint16) * 257, base[..., None], np.stack([base] * 3, -1)]
    for variant in variants:
        np.testing.assert_allclose(processor(variant)["pixel_values"], expected, atol=1e-6)
    # channels-first, as a torch tensor comes
    np.testing.assert_allclose(processor(torch.from_numpy(np.stack([base] * 3)))["pixel_values"], expected, atol=1e-6)


def test_studies_dict_and_list_forms(processor):
    frontal = np.full((300, 300), 200, dtype=np.uint8)
    lateral = np.full((300, 300), 50, dtype=np.uint8)
    studies = [
        {"frontal": frontal, "lateral": lateral},
        [frontal, None, frontal],
        {"frontal": frontal, "prior_lateral": lateral, "prior_frontal": None},
    ]
    out = processor(studies, return_tensors="pt")
    assert out["pixel_values"].shape == (3, 4, 3, 224, 224)
    assert out["view_mask"].dtype == torch.bool
    assert out["view_mask"].tolist() == [
        [True, True, False, False],
        [True, False, True, False],
        [True, False, False, True],
    ]
    missing = ~out["view_mask"]
    assert out["pixel_values"][missing].abs().sum() == 0
    assert (out["pixel_values"][out["view_mask"]].flatten(1).abs().sum(1) > 0).all()
    torch.testing.assert_close(out["pixel_values"][0, 0], out["pixel_values"][1, 2])
    single_study = processor({"frontal": frontal}, return_tensors="pt")
    assert single_study["pixel_values"].shape == (1, 4, 3, 224, 224)


def test_per_call_overrides_and_constructor_settings():
    image = np.full((400, 300), 90, dtype=np.uint8)
    small = AltaImageProcessor(shortest_edge=128, crop_size=112, image_mean=0.5, image_std=0.25)
    out = small(image)["pixel_values"]
    assert out.shape == (1, 3, 112, 112)
    np.testing.assert_allclose(out, (np.float32(90) / 255 - 0.5) / 0.25, atol=1e-6)
    override = AltaImageProcessor()(image, shortest_edge=64, crop_size=32)["pixel_values"]
    assert override.shape == (1, 3, 32, 32)


def test_save_and_load_round_trip(tmp_path):
    processor = AltaImageProcessor(crop_size=192, image_mean=0.5, dicom_rule="rsna", augment_degrees=5.0)
    processor.save_pretrained(tmp_path)
    loaded = AltaImageProcessor.from_pretrained(tmp_path)
    for key in ("crop_size", "image_mean", "dicom_rule", "augment_degrees", "augment_scale", "resample"):
        assert getattr(loaded, key) == getattr(processor, key), key
    image = np.random.default_rng(1).integers(0, 256, (250, 300), dtype=np.uint8)
    np.testing.assert_array_equal(processor(image)["pixel_values"], loaded(image)["pixel_values"])
    config = (tmp_path / "preprocessor_config.json").read_text()
    assert '"AutoImageProcessor": "image_processing_alta.AltaImageProcessor"' in config


# ------------------------------------------------------------------------------------------------ augmentation


def _study(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (280, 320), dtype=np.uint8)
    return {"frontal": base, "lateral": base[:, ::-1].copy(), "prior_frontal": base, "prior_lateral": base.T.copy()}


def test_training_mode_is_seeded_and_reproducible(processor):
    studies = [_study(0), _study(1)]
    first = processor(studies, train=True, seed=7, return_tensors="pt")
    again = processor(studies, train=True, seed=7, return_tensors="pt")
    other = processor(studies, train=True, seed=8, return_tensors="pt")
    assert set(first) == {"pixel_values", "view_mask", "reconstruction_pixel_values"}
    assert first["reconstruction_pixel_values"].shape == (2, 3, 448, 448)
    for key in first:
        assert torch.equal(first[key], again[key]), key
    assert not torch.equal(first["pixel_values"], other["pixel_values"])
    evaluation = processor(studies, return_tensors="pt")
    assert not torch.equal(first["pixel_values"], evaluation["pixel_values"])


def test_current_and_prior_of_a_view_share_one_draw(processor):
    # Identical current and prior images must stay identical after augmentation, view by view, while the frontal
    # and lateral draws differ.
    study = _study(3)
    study["prior_lateral"] = study["lateral"]
    out = processor([study], train=True, seed=11)["pixel_values"][0]
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[1], out[3])
    frontal_only = processor([{"frontal": study["frontal"], "prior_frontal": study["frontal"]}], train=True, seed=11)
    # the lateral draw happens even when laterals are missing, so the frontal result does not depend on them
    np.testing.assert_array_equal(frontal_only["pixel_values"][0, 0], out[0])


def test_augment_with_shared_params_applies_one_draw_to_both():
    rng = np.random.default_rng(5)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224), dtype=np.uint8), "L")
    current, prior, params = augment_with_shared_params(image, image.copy(), rng)
    assert np.array_equal(np.asarray(current), np.asarray(prior))
    assert np.array_equal(np.asarray(apply_augment_params(image, params)), np.asarray(current))
    assert -20 <= params.angle <= 20 and -10 <= params.shear <= 10 and 0.95 <= params.scale <= 1.05
    assert all(-0.1 <= t <= 0.1 for t in params.translate)
    assert 0.8 <= params.brightness <= 1.2 and 0.8 <= params.contrast <= 1.2
    _, missing_prior, _ = augment_with_shared_params(image, None, rng)
    assert missing_prior is None


def test_affine_identity_and_fill():
    image = Image.fromarray(np.random.default_rng(2).integers(1, 256, (64, 64), dtype=np.uint8), "L")
    params = sample_augment_params(np.random.default_rng(0))
    identity = type(params)(0.0, (0.0, 0.0), 1.0, 0.0, 1.0, 1.0, True)
    np.testing.assert_array_equal(np.asarray(apply_augment_params(image, identity)), np.asarray(image))
    shifted = type(params)(0.0, (0.1, 0.0), 1.0, 0.0, 1.0, 1.0, True)
    moved = np.asarray(apply_augment_params(image, shifted))
    shift = round(0.1 * 64)
    np.testing.assert_array_equal(moved[:, shift:], np.asarray(image)[:, :-shift])
    assert (moved[:, :shift] == 0).all()  # fill 0 where the shift uncovers the canvas


def _image_enhance(image: Image.Image, brightness: float, contrast: float, brightness_first: bool) -> Image.Image:
    # The operations the lookup table stands for, as PIL implements them.
    first, second = (ImageEnhance.Brightness, ImageEnhance.Contrast) if brightness_first else (
        ImageEnhance.Contrast, ImageEnhance.Brightness)  # fmt: skip
    factors = (brightness, contrast) if brightness_first else (contrast, brightness)
    return second(first(image).enhance(factors[0])).enhance(factors[1])


def test_jitter_lookup_table_is_bitwise_pil_image_enhance():
    rng = np.random.default_rng(0)
    for trial in range(400):
        height, width = (int(v) for v in rng.integers(1, 90, size=2))
        kind = trial % 4
        if kind == 0:  # every level
            pixels = rng.integers(0, 256, (height, width), dtype=np.uint8)
        elif kind == 1:  # black and white only: a mean far from mid-gray
            pixels = (rng.integers(0, 2, (height, width)) * 255).astype(np.uint8)
        elif kind == 2:  # a radiograph-like narrow histogram at a random level
            pixels = np.clip(rng.normal(rng.uniform(0, 255), 30, (height, width)), 0, 255).astype(np.uint8)
        else:  # constant
            pixels = np.full((height, width), rng.integers(0, 256), np.uint8)
        image = Image.fromarray(pixels, "L")
        brightness, contrast = (float(v) for v in rng.uniform(0.0, 2.5, size=2))
        if trial % 9 == 0:
            brightness, contrast = 1.0, float(rng.choice([0.0, 0.8, 1.0, 1.2]))
        for brightness_first in (True, False):
            expected = _image_enhance(image, brightness, contrast, brightness_first)
            got = jitter_brightness_contrast(image, brightness, contrast, brightness_first)
            assert got.mode == "L" and got.size == image.size
            np.testing.assert_array_equal(np.asarray(got), np.asarray(expected), err_msg=f"trial {trial}")


# ------------------------------------------------------------------------------------------------ real radiographs


def test_real_nih_png_and_kermany_jpeg(real_cxr_dir, processor):
    png = sorted((real_cxr_dir / "nih").glob("*.png"))[0]
    jpeg = sorted((real_cxr_dir / "kermany").rglob("*.jpeg"))[0]
    assert Image.open(png).size == (1024, 1024)
    out = processor([{"frontal": png, "lateral": jpeg}], return_tensors="pt")
    assert out["pixel_values"].shape == (1, 4, 3, 224, 224)
    assert torch.isfinite(out["pixel_values"]).all()
    lo, hi = (0 - 0.4785) / 0.2834, (1 - 0.4785) / 0.2834
    present = out["pixel_values"][0, :2]
    assert present.min() >= lo - 1e-6 and present.max() <= hi + 1e-6
    expected = resize_and_crop_uint8(Image.open(png).convert("RGB"), 256, 224)
    np.testing.assert_allclose(out["pixel_values"][0, 0, 0].numpy(), (expected / np.float32(255) - 0.4785) / 0.2834)


def test_real_dicom_monochrome1_is_inverted(real_cxr_dir, processor):
    pytest.importorskip("pydicom")
    mono2 = real_cxr_dir / "dicom" / "siim_pneumothorax_sample.dcm"
    mono1 = real_cxr_dir / "dicom" / "synthetic_monochrome1.dcm"
    gray2 = np.asarray(processor.load(mono2))
    gray1 = np.asarray(processor.load(mono1))
    assert gray2.shape == (1024, 1024)
    np.testing.assert_array_equal(gray1, 255 - gray2)
    out = processor([mono2, mono1], return_tensors="pt")["pixel_values"]
    assert not torch.allclose(out[0], out[1])
    rsna = AltaImageProcessor(dicom_rule="rsna")
    np.testing.assert_array_equal(np.asarray(rsna.load(mono1)), 255 - np.asarray(rsna.load(mono2)))


@pytest.mark.parametrize(("mean", "std"), [(0.4785, 0.2834), (0.4978, 0.2449), (0.0, 1.0), (0.5, 0.0123)])
def test_normalize_uint8_is_bitwise_the_elementwise_formula(mean: float, std: float):
    gray = np.random.default_rng(0).integers(0, 256, size=(2, 4, 9, 7), dtype=np.uint8)
    gray[0, 0, 0, :2] = (0, 255)  # both ends of the table
    expected = (gray.astype(np.float32) / np.float32(255.0) - np.float32(mean)) / np.float32(std)
    out = normalize_uint8(gray, mean, std)
    assert out.shape == (2, 4, 3, 9, 7) and out.dtype == np.float32 and out.flags.c_contiguous
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], expected)
    with pytest.raises(TypeError, match="uint8"):
        normalize_uint8(gray.astype(np.int16), mean, std)
