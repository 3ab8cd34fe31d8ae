"""DICOM archive → studies: group a folder tree of DICOM files by study, pick the views, attach each study's prior.

Only the headers are read (`pydicom.dcmread(..., stop_before_pixels=True, specific_tags=...)`), so grouping an
archive costs a small read per file; pixels are decoded later, by whoever embeds or trains on the studies.

Rules (each outcome is counted; what cannot be used is listed with its reason in `DicomArchive.unusable`):

**Files.** Every regular file under the root is a candidate, whatever its name (DICOM files often have no suffix);
symbolic links are not followed (listed). A file is unusable when it is not DICOM (no "DICM" magic and pydicom cannot
parse it), its header is unreadable, it has no `StudyInstanceUID`, it holds no image (no `Rows`/`Columns`: reports,
presentation states, DICOMDIR), its `Modality` is not a radiograph (`CR`, `DX`, `DR`, `RG`, `OT`, `SC` or absent
are accepted), it has several frames, or its `SOPInstanceUID` repeats one already seen (the first path in sorted
order is kept).

**Views.** From `ViewPosition` (stripped, upper-cased): `PA`/`AP` → frontal, `LATERAL`/`LL` → lateral (the rule of
`processing.studies`); another non-empty value (oblique, decubitus, `AP AXIAL`, ...) is a view ALTA does not use.
When `ViewPosition` is missing or empty, these fallbacks are tried in order, and the one used is counted in
`notes` (`view_from_<source>`):

1. `ViewCodeSequence[0].CodeMeaning`: "postero-anterior" → PA, "antero-posterior" → AP, "lateral" → lateral;
2. `PatientOrientation` (the directions of the image's rows and columns): a row direction of L or R is a frontal
   projection (position unknown), A or P a lateral one;
3. `SeriesDescription`, then `ProtocolName`: the words PA, AP or FRONTAL → frontal, LAT, LATERAL or LL → lateral
   (words of both kinds: no decision).

An image whose view stays unknown is left out of the studies and listed in `unassigned`; it can still be embedded
as a single image.

**One image per slot.** Among a study's frontal candidates the choice is, in order: PA before AP before a frontal
of unknown position; a view read from `ViewPosition` before one from a fallback; the larger `Rows * Columns`; the
lower `SOPInstanceUID`. Likewise for laterals (LATERAL before LL). The others are counted as `extra_frontal` /
`extra_lateral`. A study without a frontal cannot be a current study (the frontal is the model's required slot):
it is listed as unusable.

**Priors.** The prior of a study is the same `PatientID`'s latest study strictly earlier by (`StudyDate`,
`StudyTime`) that has a frontal; its frontal and lateral fill the `prior_*` slots. A missing `StudyTime` counts as
00:00:00; a study without a valid `StudyDate` or `PatientID` is neither given a prior nor used as one. A study whose
images disagree on `PatientID` is unusable (a sign of mixed-up files).
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modeling_alta.configuration_alta import STUDY_SLOTS

from .studies import FRONTAL_VIEW_POSITIONS, LATERAL_VIEW_POSITIONS


logger = logging.getLogger(__name__)

#: The header fields the grouping reads (`specific_tags`): nothing else of a file is parsed.
HEADER_TAGS: tuple[str, ...] = (
    "SOPInstanceUID",
    "SOPClassUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "Modality",
    "ViewPosition",
    "ViewCodeSequence",
    "PatientOrientation",
    "SeriesDescription",
    "ProtocolName",
    "Rows",
    "Columns",
    "NumberOfFrames",
)
RADIOGRAPH_MODALITIES: tuple[str, ...] = ("CR", "DX", "DR", "RG", "OT", "SC")
VIEW_SOURCES: tuple[str, ...] = ("ViewPosition", "ViewCodeSequence", "PatientOrientation", "description")
_FRONTAL_WORDS = {"PA", "AP", "FRONTAL"}
_LATERAL_WORDS = {"LAT", "LATERAL", "LL"}
_WORD = re.compile(r"[A-Z]+")


@dataclass(frozen=True)
class DicomImageHeader:
    """What the grouping needs from one file's header.

    Attributes:
        path: absolute path of the file.
        view: `"frontal"`, `"lateral"` or `None` (unknown, or a view ALTA does not use).
        position: the projection when known (`"PA"`, `"AP"`, `"LATERAL"`, `"LL"`), else `None`.
        view_source: where the view came from (one of `VIEW_SOURCES`), `None` when unknown.
        pixels: `Rows * Columns`.
    """

    path: str
    sop_instance_uid: str
    study_instance_uid: str
    patient_id: str | None
    study_date: str | None
    study_time: str | None
    view: str | None
    position: str | None
    view_source: str | None
    view_position: str | None
    pixels: int

    def choice_key(self) -> tuple:
        """Sort key among candidates of one view kind: preferred position, direct tag, larger image, lower UID."""
        order = (*FRONTAL_VIEW_POSITIONS, *LATERAL_VIEW_POSITIONS)
        position_rank = order.index(self.position) % 2 if self.position in order else 2
        return (
            position_rank,
            VIEW_SOURCES.index(self.view_source or "description"),
            -self.pixels,
            self.sop_instance_uid,
        )


@dataclass
class ArchiveStudy:
    """One study of the archive: its chosen views, all its images, and its prior study (if any)."""

    study_instance_uid: str
    patient_id: str | None
    study_date: str | None
    when: tuple[int, float] | None
    images: list[DicomImageHeader]
    frontal: DicomImageHeader | None = None
    lateral: DicomImageHeader | None = None
    prior: ArchiveStudy | None = None

    def as_study(self) -> dict[str, str | None]:
        """The four slots (`STUDY_SLOTS`) as file paths, `None` for an absent view: what the image processor and
        the pipelines take as a study."""
        views = {
            "frontal": self.frontal,
            "lateral": self.lateral,
            "prior_frontal": self.prior.frontal if self.prior else None,
            "prior_lateral": self.prior.lateral if self.prior else None,
        }
        return {slot: (views[slot].path if views[slot] is not None else None) for slot in STUDY_SLOTS}

    def row(self) -> dict[str, Any]:
        """A study row in the layout of `processing.studies` (no report), with the prior's study UID."""
        return {
            "study_id": self.study_instance_uid,
            "subject_id": self.patient_id,
            **self.as_study(),
            "prior_study_id": self.prior.study_instance_uid if self.prior else None,
            "study_date": self.study_date,
        }


