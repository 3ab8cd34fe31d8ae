"""Built-in demo data: synthetic radiograph-like studies with paired reports, deterministic by seed.

Nothing here is a real radiograph. The studies are drawn to be learnable by a tiny model within minutes on a CPU,
so every finding has a strong, consistent visual signature:

| label            | frontal view                                   | lateral view                                  |
|------------------|------------------------------------------------|-----------------------------------------------|
| No Finding       | normal silhouette                              | normal silhouette                             |
| Cardiomegaly     | heart wider (cardiothoracic ratio > 1/2)       | heart larger, reaching back towards the spine |
| Pleural Effusion | basal white-out with a meniscus, on its side(s)| posterior costophrenic angle filled           |
|   (posterior)    | **nothing**: small posterior effusions         | posterior costophrenic angle filled           |
| Consolidation    | patchy blob cluster in one lobe                | patchy blobs in the upper or lower zone        |
| Edema            | bilateral perihilar haze + Kerley lines        | central haze                                  |
| Atelectasis      | thin bright oblique band(s) at the base(s)     | thin oblique band in the lower zone           |

A share of the effusions (`posterior_effusion_rate`) are small posterior effusions that show **only on the lateral
view**, the way they do in practice; those studies always have a lateral image, and their reports say so. Studies
with a prior carry a change (`new`, `worse`, `better`, `unchanged`) that sets the prior's severity (no finding,
milder, more severe, equal) and is worded in the report. Some studies lack the lateral view and/or the prior.

The result is a `datasets.DatasetDict` with `train`, `validation` and `test` splits (disjoint patients, classes
balanced within each split) and columns `study_id`, `patient_id`, `frontal`, `lateral`, `prior_frontal`,
`prior_lateral` (`datasets.Image()`, `None` when missing), `report`, `label`, `change` (`None` without a prior),
`severity`, `location`, `lateral_only`. `write_demo_folder` also writes PNGs and the reference CSV layouts.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from modeling_alta.configuration_alta import STUDY_SLOTS


DEMO_CLASSES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
    "No Finding",
)
CHANGES: tuple[str, ...] = ("new", "worse", "better", "unchanged")
IMAGE_COLUMNS: tuple[str, ...] = STUDY_SLOTS
SPLITS: tuple[str, ...] = ("train", "validation", "test")

# Wording of the change against the prior; every report of a study with a prior uses one of these phrases.
CHANGE_PHRASES: dict[str, tuple[str, ...]] = {
    "new": (
        "new since the prior study",
        "newly seen compared with the prior exam",
        "not present on the prior radiograph",
    ),
    "worse": (
        "worse than on the prior study",
        "increased compared with the prior exam",
        "progressed since the prior radiograph",
    ),
    "better": (
        "improved compared with the prior study",
        "decreased since the prior exam",
        "less pronounced than on the prior radiograph",
    ),
    "unchanged": (
        "unchanged from the prior study",
        "stable compared with the prior exam",
        "without interval change since the prior radiograph",
    ),
}

# Severity levels: (adjective, adverb, effusion size word, numeric range of the rendered strength).
_SEVERITY = {
    "mild": ("mild", "mildly", "small", (0.5, 0.62)),
    "moderate": ("moderate", "moderately", "moderate", (0.7, 0.82)),
    "severe": ("severe", "markedly", "large", (0.9, 1.0)),
}
_LEVELS = ("mild", "moderate", "severe")


@dataclass
class _Anatomy:
    """Per-patient shape parameters (shared by the current and prior images)."""

    dx: float
    dy: float
    scale: float
    heart_w: float
    lung_w: float
    lung_h: float
    contrast: float
    rib_phase: float


@dataclass
class _FindingState:
    """What to draw: the finding, its strength in [0, 1] (0 = absent) and where."""

    label: str
    strength: float
    location: str
    lateral_only: bool
    seed: int  # fixes blob positions so the prior shows the same lesion, only at another strength


@dataclass
class DemoStudy:
    """One generated study before encoding (images as uint8 `[H, W]` arrays, `None` when missing)."""

    study_id: str
    patient_id: str
    frontal: np.ndarray
    lateral: np.ndarray | None
    prior_frontal: np.ndarray | None
    prior_lateral: np.ndarray | None
    report: str
    label: str
    change: str | None
    severity: str | None
    location: str | None
    lateral_only: bool


# ---------------------------------------------------------------------------------------------------------------
# drawing primitives (normalised coordinates: x, y in [-1, 1], x to the image right, y down)
# ---------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return np.meshgrid(c, c, indexing="xy")  # xx, yy


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """Soft inside-mask from a signed 'distance' (positive inside): smooth edges without a blur pass."""
    # The logistic function written with tanh, which cannot overflow (no clipping pass needed).
    return 0.5 + 0.5 * np.tanh(d * (0.5 / width))


def _ellipse(xx, yy, cx, cy, rx, ry, width=0.03) -> np.ndarray:
    r = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return _soft(1.0 - r, width)


def _gauss(xx, yy, cx, cy, sx, sy) -> np.ndarray:
    return np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))


def _band(xx, yy, x0, y0, x1, y1, half_width) -> np.ndarray:
    """A soft line segment from (x0, y0) to (x1, y1)."""
    vx, vy = x1 - x0, y1 - y0
    length2 = vx * vx + vy * vy
    t = np.clip(((xx - x0) * vx + (yy - y0) * vy) / length2, 0, 1)
    d = np.sqrt((xx - x0 - t * vx) ** 2 + (yy - y0 - t * vy) ** 2)
    return _soft(half_width - d, half_width * 0.35)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


# Side names follow the patient: the patient's right lung is on the image left of a frontal view.
_SIDE_X = {"right": -1.0, "left": 1.0}


def _sides(location: str) -> list[str]:
    if "bilateral" in location or "bibasilar" in location:
        return ["right", "left"]
    return ["left"] if "left" in location else ["right"]


def _frontal(size: int, anat: _Anatomy, f: _FindingState, rng: np.random.Generator) -> np.ndarray:
    xx, yy = _grid(_render_size(size))
    xx = (xx - anat.dx) / anat.scale
    yy = (yy - anat.dy) / anat.scale
    img = np.full(xx.shape, 0.06, dtype=np.float32)
    img += 0.40 * _ellipse(xx, yy, 0.0, 0.12, 0.86, 1.02, 0.04)  # soft tissue of the trunk
    img += 0.10 * _band(xx, yy, 0.0, -1.0, 0.0, 1.0, 0.07)  # spine behind the mediastinum
    lungs = np.zeros_like(img)
    for sign in (-1.0, 1.0):
        lung = _ellipse(xx, yy, sign * 0.40, -0.02, anat.lung_w, anat.lung_h, 0.04)
        lung *= _soft(np.abs(xx) - 0.11, 0.02)  # medial border at the mediastinum
        lungs = np.maximum(lungs, lung)
    img -= 0.30 * lungs
    # Ribs: arcs across each lung, visible only over lung (posterior ribs).
    ribs = np.zeros_like(img)
    for i in range(7):
        y0 = -0.55 + i * 0.15 + anat.rib_phase
        ribs = np.maximum(ribs, _soft(0.022 - np.abs(yy - (y0 + 0.45 * (np.abs(xx) - 0.15) ** 2)), 0.008))
    img += 0.10 * ribs * lungs
    for sign in (-1.0, 1.0):  # clavicles
        img += 0.12 * _band(xx, yy, sign * 0.12, -0.62, sign * 0.62, -0.72, 0.03)

    # Heart: a bright oval left of midline; cardiomegaly widens it.
    heart_w = anat.heart_w * (1.0 + (0.75 * f.strength if f.label == "Cardiomegaly" else 0.0))
    heart = _ellipse(xx, yy, 0.07 + 0.25 * (heart_w - anat.heart_w), 0.30, heart_w, 0.24, 0.03)
    img = img * (1 - heart) + (0.50 + 0.02 * rng.standard_normal()) * heart
    img += 0.22 * _band(xx, yy, 0.0, -0.75, 0.0, 0.1, 0.09) * (1 - heart)  # mediastinum

    s = f.strength
    if s > 0 and f.label == "Pleural Effusion" and not f.lateral_only:
        for side in _sides(f.location):
            cx = _SIDE_X[side] * 0.40
            # Fluid fills the base up to a level that rises laterally (the meniscus).
            level = 0.48 - 0.45 * s - 0.35 * np.clip(np.abs(xx - cx * 0.5) - 0.1, 0, None) * s
            fluid = _soft(yy - level, 0.03) * _soft(0.8 - np.abs(xx - cx), 0.03) * (np.sign(xx) == np.sign(cx))
            img += 0.42 * fluid * lungs
    elif s > 0 and f.label == "Consolidation":
        fr = np.random.default_rng(f.seed)
        side = "left" if "left" in f.location else "right"
        cx, cy = _SIDE_X[side] * 0.40, (-0.30 if "upper" in f.location else 0.22)
        patch = np.zeros_like(img)
        for _ in range(7):
            bx, by = cx + fr.normal(0, 0.09), cy + fr.normal(0, 0.09)
            patch = np.maximum(patch, _gauss(xx, yy, bx, by, fr.uniform(0.05, 0.09), fr.uniform(0.05, 0.09)))
        img += (0.2 + 0.3 * s) * patch * lungs
    elif s > 0 and f.label == "Edema":
        haze = sum(_gauss(xx, yy, sg * 0.22, 0.02, 0.20, 0.30) for sg in (-1.0, 1.0))
        img += 0.45 * s * haze * lungs
        for sg in (-1.0, 1.0):  # Kerley B lines: short horizontal lines at the lateral bases
            for k in range(4):
                yk = 0.12 + 0.07 * k
                img += 0.22 * s * _band(xx, yy, sg * 0.70, yk, sg * 0.58, yk, 0.014) * lungs
    elif s > 0 and f.label == "Atelectasis":
        for side in _sides(f.location):
            sx = _SIDE_X[side]
            y0 = 0.22 + 0.04 * np.random.default_rng(f.seed).standard_normal()
            img += (0.30 + 0.25 * s) * _band(xx, yy, sx * 0.18, y0 - 0.06, sx * 0.62, y0 + 0.04, 0.028) * lungs
    return _finish(img, anat, rng, size)


def _lateral(size: int, anat: _Anatomy, f: _FindingState, rng: np.random.Generator) -> np.ndarray:
    # Patient faces the image left: anterior = left, posterior (spine) = right.
    xx, yy = _grid(_render_size(size))
    xx = (xx - anat.dx) / anat.scale
    yy = (yy - anat.dy) / anat.scale
    img = np.full(xx.shape, 0.06, dtype=np.float32)
    img += 0.42 * _ellipse(xx, yy, 0.02, 0.12, 0.74, 1.02, 0.04)
    lung = _ellipse(xx, yy, 0.04, -0.04, 0.52, anat.lung_h + 0.04, 0.04)
    # The diaphragm slopes down posteriorly, leaving the deep posterior costophrenic angle at the lower right.
    lung *= _soft(0.50 + 0.12 * xx - yy, 0.03)
    img -= 0.30 * lung
    vertebrae = _soft(0.09 - np.abs(xx - 0.60), 0.01) * (0.6 + 0.4 * (np.cos(yy * 22.0) > -0.3))
    img += 0.22 * vertebrae
    img += 0.14 * _band(xx, yy, -0.58, -0.65, -0.52, 0.25, 0.025)  # sternum
    heart_w = 0.26 * (1.0 + (0.75 * f.strength if f.label == "Cardiomegaly" else 0.0))
    heart = _ellipse(xx, yy, -0.22 + 0.3 * (heart_w - 0.26), 0.24, heart_w, 0.24, 0.03)
    img = img * (1 - heart) + 0.50 * heart

    s = f.strength
    if s > 0 and f.label == "Pleural Effusion":
        # Posterior costophrenic angle filled, the fluid rising towards the back (both effusion kinds show here).
        level = 0.52 - (0.25 + 0.25 * s) * _soft(xx - 0.05, 0.08)
        fluid = _soft(yy - level, 0.03) * _soft(xx - 0.02, 0.05)
        img += 0.45 * fluid * lung
    elif s > 0 and f.label == "Consolidation":
        fr = np.random.default_rng(f.seed + 1)
        cy = -0.28 if "upper" in f.location else 0.22
        patch = np.zeros_like(img)
        for _ in range(6):
            bx, by = 0.15 + fr.normal(0, 0.1), cy + fr.normal(0, 0.08)
            patch = np.maximum(patch, _gauss(xx, yy, bx, by, fr.uniform(0.05, 0.09), fr.uniform(0.05, 0.09)))
        img += (0.2 + 0.3 * s) * patch * lung
    elif s > 0 and f.label == "Edema":
        img += 0.42 * s * _gauss(xx, yy, 0.05, 0.0, 0.26, 0.30) * lung
    elif s > 0 and f.label == "Atelectasis":
        img += (0.30 + 0.25 * s) * _band(xx, yy, -0.25, 0.12, 0.40, 0.32, 0.026) * lung
    return _finish(img, anat, rng, size)


def _render_size(size: int) -> int:
    # Shapes are drawn at half resolution and upsampled: every cue is large and smooth, and it is 4x fewer pixels.
    return max(size // 2, 32)


def _finish(img: np.ndarray, anat: _Anatomy, rng: np.random.Generator, size: int) -> np.ndarray:
    if img.shape[0] != size:
        img = np.asarray(Image.fromarray(img.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))
    img = img * anat.contrast + 0.025 * _smooth_noise(rng, size, 12) + 0.015 * rng.standard_normal(img.shape)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------------------------

_TECHNIQUE_TWO_VIEWS = (
    "PA and lateral views of the chest.",
    "Frontal and lateral chest radiographs.",
    "Two views of the chest.",
)
_TECHNIQUE_ONE_VIEW = (
    "Single frontal view of the chest.",
    "Portable AP view of the chest.",
    "AP upright radiograph of the chest.",
)
_COMPARISON_PRIOR = ("Comparison is made with the prior radiograph.", "Compared with the previous study.")
_COMPARISON_NONE = ("No prior studies are available for comparison.", "No comparison study.")

# Normal statements, about structures no demo finding touches. A report that also stated the other organs' normals
# ("Heart size is normal.", "No pleural effusion.") would name its finding by leaving its own organ out: with the
# finding words masked, the rest of such a report still gave the label to a bag-of-words classifier at 0.97 (six
# classes), so the image-conditioned MLM could be solved from the text (benchmarks/demo_probes.py).
_NORMALS = {
    "pneumothorax": ("No pneumothorax.", "There is no pneumothorax."),
    "bones": ("The osseous structures are intact.", "No acute osseous abnormality."),
    "mediastinum": ("The mediastinal contours are unremarkable.", "The trachea is midline."),
}


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _finding_phrases(label: str, severity: str, location: str, lateral_only: bool, rng: np.random.Generator):
    """(finding sentence without a final period, short impression phrase)."""
    adj, adv, size_word, _ = _SEVERITY[severity]
    if label == "Atelectasis":
        where = {"left": "left lung base", "right": "right lung base", "bilateral": "bilateral lung bases"}[location]
        finding = _pick(
            rng,
            (
                f"{adj.capitalize()} linear atelectasis at the {where}",
                f"{adj.capitalize()} plate-like atelectasis in the {where}",
                f"Band-like opacity at the {where}, consistent with {adj} atelectasis",
            ),
        )
        return finding, f"{adj} {'bibasilar' if location == 'bilateral' else location + ' basilar'} atelectasis"
    if label == "Cardiomegaly":
        finding = _pick(
            rng,
            (
                f"The heart is {adv} enlarged",
                f"{adj.capitalize()} cardiomegaly",
                f"The cardiac silhouette is {adv} enlarged",
            ),
        )
        return finding, f"{adj} cardiomegaly"
    if label == "Consolidation":
        lobe = f"{location} lobe"
        finding = _pick(
            rng,
            (
                f"{adj.capitalize()} patchy consolidation in the {lobe}",
                f"Airspace consolidation in the {lobe}, {adj} in extent",
                f"Focal {adj} opacity in the {lobe} consistent with consolidation",
            ),
        )
        return finding, f"{lobe} consolidation, {adj}"
    if label == "Edema":
        finding = _pick(
            rng,
            (
                f"{adj.capitalize()} pulmonary edema with perihilar haziness",
                f"{adj.capitalize()} interstitial edema with Kerley B lines",
                f"Diffuse perihilar opacities consistent with {adj} pulmonary edema",
            ),
        )
        return finding, f"{adj} pulmonary edema"
    if label == "Pleural Effusion":
        if lateral_only:
            finding = _pick(
                rng,
                (
                    f"A small posterior {location} pleural effusion is seen only on the lateral view",
                    f"Blunting of the posterior costophrenic angle on the lateral view, consistent with a small "
                    f"{location} pleural effusion",
                ),
            )
            return finding, f"small posterior {location} pleural effusion"
        finding = _pick(
            rng,
            (
                f"{size_word.capitalize()} {location} pleural effusion",
                f"{size_word.capitalize()} {location} pleural effusion with blunting of the costophrenic angle",
                f"There is a {size_word} {location} pleural effusion",
            ),
        )
        return finding, f"{size_word} {location} pleural effusion"
    raise ValueError(f"no finding phrases for label {label!r}")


def _report(
    label: str,
    severity: str | None,
    location: str | None,
    change: str | None,
    has_lateral: bool,
    lateral_only: bool,
    rng: np.random.Generator,
) -> str:
    sentences = [_pick(rng, _TECHNIQUE_TWO_VIEWS if has_lateral else _TECHNIQUE_ONE_VIEW)]
    if change is not None or rng.random() < 0.6:
        sentences.append(_pick(rng, _COMPARISON_PRIOR if change is not None else _COMPARISON_NONE))
    body: list[str] = []
    change_phrase = _pick(rng, CHANGE_PHRASES[change]) if change is not None else None
    if label == "No Finding":
        impression = _pick(rng, ("No acute cardiopulmonary process.", "Normal chest radiograph."))
        if change_phrase is not None:
            body.append(f"Appearance {change_phrase}.")
            impression = impression[:-1] + f", {change_phrase}."
    else:
        finding, short = _finding_phrases(label, severity, location, lateral_only, rng)
        if change_phrase is None:
            body.append(f"{finding}.")
        elif rng.random() < 0.5:
            body.append(f"{finding}, {change_phrase}.")
        else:
            body.extend([f"{finding}.", f"This is {change_phrase}."])
        impression = f"{short[0].upper()}{short[1:]}" + (f", {change_phrase}." if change_phrase else ".")
    for k in rng.permutation(list(_NORMALS))[: int(rng.integers(1, 3))]:
        body.append(_pick(rng, _NORMALS[str(k)]))
    # The finding usually leads, but not always: report order varies in practice.
    if len(body) > 1 and rng.random() < 0.3:
        body = body[1:] + body[:1]
    return "FINDINGS: " + " ".join(sentences + body) + " IMPRESSION: " + impression


# ---------------------------------------------------------------------------------------------------------------
# studies
# ---------------------------------------------------------------------------------------------------------------

_LOCATIONS = {
    "Atelectasis": ("left", "right", "bilateral"),
    "Consolidation": ("right upper", "right lower", "left upper", "left lower"),
    "Pleural Effusion": ("left", "right", "bilateral"),
}


def _strength(level: str, rng: np.random.Generator) -> float:
    lo, hi = _SEVERITY[level][3]
    return float(rng.uniform(lo, hi))


def generate_study(
    label: str,
    rng: np.random.Generator,
    study_id: str = "study",
    patient_id: str = "patient",
    image_size: int = 256,
    prior_rate: float = 0.5,
    lateral_missing_rate: float = 0.25,
    posterior_effusion_rate: float = 0.4,
) -> DemoStudy:
    """Draw and render one study of the given label.

    Args:
        label: one of `DEMO_CLASSES`.
        rng: the study's random source (everything about the study comes from it).
        image_size: side of the square uint8 images.
        prior_rate: probability of a prior study (then a change is drawn uniformly from `CHANGES`, or
            `unchanged` for No Finding).
        lateral_missing_rate: probability that the current lateral is missing (never for posterior effusions, whose
            cue needs it); the prior lateral is missing when the current one is, or with the same probability.
        posterior_effusion_rate: share of Pleural Effusion studies that are small posterior effusions seen only on
            the lateral view.
    """
    if label not in DEMO_CLASSES:
        raise ValueError(f"`label` must be one of {DEMO_CLASSES}; got {label!r}")
    anat = _Anatomy(
        dx=float(rng.uniform(-0.04, 0.04)),
        dy=float(rng.uniform(-0.04, 0.04)),
        scale=float(rng.uniform(0.93, 1.04)),
        heart_w=float(rng.uniform(0.21, 0.25)),
        lung_w=float(rng.uniform(0.27, 0.30)),
        lung_h=float(rng.uniform(0.52, 0.58)),
        contrast=float(rng.uniform(0.9, 1.1)),
        rib_phase=float(rng.uniform(-0.04, 0.04)),
    )
    lateral_only = label == "Pleural Effusion" and rng.random() < posterior_effusion_rate
    location = _pick(rng, _LOCATIONS[label]) if label in _LOCATIONS else None
    if lateral_only:
        location = _pick(rng, ("left", "right"))
    has_prior = rng.random() < prior_rate
    change = None
    if has_prior:
        change = "unchanged" if label == "No Finding" else _pick(rng, CHANGES)

    severity: str | None = None
    strength = prior_strength = 0.0
    if label != "No Finding":
        if lateral_only:
            level = "mild"
        elif change == "better":
            level = _pick(rng, ("mild", "moderate"))
        elif change == "worse":
            level = _pick(rng, ("moderate", "severe"))
        else:
            level = _pick(rng, _LEVELS)
        severity = level
        strength = _strength(level, rng)
        if change == "unchanged":
            prior_strength = strength
        elif change == "worse":
            prior_strength = _strength(_LEVELS[_LEVELS.index(level) - 1], rng) * 0.8
        elif change == "better":
            prior_strength = _strength(_LEVELS[_LEVELS.index(level) + 1], rng)
    finding_seed = int(rng.integers(2**31))
    current = _FindingState(label, strength, location or "", lateral_only, finding_seed)
    prior = _FindingState(label, prior_strength, location or "", lateral_only, finding_seed)

    has_lateral = lateral_only or rng.random() >= lateral_missing_rate
    has_prior_lateral = has_prior and has_lateral and rng.random() >= lateral_missing_rate

    frontal = _frontal(image_size, anat, current, rng)
    lateral = _lateral(image_size, anat, current, rng) if has_lateral else None
    prior_frontal = prior_lateral = None
    if has_prior:
        # Same patient, slightly different positioning.
        moved = _Anatomy(
            **{
                **anat.__dict__,
                "dx": anat.dx + float(rng.uniform(-0.02, 0.02)),
                "dy": anat.dy + float(rng.uniform(-0.02, 0.02)),
            }
        )
        prior_frontal = _frontal(image_size, moved, prior, rng)
        prior_lateral = _lateral(image_size, moved, prior, rng) if has_prior_lateral else None
    report = _report(label, severity, location, change, has_lateral, lateral_only, rng)
    return DemoStudy(
        study_id=study_id,
        patient_id=patient_id,
        frontal=frontal,
        lateral=lateral,
        prior_frontal=prior_frontal,
        prior_lateral=prior_lateral,
        report=report,
        label=label,
        change=change,
        severity=severity,
        location=location,
        lateral_only=lateral_only,
    )


def _png(array: np.ndarray | None) -> dict[str, bytes | None] | None:
    if array is None:
        return None
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG", compress_level=1)  # speed over size
    return {"bytes": buffer.getvalue(), "path": None}


def _split_sizes(num_studies: int, fractions: Sequence[float]) -> list[int]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"`split_fractions` must be three non-negative numbers summing to 1; got {tuple(fractions)}")
    sizes = [int(round(num_studies * f)) for f in fractions[1:]]
    return [num_studies - sum(sizes), *sizes]


def demo_features():
    """The `datasets.Features` of the demo splits."""
    import datasets

    features = {"study_id": datasets.Value("string"), "patient_id": datasets.Value("string")}
    features.update({c: datasets.Image() for c in IMAGE_COLUMNS})
    features.update(
        {
            "report": datasets.Value("string"),
            "label": datasets.Value("string"),
            "change": datasets.Value("string"),
            "severity": datasets.Value("string"),
            "location": datasets.Value("string"),
            "lateral_only": datasets.Value("bool"),
        }
    )
    return datasets.Features(features)


def generate_demo_dataset(
    num_studies: int = 1200,
    seed: int = 0,
    image_size: int = 256,
    split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
    classes: Sequence[str] = DEMO_CLASSES,
    prior_rate: float = 0.5,
    lateral_missing_rate: float = 0.25,
    posterior_effusion_rate: float = 0.4,
):
    """Generate the demo studies as a `datasets.DatasetDict` with `train`, `validation` and `test` splits.

    Deterministic: study `i` is drawn from `np.random.default_rng([seed, i])` and its label from a seeded balanced
    assignment, so the same arguments give the same bytes. Each split holds every class equally often (up to one
    study) in shuffled order; every study is its own patient, so splits never share patients.

    Args:
        num_studies: studies over all splits.
        seed: the seed.
        image_size: side of the square grayscale PNGs.
        split_fractions: shares of train, validation and test.
        classes: the labels to draw (a subset of `DEMO_CLASSES`).
        prior_rate, lateral_missing_rate, posterior_effusion_rate: see `generate_study`.

    Returns:
        `DatasetDict` with the columns listed in the module docstring.
    """
    import datasets

    unknown = [c for c in classes if c not in DEMO_CLASSES]
    if unknown or not classes:
        raise ValueError(f"`classes` must be a non-empty subset of {DEMO_CLASSES}; got {list(classes)}")
    if num_studies < 1:
        raise ValueError(f"`num_studies` must be positive; got {num_studies}")
    sizes = _split_sizes(num_studies, split_fractions)
    assign = np.random.default_rng([seed, 2**31 - 1])  # label order only; studies have their own streams
    features = demo_features()
    splits = {}
    index = 0
    for split, size in zip(SPLITS, sizes):
        labels = [classes[i % len(classes)] for i in range(size)]
        labels = [labels[i] for i in assign.permutation(size)]
        rows: dict[str, list] = {name: [] for name in features}
        for label in labels:
            study = generate_study(
                label,
                np.random.default_rng([seed, index]),
                study_id=f"demo-{seed}-{index:06d}",
                patient_id=f"patient-{seed}-{index:06d}",
                image_size=image_size,
                prior_rate=prior_rate,
                lateral_missing_rate=lateral_missing_rate,
                posterior_effusion_rate=posterior_effusion_rate,
            )
            index += 1
            for name in features:
                value = getattr(study, name)
                rows[name].append(_png(value) if name in IMAGE_COLUMNS else value)
        splits[split] = datasets.Dataset.from_dict(rows, features=features, split=datasets.NamedSplit(split))
    return datasets.DatasetDict(splits)


# Technique and comparison boilerplate ("PA and lateral views of the chest.", "No comparison study.") says which
# views a study has; a small model aligned for a few hundred steps matches reports to studies by that alone (the
# study embedding encodes the missing-view pattern) and never learns the findings. Measured on this demo: zero-shot
# accuracy stayed at chance with them, see the note on the issue. Finding and change sentences are kept.
BOILERPLATE = re.compile(
    r"(?:^|(?<=\s))(?:PA and lateral views of the chest|Frontal and lateral chest radiographs|Two views of the chest|"
    r"Portable AP view of the chest|AP upright radiograph of the chest|Single frontal view of the chest|"
    r"Compared with the previous study|Comparison is made with the prior radiograph|No comparison study|"
    r"No prior studies are available for comparison)\.\s*"
)


# Every word of the finding and impression sentences ("Mild linear atelectasis at the left lung base.", "No acute
# cardiopulmonary process."), punctuation and the function words these sentences use included; the normal statements
# and change phrases are what is left of a report. The demo's masked report modeling masks these words in every
# report (`align.py --mlm_always_mask_words`): with them visible, or any of them, a bag of words of the rest of a
# report names the label at 0.96-1.00 (six classes) and the MLM needs no image; with all of them masked, 0.22
# (chance 0.17; the rest is "a change phrase means a finding"). See benchmarks/demo_probes.py.
FINDING_WORDS: tuple[str, ...] = (
    ",", "-", ".", "a", "acute", "airspace", "angle", "appearance", "at", "atelectasis", "b", "band", "base",
    "bases", "basilar", "bibasilar", "bilateral", "blunting", "cardiac", "cardiomegaly", "cardiopulmonary", "chest",
    "consistent", "consolidation", "costophrenic", "diffuse", "edema", "effusion", "enlarged", "extent", "focal",
    "haziness", "heart", "in", "interstitial", "is", "kerley", "large", "lateral", "left", "like", "linear",
    "lines", "lobe", "lower", "lung", "markedly", "mild", "mildly", "moderate", "moderately", "no", "normal", "of",
    "on", "only", "opacities", "opacity", "patchy", "perihilar", "plate", "pleural", "posterior", "process",
    "pulmonary", "radiograph", "right", "seen", "severe", "silhouette", "small", "the", "there", "this", "upper",
    "view", "with",
)  # fmt: skip


def strip_boilerplate(report: str) -> str:
    """The report without its technique and comparison sentences (see `BOILERPLATE`)."""
    return re.sub(r"\s+", " ", BOILERPLATE.sub("", report)).strip()


def demo_class_prompts() -> dict[str, list[str]]:
    """A prompt ensemble for the demo classes, in the demo reports' vocabulary (class -> prompts)."""
    return {
        "Atelectasis": ["linear atelectasis at the lung base", "plate-like atelectasis", "bibasilar atelectasis"],
        "Cardiomegaly": ["cardiomegaly", "the heart is enlarged", "the cardiac silhouette is enlarged"],
        "Consolidation": [
            "patchy consolidation",
            "airspace consolidation in the lobe",
            "focal opacity consistent with consolidation",
        ],
        "Edema": [
            "pulmonary edema",
            "interstitial edema with kerley b lines",
            "perihilar opacities consistent with edema",
        ],
        "Pleural Effusion": [
            "pleural effusion",
            "pleural effusion with blunting of the costophrenic angle",
            "posterior pleural effusion seen on the lateral view",
        ],
        "No Finding": ["no acute cardiopulmonary process", "normal chest radiograph", "the lungs are clear"],
    }


