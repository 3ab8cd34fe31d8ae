"""Radiograph decoding: DICOM rules (rescale, window, VOI LUT, 12/16-bit, compressed, RSNA) and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modeling_alta.image_processing_alta import AltaImageProcessor
from processing.cxr_io import load_image, load_rsna_dicom, read_dicom

from .dicom_factory import write_dicom


pydicom = pytest.importorskip("pydicom")

RAMP_12BIT = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)  # 0..4095


# ------------------------------------------------------------------------------------------------ DICOM rules


def test_12_bit_without_window_is_scaled_to_full_range(tmp_path):
    gray = read_dicom(write_dicom(tmp_path / "a.dcm", RAMP_12BIT, bits_stored=12))
    assert gray.dtype == np.uint8 and gray.shape == (64, 64)
    np.testing.assert_array_equal(gray, np.rint(RAMP_12BIT * (255 / 4095)).astype(np.uint8))


def test_rescale_and_window_are_applied(tmp_path):
    path = write_dicom(
        tmp_path / "w.dcm", RAMP_12BIT, bits_stored=12, slope=2.0, intercept=-100.0, window=(2000.0, 1001.0)
    )
    gray = read_dicom(path)
    value = RAMP_12BIT * 2.0 - 100.0  # modality LUT first
    assert (gray[value <= 1499] == 0).all() and (gray[value > 2500] == 255).all()
    # the window centre maps to mid-gray
    centre = np.argmin(np.abs(value - 1999.5))
    assert abs(int(gray.ravel()[centre]) - 128) <= 1


def test_voi_lut_sequence_wins_and_monochrome1_is_inverted(tmp_path):
    lut = np.linspace(65535, 0, 4096).astype(np.uint16)  # a decreasing LUT
    gray = read_dicom(write_dicom(tmp_path / "lut.dcm", RAMP_12BIT, bits_stored=12, voi_lut=lut, window=(10, 2)))
    assert gray[0, 0] == 255 and gray[-1, -1] == 0
    mono1 = read_dicom(write_dicom(tmp_path / "m1.dcm", RAMP_12BIT, bits_stored=12, photometric="MONOCHROME1"))
    mono2 = read_dicom(write_dicom(tmp_path / "m2.dcm", RAMP_12BIT, bits_stored=12))
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_compressed_rle_and_16_bit(tmp_path):
    plain = read_dicom(write_dicom(tmp_path / "p.dcm", RAMP_12BIT * 16))
    compressed_path = write_dicom(tmp_path / "rle.dcm", RAMP_12BIT * 16, rle=True)
    assert pydicom.dcmread(compressed_path).file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    np.testing.assert_array_equal(read_dicom(compressed_path), plain)
    assert plain.max() == 255


def test_rsna_rule_matches_convert_scale_abs(tmp_path):
    pixels = np.array([[0, 1, 2, 3], [100, 1000, 4094, 4095]], dtype=np.uint16)
    path = write_dicom(tmp_path / "r.dcm", pixels, bits_stored=12, slope=2.0, intercept=-5.0)
    expected = np.clip(np.rint(pixels.astype(np.float32) * np.float32(255 / 4095)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(read_dicom(path, rule="rsna"), expected)  # no rescale under the RSNA rule
    inverted = write_dicom(tmp_path / "r1.dcm", pixels, bits_stored=12, photometric="MONOCHROME1")
    np.testing.assert_array_equal(np.asarray(load_rsna_dicom(inverted)), 255 - expected)


def test_dicom_through_the_processor_and_from_bytes(tmp_path, real_cxr_dir):
    path = real_cxr_dir / "dicom" / "siim_pneumothorax_sample.dcm"
    assert str(pydicom.dcmread(path).file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.50"  # JPEG baseline
    from_path = np.asarray(load_image(path))
    np.testing.assert_array_equal(np.asarray(load_image(path.read_bytes())), from_path)
    np.testing.assert_array_equal(np.asarray(load_image(pydicom.dcmread(path))), from_path)
    # 8-bit data without VOI is kept as is
    np.testing.assert_array_equal(from_path, pydicom.dcmread(path).pixel_array)


# ------------------------------------------------------------------------------------------------ bad input


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="image file not found: 'no/such/file.png'"):
        load_image("no/such/file.png")


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.png"
    path.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ValueError, match=r"corrupt\.png.*not a recognised image file"):
        load_image(path)


def test_truncated_png(tmp_path, real_cxr_dir):
    data = (sorted((real_cxr_dir / "nih").glob("*.png"))[0]).read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated\.png.*corrupt or truncated image file"):
        load_image(path)


def test_truncated_dicom(tmp_path, real_cxr_dir):
    data = (real_cxr_dir / "dicom" / "siim_pneumothorax_sample.dcm").read_bytes()
    path = tmp_path / "truncated.dcm"
    path.write_bytes(data[:2000])
    # pydicom also warns about the missing sequence delimiter; the error is what users act on.
    with pytest.warns(UserWarning, match="End of file"), pytest.raises(ValueError, match=r"truncated\.dcm"):
        load_image(path)


def test_empty_file_and_empty_images(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.png.*empty file \(0 bytes\)"):
        load_image(path)
    with pytest.raises(ValueError, match=r"empty image \(shape \(0, 10\)\)"):
        load_image(np.zeros((0, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"empty image \(0x0\)"):
        load_image(Image.new("L", (0, 0)))


def test_unsupported_mode_and_values():
    with pytest.raises(ValueError, match=r"PIL image CMYK 8x8: unsupported image mode 'CMYK'; supported modes are"):
        load_image(Image.new("CMYK", (8, 8)))
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\]; got values in \[-1, 2\]"):
        load_image(np.array([[-1.0, 2.0]], dtype=np.float32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_image(np.array([[np.nan, 0.5]]))
    with pytest.raises(ValueError, match=r"expected an image array.*got shape \(1, 2, 3, 4, 5\)"):
        load_image(np.zeros((2, 3, 4, 5), dtype=np.uint8)[None])
    with pytest.raises(TypeError, match="unsupported image input of type int"):
        load_image(3)


def test_processor_errors_name_the_study_and_view(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"\0" * 50)
    good = np.zeros((32, 32), dtype=np.uint8)
    processor = AltaImageProcessor()
    with pytest.raises(ValueError, match=r"study 1 view 'lateral': .*bad\.jpg"):
        processor([{"frontal": good}, {"frontal": good, "lateral": bad}])
    with pytest.raises(ValueError, match=r"image 0: PIL image LAB 8x8: unsupported image mode 'LAB'"):
        processor([Image.new("LAB", (8, 8))])


# ------------------------------------------------------------------------------------------------ size limits


def _declare_size(path, rows: int, columns: int) -> None:
    """Rewrite a small DICOM's header to declare another size; the pixel data stays the few bytes it was."""
    dataset = pydicom.dcmread(path)
    dataset.Rows, dataset.Columns = rows, columns
    dataset.save_as(path, enforce_file_format=True)