@dataclass(frozen=True)
class UnusableInput:
    """A file or a study left out, and why (the message names the tag and its value)."""

    what: str
    reason: str


@dataclass
class DicomArchive:
    """The result of grouping a folder tree.

    Attributes:
        root: the folder that was scanned.
        studies: the usable studies (each has a frontal), ordered by patient, date and study UID.
        images: every usable image (radiograph with a study UID), views known or not, ordered by path.
        unusable: files and studies left out, with reasons.
        unassigned: usable images whose view is unknown (left out of the studies; they can be embedded alone).
        notes: counts of how views were found and of degraded studies (`no_lateral`, `no_prior`, ...).
    """

    root: Path
    studies: list[ArchiveStudy] = field(default_factory=list)
    images: list[DicomImageHeader] = field(default_factory=list)
    unusable: list[UnusableInput] = field(default_factory=list)
    unassigned: list[UnusableInput] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)

    def study_rows(self) -> list[dict[str, Any]]:
        return [study.row() for study in self.studies]

    def summary(self) -> str:
        """One line for logs: studies, images, unusable and unassigned counts, then the notes."""
        notes = ", ".join(f"{k}={v}" for k, v in sorted(self.notes.items())) or "none"
        return (
            f"{self.root}: {len(self.studies)} studies from {len(self.images)} images; {len(self.unusable)} unusable "
            f"files or studies, {len(self.unassigned)} images of unknown view; notes: {notes}"
        )


# ---------------------------------------------------------------------------------------------------------------
# One header
# ---------------------------------------------------------------------------------------------------------------


def _text(dataset: Any, keyword: str) -> str | None:
    value = dataset.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _view_from_position(value: str) -> tuple[str | None, str | None]:
    if value in FRONTAL_VIEW_POSITIONS:
        return "frontal", value
    if value in LATERAL_VIEW_POSITIONS:
        return "lateral", value
    return None, None


def _view_from_code(dataset: Any) -> tuple[str | None, str | None]:
    sequence = dataset.get("ViewCodeSequence")
    if not sequence:
        return None, None
    meaning = str(sequence[0].get("CodeMeaning", "")).lower().replace(" ", "")
    if "postero-anterior" in meaning or "posteroanterior" in meaning:
        return "frontal", "PA"
    if "antero-posterior" in meaning or "anteroposterior" in meaning:
        return "frontal", "AP"
    if "lateral" in meaning:
        return "lateral", None
    return None, None


def _view_from_orientation(dataset: Any) -> tuple[str | None, str | None]:
    value = dataset.get("PatientOrientation")
    if not value or isinstance(value, str) or len(value) != 2:
        return None, None
    row_direction = str(value[0]).strip().upper()[:1]
    if row_direction in ("L", "R"):
        return "frontal", None
    if row_direction in ("A", "P"):
        return "lateral", None
    return None, None