# ---------------------------------------------------------------------------------------------------------------
# folder export in the reference layouts
# ---------------------------------------------------------------------------------------------------------------

# CheXpert label columns in the order of the CheXpert csv files (the 5x200 csv and ConVIRT's 8x200 use it).
CHEXPERT_COLUMNS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
TRAIN_CSV_COLUMNS: tuple[str, ...] = (
    "image_path",
    "auxview_image_path",
    "last_image_path",
    "last_auxview_image_path",
    "report",
)


def write_demo_folder(dataset_dict, folder: str | os.PathLike, absolute_paths: bool = True) -> dict[str, Path]:
    """Write the demo studies as PNG files plus CSVs in the reference layouts.

    Files:
        `images/<split>/<study_id>_<column>.png`;
        `<split>.csv`: the pre-training layout (`image_path`, `auxview_image_path`, `last_image_path`,
            `last_auxview_image_path`, `report`; "-1" marks a missing image) plus `study_id`, `label`, `change`;
        `chexpert_5x200.csv`: the test split's five CheXpert-5x200 classes in the 5x200 layout (index column,
            `Path`, Sex, Age, `Frontal/Lateral`, `AP/PA`, the 14 CheXpert label columns one-hot, `Report Impression`),
            sorted into class blocks as the original.

    Args:
        dataset_dict: the output of `generate_demo_dataset`.
        folder: destination (created).
        absolute_paths: write absolute image paths (the reference opens paths as written, so relative ones resolve
            against the working directory); `False` writes paths relative to `folder`.

    Returns:
        name -> path of each CSV written.
    """
    import datasets

    root = Path(folder).resolve()
    written: dict[str, Path] = {}
    for split, ds in dataset_dict.items():
        raw = ds
        for column in IMAGE_COLUMNS:
            raw = raw.cast_column(column, datasets.Image(decode=False))
        image_dir = root / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for row in raw:
            paths = {}
            for column in IMAGE_COLUMNS:
                if row[column] is None:
                    paths[column] = "-1"
                    continue
                path = image_dir / f"{row['study_id']}_{column}.png"
                path.write_bytes(row[column]["bytes"])
                paths[column] = str(path if absolute_paths else path.relative_to(root))
            rows.append({**row, **{f"_{c}": p for c, p in paths.items()}})
        csv_path = root / f"{split}.csv"
        with csv_path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow([*TRAIN_CSV_COLUMNS, "study_id", "label", "change"])
            for r in rows:
                writer.writerow(
                    [*(r[f"_{c}"] for c in IMAGE_COLUMNS), r["report"], r["study_id"], r["label"], r["change"] or ""]
                )
        written[split] = csv_path
        if split == "test":
            written["chexpert_5x200"] = _write_5x200(rows, root / "chexpert_5x200.csv")
    return written


def _write_5x200(rows: list[dict], path: Path) -> Path:
    from processing.prompts import CHEXPERT_5X200_CLASSES

    chosen = sorted(
        (r for r in rows if r["label"] in CHEXPERT_5X200_CLASSES),
        key=lambda r: CHEXPERT_5X200_CLASSES.index(r["label"]),
    )
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["", "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_COLUMNS, "Report Impression"])
        for i, r in enumerate(chosen):
            labels = ["1.0" if c == r["label"] else "0.0" for c in CHEXPERT_COLUMNS]
            impression = r["report"].split("IMPRESSION:", 1)[-1].strip()
            writer.writerow([i, r["_frontal"], "Unknown", "", "Frontal", "PA", *labels, impression])
    return path


__all__ = [
    "BOILERPLATE",
    "CHANGES",
    "CHANGE_PHRASES",
    "CHEXPERT_COLUMNS",
    "DEMO_CLASSES",
    "DemoStudy",
    "FINDING_WORDS",
    "IMAGE_COLUMNS",
    "SPLITS",
    "TRAIN_CSV_COLUMNS",
    "demo_class_prompts",
    "demo_features",
    "generate_demo_dataset",
    "generate_study",
    "strip_boilerplate",
    "write_demo_folder",
]