def test_an_oversized_dicom_is_refused_before_decoding(tmp_path):
    from modeling_alta.cxr_io_alta import ImageTooLargeError

    path = write_dicom(tmp_path / "bomb.dcm", np.zeros((4, 4), np.uint8))
    _declare_size(path, 15000, 15000)  # 2.4 GB as uint16 if decoded; the file is a few hundred bytes
    assert path.stat().st_size < 2000
    with pytest.raises(
        ImageTooLargeError, match=r"bomb\.dcm'?: the DICOM declares 15000x15000 pixels \(225,000,000\)"
    ):
        load_image(path)
    with pytest.raises(Image.DecompressionBombError, match=r"twice PIL.Image.MAX_IMAGE_PIXELS \(89,478,485\)"):
        read_dicom(path)  # also what PIL's own guard raises, for code that catches that
    with pytest.raises(ValueError, match=r"study 0 view 'frontal': .*bomb\.dcm.*refused before decoding"):
        AltaImageProcessor()([{"frontal": path}])


def test_the_dicom_limit_follows_pils_setting(tmp_path, monkeypatch):
    from modeling_alta.cxr_io_alta import ImageTooLargeError

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    warned = write_dicom(tmp_path / "12.dcm", np.full((12, 12), 7, np.uint8))  # 144 pixels: over the limit
    with pytest.warns(Image.DecompressionBombWarning, match=r"12\.dcm.*12x12 pixels \(144\)"):
        assert load_image(warned).size == (12, 12)
    with pytest.raises(ImageTooLargeError, match=r"15x15 pixels \(225\), more than twice .* \(100\)"):
        load_image(write_dicom(tmp_path / "15.dcm", np.zeros((15, 15), np.uint8)))
    png = tmp_path / "15.png"
    Image.fromarray(np.zeros((15, 15), np.uint8)).save(png)
    with pytest.raises(ImageTooLargeError, match=r"15\.png'?: refused before decoding"):  # PNG: PIL's own guard
        load_image(png)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # no limit, as in PIL
    assert load_image(tmp_path / "15.dcm").size == (15, 15)


def test_a_tiny_image_is_refused_by_name():
    with pytest.raises(
        ValueError, match=r"image 1: numpy array uint8 \(3, 3\) is 3x3 pixels, smaller than min_image_size=16"
    ):
        AltaImageProcessor()([np.zeros((64, 64), np.uint8), np.zeros((3, 3), np.uint8)])
    assert AltaImageProcessor(min_image_size=1)([np.zeros((3, 3), np.uint8)])["pixel_values"].shape == (1, 3, 224, 224)