def _view_from_description(dataset: Any) -> tuple[str | None, str | None]:
    for keyword in ("SeriesDescription", "ProtocolName"):
        words = set(_WORD.findall((_text(dataset, keyword) or "").upper()))
        frontal, lateral = words & _FRONTAL_WORDS, words & _LATERAL_WORDS
        if frontal and not lateral:
            position = next((p for p in FRONTAL_VIEW_POSITIONS if p in frontal), None)
            return "frontal", position
        if lateral and not frontal:
            return "lateral", None
    return None, None


def assign_view(dataset: Any) -> tuple[str | None, str | None, str | None]:
    """`(view, position, source)` of one header by the rules in the module docstring; `(None, None, None)` when
    unknown, or when `ViewPosition` names a view ALTA does not use."""
    position = (_text(dataset, "ViewPosition") or "").upper()
    if position:
        view, known = _view_from_position(position)
        return (view, known, "ViewPosition") if view else (None, None, None)
    for source, rule in zip(VIEW_SOURCES[1:], (_view_from_code, _view_from_orientation, _view_from_description)):
        view, known = rule(dataset)
        if view:
            return view, known, source
    return None, None, None


def _is_dicom_file(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(132)
    return len(head) >= 132 and head[128:132] == b"DICM"


def read_header(path: str | os.PathLike) -> DicomImageHeader | UnusableInput:
    """Read one file's header (no pixel data) into a `DicomImageHeader`, or say why the file is unusable."""
    import pydicom

    path = Path(path)
    name = str(path)
    try:
        magic = _is_dicom_file(path)
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS), force=not magic)
    except OSError as err:
        return UnusableInput(name, f"unreadable file: {err}")
    except Exception as err:  # pydicom raises several types for a damaged or foreign file
        kind = "unreadable DICOM header" if _safe_magic(path) else "not a DICOM file"
        return UnusableInput(name, f"{kind}: {type(err).__name__}: {err}")
    study_uid = _text(dataset, "StudyInstanceUID")
    if study_uid is None:
        what = "unreadable DICOM header" if magic else "not a DICOM file"
        return UnusableInput(name, f"{what}: no StudyInstanceUID")
    rows, columns = dataset.get("Rows"), dataset.get("Columns")
    if not rows or not columns:
        return UnusableInput(name, f"not an image: no Rows/Columns (SOPClassUID {_text(dataset, 'SOPClassUID')})")
    modality = (_text(dataset, "Modality") or "").upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        return UnusableInput(name, f"Modality {modality!r} is not a radiograph ({', '.join(RADIOGRAPH_MODALITIES)})")
    frames = dataset.get("NumberOfFrames")
    try:
        frames = int(frames) if frames not in (None, "") else 1
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        return UnusableInput(name, f"multi-frame image (NumberOfFrames {frames}), not a single radiograph")
    view, position, source = assign_view(dataset)
    return DicomImageHeader(
        path=str(path.resolve()),
        sop_instance_uid=_text(dataset, "SOPInstanceUID") or str(path.resolve()),
        study_instance_uid=study_uid,
        patient_id=_text(dataset, "PatientID"),
        study_date=_text(dataset, "StudyDate"),
        study_time=_text(dataset, "StudyTime"),
        view=view,
        position=position,
        view_source=source,
        view_position=_text(dataset, "ViewPosition"),
        pixels=int(rows) * int(columns),
    )


def _safe_magic(path: Path) -> bool:
    try:
        return _is_dicom_file(path)
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------------------
# The archive
# ---------------------------------------------------------------------------------------------------------------


