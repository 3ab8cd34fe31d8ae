"""Tiny synthetic DICOM files for tests (pydicom only; written into pytest's tmp_path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    voi_lut: np.ndarray | None = None,
    rle: bool = False,
    tags: dict | None = None,
) -> Path:
    """Write a single-frame grayscale DICOM with the given pixel array (uint8 or uint16) and tags (`tags`: more
    attributes by keyword, e.g. `{"StudyInstanceUID": ..., "ViewPosition": "PA"}`)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    allocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored or allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0.0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        from pydicom.dataset import Dataset

        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.add_new(0x00283006, "US", [int(v) for v in voi_lut])  # LUTData; US keeps it a list of ints
        ds.VOILUTSequence = Sequence([item])
    for keyword, value in (tags or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if rle:
        ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_test_archive(root: Path, size: int = 40) -> dict:
    """A small DICOM archive of three patients in nested folders (file names without suffix), with what a correct
    grouping finds. Views come from ViewPosition (PA, AP, LATERAL, LL) and from each fallback; one patient has three
    dated studies (priors); broken and foreign files are mixed in.

    Returns:
        `{"studies": {study_uid: {slot: file name or None, "prior": study_uid or None}}, "unusable": {file or
        "study <uid>": reason fragment}, "unassigned": [file names], "files": {name: Path}}`.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    rng = np.random.default_rng(0)
    files: dict[str, Path] = {}

    def image(name: str, folder: str, study: str, patient: str | None, date: str | None, time: str | None,
              shape: tuple[int, int] = (size, size), **tags) -> Path:  # fmt: skip
        base = {"StudyInstanceUID": study, "Modality": tags.pop("Modality", "DX")}
        if patient is not None:
            base["PatientID"] = patient
        if date is not None:
            base["StudyDate"] = date
        if time is not None:
            base["StudyTime"] = time
        path = root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 4096, size=shape, dtype=np.uint16)
        files[name] = write_dicom(path, pixels, bits_stored=12, tags={**base, **tags})
        return files[name]

    code = Dataset()
    code.CodeMeaning = "postero-anterior"
    # Patient P1: three studies in time order; the second has two frontal candidates and an LL lateral.
    image("p1s1-pa", "P1/S1", "1.1", "P1", "20200101", "080000", ViewPosition="PA")
    image("p1s1-lat", "P1/S1", "1.1", "P1", "20200101", "080000", ViewPosition="LATERAL")
    image("p1s2-ap", "P1/S2", "1.2", "P1", "20210305", None, ViewPosition="AP")
    image("p1s2-ap-small", "P1/S2", "1.2", "P1", "20210305", None, shape=(size // 2, size // 2), ViewPosition="AP")
    image("p1s2-ll", "P1/S2", "1.2", "P1", "20210305", None, ViewPosition="LL")
    image("p1s3-pa", "P1/S3", "1.3", "P1", "20210305", "103000.5", ViewPosition="PA ")
    image("p1s3-lao", "P1/S3", "1.3", "P1", "20210305", "103000.5", ViewPosition="LAO")
    # Patient P2: views from the fallbacks; the third study has no date.
    image("p2s1-code", "P2/a", "2.1", "P2", "20190101", "1200", ViewCodeSequence=Sequence([code]))
    image("p2s1-orient", "P2/a", "2.1", "P2", "20190101", "1200", PatientOrientation=["A", "F"])
    image("p2s2-desc", "P2/b", "2.2", "P2", "20200202", "0900", SeriesDescription="CHEST PA")
    image("p2s2-lat", "P2/b", "2.2", "P2", "20200202", "0900", ViewPosition="LATERAL")
    image("p2s3-pa", "P2/c", "2.3", "P2", None, None, ViewPosition="PA")
    # Patient P3: a lateral only (unusable study); patient P4: a frontal whose pixel data is cut off (usable here:
    # only headers are read).
    image("p3s1-lat", "P3", "3.1", "P3", "20200101", None, ViewPosition="LL")
    cut = image("p4s1-pa", "P4", "4.1", "P4", "20200101", None, ViewPosition="PA")
    cut.write_bytes(cut.read_bytes()[:-size])
    # Broken and foreign files.
    image("ct-slice", "misc", "9.1", "P9", "20200101", None, Modality="CT")
    (root / "misc" / "notes.txt").write_text("not an image")
    truncated = root / "misc" / "truncated-header"
    truncated.write_bytes(files["p1s1-pa"].read_bytes()[:200])
    (root / "misc" / "copy-of-p1s1-pa").write_bytes(files["p1s1-pa"].read_bytes())
    return {
        "studies": {
            "1.1": {"frontal": "p1s1-pa", "lateral": "p1s1-lat", "prior": None},
            "1.2": {"frontal": "p1s2-ap", "lateral": "p1s2-ll", "prior": "1.1"},
            "1.3": {"frontal": "p1s3-pa", "lateral": None, "prior": "1.2"},
            "2.1": {"frontal": "p2s1-code", "lateral": "p2s1-orient", "prior": None},
            "2.2": {"frontal": "p2s2-desc", "lateral": "p2s2-lat", "prior": "2.1"},
            "2.3": {"frontal": "p2s3-pa", "lateral": None, "prior": None},
            "4.1": {"frontal": "p4s1-pa", "lateral": None, "prior": None},
        },
        "unusable": {
            "ct-slice": "Modality 'CT' is not a radiograph",
            "notes.txt": "not a DICOM file",
            "truncated-header": "unreadable DICOM header",
            "copy-of-p1s1-pa": "duplicate SOPInstanceUID",
            "study 3.1": "no frontal view",
        },
        "unassigned": ["p1s3-lao"],
        "files": files,
    }