def list_archive_files(root: str | os.PathLike) -> tuple[list[Path], list[UnusableInput]]:
    """Every regular file under `root`, sorted; symbolic links (files or folders) are listed as unusable, not
    followed, so nothing outside the root is read."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"DICOM archive folder not found: {str(root)!r}")
    files: list[Path] = []
    skipped: list[UnusableInput] = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        base = Path(folder)
        for name in sorted(dirs):
            if (base / name).is_symlink():
                skipped.append(UnusableInput(str(base / name), "symbolic link to a folder (not followed)"))
        for name in names:
            path = base / name
            if path.is_symlink():
                skipped.append(UnusableInput(str(path), "symbolic link (not followed)"))
            elif path.is_file():
                files.append(path)
    return sorted(files), sorted(skipped, key=lambda u: u.what)


def _when(date: str | None, time: str | None) -> tuple[int, float] | None:
    """(YYYYMMDD, seconds since midnight) or None when the date is missing or not a valid DA value."""
    if date is None or not re.fullmatch(r"\d{8}", date):
        return None
    seconds = 0.0
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d+)?", (time or "").replace(":", ""))
    if match:
        hours, minutes, secs, fraction = match.groups()
        seconds = int(hours) * 3600 + int(minutes or 0) * 60 + int(secs or 0) + float(fraction or 0.0)
    return int(date), seconds


def _read_headers(paths: Sequence[Path], workers: int) -> list[DicomImageHeader | UnusableInput]:
    if workers <= 1 or len(paths) < 2 * workers:
        return [read_header(p) for p in paths]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(read_header, paths, chunksize=max(1, len(paths) // (workers * 8))))


def group_studies(headers: Iterable[DicomImageHeader], archive: DicomArchive) -> None:
    """Group usable image headers into `archive.studies` with views and priors (rules in the module docstring)."""
    by_study: dict[str, list[DicomImageHeader]] = {}
    for header in headers:
        by_study.setdefault(header.study_instance_uid, []).append(header)
    studies: list[ArchiveStudy] = []
    for uid in sorted(by_study):
        images = sorted(by_study[uid], key=lambda h: h.path)
        patients = sorted({h.patient_id or "" for h in images})
        if len(patients) > 1:
            archive.unusable.append(UnusableInput(f"study {uid}", f"its images disagree on PatientID: {patients}"))
            continue
        first = images[0]
        study = ArchiveStudy(
            uid, first.patient_id, first.study_date, _when(first.study_date, first.study_time), images
        )
        for kind in ("frontal", "lateral"):
            candidates = sorted((h for h in images if h.view == kind), key=DicomImageHeader.choice_key)
            if candidates:
                setattr(study, kind, candidates[0])
            if len(candidates) > 1:
                archive.notes[f"extra_{kind}"] += len(candidates) - 1
        for header in images:
            if header.view is None:
                reason = (
                    f"ViewPosition {header.view_position!r} is not a frontal or lateral view"
                    if header.view_position
                    else "no ViewPosition and no fallback (ViewCodeSequence, PatientOrientation, SeriesDescription, "
                    "ProtocolName) gave the view"
                )
                archive.unassigned.append(UnusableInput(header.path, reason))
        if study.frontal is None:
            archive.unusable.append(
                UnusableInput(
                    f"study {uid}", f"no frontal view among its {len(images)} image(s); the frontal is required"
                )
            )
            continue
        studies.append(study)
    _attach_priors(studies, archive)
    studies.sort(key=lambda s: (s.patient_id or "", s.when or (0, 0.0), s.study_instance_uid))
    archive.studies = studies
    for study in studies:
        if study.lateral is None:
            archive.notes["no_lateral"] += 1
        if study.prior is None:
            archive.notes["no_prior"] += 1


def _attach_priors(studies: list[ArchiveStudy], archive: DicomArchive) -> None:
    histories: dict[str, list[ArchiveStudy]] = {}
    for study in studies:
        if study.when is None:
            archive.notes["no_study_date"] += 1
        elif study.patient_id is None:
            archive.notes["no_patient_id"] += 1
        else:
            histories.setdefault(study.patient_id, []).append(study)
    for history in histories.values():
        history.sort(key=lambda s: (s.when, s.study_instance_uid))
        for study in history:
            earlier = [s for s in history if s.when < study.when]
            study.prior = earlier[-1] if earlier else None


def scan_dicom_archive(root: str | os.PathLike, workers: int = 1) -> DicomArchive:
    """Group a folder tree of DICOM files into studies (headers only; rules in the module docstring).

    Args:
        root: the archive folder; every regular file below it is considered.
        workers: processes that read headers in parallel (1: in this process).

    Returns:
        A `DicomArchive` with the studies (views chosen, priors attached), every usable image, and the unusable
        files and studies with their reasons.
    """
    archive = DicomArchive(root=Path(root))
    paths, skipped = list_archive_files(root)
    archive.unusable.extend(skipped)
    seen: dict[str, str] = {}
    usable: list[DicomImageHeader] = []
    for result in _read_headers(paths, workers):
        if isinstance(result, UnusableInput):
            archive.unusable.append(result)
        elif result.sop_instance_uid in seen:
            archive.unusable.append(
                UnusableInput(
                    result.path,
                    f"duplicate SOPInstanceUID {result.sop_instance_uid} of {seen[result.sop_instance_uid]}",
                )
            )
        else:
            seen[result.sop_instance_uid] = result.path
            usable.append(result)
            archive.notes[f"view_from_{result.view_source or 'nowhere'}"] += 1
    archive.images = usable
    group_studies(usable, archive)
    logger.info("%s", archive.summary())
    return archive


__all__ = [
    "HEADER_TAGS",
    "RADIOGRAPH_MODALITIES",
    "VIEW_SOURCES",
    "ArchiveStudy",
    "DicomArchive",
    "DicomImageHeader",
    "UnusableInput",
    "assign_view",
    "group_studies",
    "list_archive_files",
    "read_header",
    "scan_dicom_archive",
]
