"""What the web demo does, without the web: load a model, build the demo gallery, classify, retrieve, draw heatmaps.

`app.py` wires these functions to Gradio; tests call them directly and compare with what the running app returns.
Every model call goes through the package's `inference` functions (`ZeroShotClassifier`, `embed_images`,
`embed_texts`, `search`, `word_patch_similarity`), so the demo shows exactly what the library computes.

The gallery is built at start-up from the package's synthetic demo data (`processing.demo_data`): balanced over the
six demo classes, drawn with a seed the demo training never uses, at the size the model's processor resizes to, with
the reports stripped of their technique/comparison boilerplate as `python -m training.demo` trains on them. Its
reports, frontal images and whole studies are embedded once with the loaded model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from inference.embedding import default_text_length, embed_images, embed_texts, load_model_and_processor
from inference.heatmaps import model_view, word_patch_similarity
from inference.search import search
from inference.store import EmbeddingStore
from inference.zero_shot import ZeroShotClassifier
from modeling_alta.configuration_alta import STUDY_SLOTS


RESEARCH_NOTICE = (
    "**Research use only. Not a medical device.** This demo shows what an ALTA vision-language model computes; "
    "its outputs are not a diagnosis and must not be used for patient care. Do not upload identifiable patient data."
)
# `python -m training.demo` trains on seed 0; the gallery is drawn from another seed, so it is held out.
GALLERY_SEED = 20_251_202
TYPED_LABELS = "typed labels"
# Prompt ensembles and the tokenisation their protocols use (`max_length=None`: the model's training length).
ENSEMBLES: dict[str, dict[str, Any]] = {
    "demo": {"clean_text": False, "max_length": None},
    "chexpert5x200": {"clean_text": True, "max_length": 128},
    "rsna": {"clean_text": False, "max_length": 10},
}
DEMO_GALLERIES = ("demo reports", "demo studies", "demo frontal images")
STORE_PREFIX = "store: "
VIEW_NAMES = dict(zip(STUDY_SLOTS, ("frontal", "lateral", "prior frontal", "prior lateral")))


# ---------------------------------------------------------------------------------------------------------------
# 1. The gallery
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class GalleryStudy:
    """One synthetic study of the gallery: its views (PIL "L", `None` when missing), report and label."""

    study_id: str
    label: str
    report: str
    views: dict[str, Image.Image | None]

    @property
    def frontal(self) -> Image.Image:
        return self.views[STUDY_SLOTS[0]]


def generate_gallery_studies(num_studies: int, seed: int = GALLERY_SEED, image_size: int = 256) -> list[GalleryStudy]:
    """`num_studies` synthetic studies, classes in turn (`processing.demo_data.DEMO_CLASSES`), study `i` drawn from
    `default_rng([seed, i])` as `generate_demo_dataset` draws them; reports without boilerplate."""
    from processing.demo_data import DEMO_CLASSES, generate_study, strip_boilerplate

    if num_studies < 1:
        raise ValueError(f"the gallery needs at least one study; got num_studies={num_studies}")
    studies = []
    for i in range(num_studies):
        label = DEMO_CLASSES[i % len(DEMO_CLASSES)]
        study = generate_study(
            label, np.random.default_rng([seed, i]), study_id=f"gallery-{i:03d}", image_size=image_size
        )
        views = {
            slot: None if getattr(study, slot) is None else Image.fromarray(getattr(study, slot))
            for slot in STUDY_SLOTS
        }
        studies.append(GalleryStudy(study.study_id, label, strip_boilerplate(study.report), views))
    return studies


@dataclass
class DemoGallery:
    """The gallery studies and their L2-normalised embeddings `[N, P]`: reports, frontal images (single-image path)
    and whole studies (multiview/temporal path)."""

    studies: list[GalleryStudy]
    report_embeds: torch.Tensor
    image_embeds: torch.Tensor
    study_embeds: torch.Tensor

    def embeddings(self, name: str) -> torch.Tensor:
        return {
            "demo reports": self.report_embeds,
            "demo studies": self.study_embeds,
            "demo frontal images": self.image_embeds,
        }[name]


def build_demo_gallery(model: Any, processor: Any, num_studies: int = 36, seed: int = GALLERY_SEED) -> DemoGallery:
    """Generate the gallery at the processor's resize size and embed it with the model."""
    image_processor = getattr(processor, "image_processor", processor)
    studies = generate_gallery_studies(num_studies, seed, int(image_processor.shortest_edge))
    num_slots = int(image_processor.num_slots)
    return DemoGallery(
        studies=studies,
        report_embeds=embed_texts(model, processor, [s.report for s in studies]),
        image_embeds=embed_images(model, processor, [s.frontal for s in studies]),
        study_embeds=embed_images(
            model, processor, [{k: v for k, v in s.views.items() if k in STUDY_SLOTS[:num_slots]} for s in studies]
        ),
    )


def write_examples(gallery: DemoGallery, folder: str | os.PathLike, per_class: int = 1) -> list[list[str | None]]:
    """Write the views of the first `per_class` gallery studies of each class as PNGs into `folder`; return rows
    `[frontal, lateral, prior_frontal, prior_lateral]` of paths (`None` for missing views) for the app's examples."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows, seen = [], {}
    for study in gallery.studies:
        if seen.get(study.label, 0) >= per_class:
            continue
        seen[study.label] = seen.get(study.label, 0) + 1
        row: list[str | None] = []
        for slot in STUDY_SLOTS:
            view = study.views[slot]
            if view is None:
                row.append(None)
                continue
            path = folder / f"{study.study_id}_{slot}_{study.label.lower().replace(' ', '_')}.png"
            view.save(path)
            row.append(str(path))
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# 2. The demo
# ---------------------------------------------------------------------------------------------------------------


def parse_labels(text: str | None) -> list[str]:
    """Typed labels: one per line or comma-separated, blanks dropped, duplicates removed (first kept)."""
    items = [part.strip() for line in (text or "").splitlines() for part in line.split(",")]
    labels = list(dict.fromkeys(item for item in items if item))
    return labels


def study_input(
    frontal: Any, lateral: Any = None, prior_frontal: Any = None, prior_lateral: Any = None
) -> tuple[Any, str]:
    """The model input for the given views and how it is scored.

    A frontal alone is an **image** (the single-frontal path, the reference's evaluation path); with any other
    view it is a **study** (the multiview/temporal path, missing views through the missing-view token).

    Returns:
        `(input, description)`.
    """
    if frontal in (None, ""):
        raise ValueError("a frontal image is needed (PNG, JPEG or DICOM)")
    views = dict(zip(STUDY_SLOTS, (frontal, lateral, prior_frontal, prior_lateral)))
    present = {slot: view for slot, view in views.items() if view not in (None, "")}
    if len(present) == 1:
        return frontal, "an image (single-frontal path)"
    names = ", ".join(VIEW_NAMES[slot] for slot in present)
    return present, f"a study of {len(present)} views ({names}; multiview/temporal path)"


@dataclass
class Classification:
    """Zero-shot scores of one image or study: class names, `softmax(exp(logit_scale) * cosine)` and cosines,
    best first."""

    class_names: list[str]
    probabilities: list[float]
    cosines: list[float]
    scored_as: str

    def rows(self) -> list[list[Any]]:
        return [[n, p, c] for n, p, c in zip(self.class_names, self.probabilities, self.cosines)]


@dataclass
class Hit:
    rank: int
    score: float
    id: str | int
    label: str | None = None
    text: str | None = None
    image: Image.Image | None = field(default=None, repr=False)


class AltaDemo:
    """An ALTA model, its processor, the demo gallery and optional embedding stores, behind the demo's three tasks.

    Args:
        model, processor: see `inference.embedding.load_model_and_processor` (or use `AltaDemo.load`).
        gallery_size: synthetic studies in the demo gallery.
        stores: name -> `EmbeddingStore` folder (image or report embeddings of this model), offered for retrieval.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        gallery_size: int = 36,
        stores: Mapping[str, str | os.PathLike] | None = None,
        source: str | None = None,
    ) -> None:
        self.model, self.processor = load_model_and_processor(model, processor)
        self.source = source or str(getattr(self.model, "name_or_path", "") or type(self.model).__name__)
        self.gallery = build_demo_gallery(self.model, self.processor, gallery_size)
        self.stores: dict[str, EmbeddingStore] = {}
        for name, folder in (stores or {}).items():
            store = EmbeddingStore(folder)
            if store.dim != self.gallery.report_embeds.shape[1]:
                raise ValueError(
                    f"embedding store {name!r} ({folder}) holds size-{store.dim} embeddings; the model's are "
                    f"size {self.gallery.report_embeds.shape[1]}"
                )
            self.stores[name] = store
        self._classifiers: dict[tuple, ZeroShotClassifier] = {}

    @classmethod
    def load(cls, name_or_path: str, **kwargs: Any) -> AltaDemo:
        """From a model folder or a Hub id (see `load_model_and_processor`)."""
        model, processor = load_model_and_processor(name_or_path)
        return cls(model, processor, source=str(name_or_path), **kwargs)

    @property
    def galleries(self) -> list[str]:
        return [*DEMO_GALLERIES, *(STORE_PREFIX + name for name in self.stores)]

    def describe(self) -> str:
        config = self.model.config
        vision, text = config.vision_config, config.text_config
        return (
            f"Model `{self.source}`: ViT {vision.num_hidden_layers}x{vision.hidden_size} at {vision.image_size} px, "
            f"text encoder {text.num_hidden_layers}x{text.hidden_size}, {config.projection_dim}-d joint space. "
            f"Gallery: {len(self.gallery.studies)} synthetic studies (not real radiographs)."
        )

    # -- zero-shot ------------------------------------------------------------------------------------------------

    def classifier(self, ensemble: str, labels: Sequence[str] = ()) -> ZeroShotClassifier:
        """The (cached) classifier of a prompt ensemble, or of typed labels (each label its own prompt, raw text)."""
        if ensemble == TYPED_LABELS:
            if len(labels) < 2:
                raise ValueError(f"type at least two labels (one per line or comma-separated); got {list(labels)}")
            prompts: Mapping[str, Sequence[str]] | str = {label: [label] for label in labels}
            settings = {"clean_text": False, "max_length": None}
            key: tuple = (ensemble, tuple(labels))
        elif ensemble in ENSEMBLES:
            prompts, settings, key = ensemble, ENSEMBLES[ensemble], (ensemble,)
        else:
            raise ValueError(f"unknown prompt ensemble {ensemble!r}; choose from {[*ENSEMBLES, TYPED_LABELS]}")
        if key not in self._classifiers:
            limit = int(self.model.config.text_config.max_position_embeddings)
            length = min(settings["max_length"] or default_text_length(self.processor), limit)
            self._classifiers[key] = ZeroShotClassifier(
                self.model, self.processor, prompts, clean_text=settings["clean_text"], max_length=length
            )
        return self._classifiers[key]

    def classify(
        self,
        frontal: Any,
        lateral: Any = None,
        prior_frontal: Any = None,
        prior_lateral: Any = None,
        ensemble: str = "demo",
        labels_text: str | None = None,
    ) -> Classification:
        """Zero-shot classification of one image or study (see `study_input`)."""
        item, scored_as = study_input(frontal, lateral, prior_frontal, prior_lateral)
        pred = self.classifier(ensemble, parse_labels(labels_text)).predict([item])
        probs, cos = pred.probabilities[0], pred.logits[0]
        order = torch.argsort(probs, descending=True, stable=True).tolist()
        return Classification(
            class_names=[pred.class_names[i] for i in order],
            probabilities=[float(probs[i]) for i in order],
            cosines=[float(cos[i]) for i in order],
            scored_as=scored_as,
        )

    # -- retrieval ------------------------------------------------------------------------------------------------

    def _gallery_hits(self, query: torch.Tensor, gallery: str, k: int) -> list[Hit]:
        if gallery.startswith(STORE_PREFIX):
            name = gallery[len(STORE_PREFIX) :]
            if name not in self.stores:
                raise ValueError(f"unknown embedding store {name!r}; available: {list(self.stores)}")
            store = self.stores[name]
            result = search(query, store, k=min(k, len(store)))
            return [
                Hit(rank=r + 1, score=float(s), id=i)
                for r, (s, i) in enumerate(zip(result.scores[0].tolist(), result.ids[0]))
            ]
        if gallery not in DEMO_GALLERIES:
            raise ValueError(f"unknown gallery {gallery!r}; available: {self.galleries}")
        studies = self.gallery.studies
        result = search(query, self.gallery.embeddings(gallery), k=min(k, len(studies)))
        hits = []
        for rank, (score, index) in enumerate(zip(result.scores[0].tolist(), result.indices[0].tolist())):
            study = studies[index]
            hits.append(Hit(rank + 1, float(score), study.study_id, study.label, study.report, study.frontal))
        return hits

    def retrieve_by_image(self, frontal: Any, gallery: str = "demo reports", k: int = 5) -> list[Hit]:
        """The `k` gallery entries closest (cosine) to one image (single-frontal path)."""
        if frontal in (None, ""):
            raise ValueError("upload an image to search with (PNG, JPEG or DICOM)")
        return self._gallery_hits(embed_images(self.model, self.processor, [frontal]), gallery, k)

    def retrieve_by_text(self, text: str, gallery: str = "demo studies", k: int = 5) -> list[Hit]:
        """The `k` gallery entries closest (cosine) to a text (a report or a phrase, raw)."""
        if not (text or "").strip():
            raise ValueError("type a text to search with")
        return self._gallery_hits(embed_texts(self.model, self.processor, [text]), gallery, k)

    # -- heatmap --------------------------------------------------------------------------------------------------

    def model_view(self, image: Any) -> Image.Image:
        """The gray crop the model sees of one image (`inference.heatmaps.model_view`)."""
        return model_view(self.processor, image)

    def heatmap(
        self, image: Any, phrase: str, reduction: str = "mean", vmax: float = 1.0
    ) -> tuple[Image.Image, np.ndarray]:
        """The word-to-patch similarity of a phrase over the crop the model sees, on a fixed colour scale.

        Returns:
            `(picture, similarity [g, g])`: the rendered figure (image and overlay with a colour bar in cosine
            units) and the patch cosines it shows.
        """
        from evaluation.plots import figure_to_image, similarity_heatmap_figure

        if image in (None, ""):
            raise ValueError("upload an image (PNG, JPEG or DICOM)")
        similarity = word_patch_similarity(self.model, self.processor, image, phrase, reduction=reduction)
        view = self.model_view(image)
        figure = similarity_heatmap_figure(view, similarity, phrase=phrase, vmax=vmax)
        return figure_to_image(figure), similarity


__all__ = [
    "DEMO_GALLERIES",
    "ENSEMBLES",
    "GALLERY_SEED",
    "RESEARCH_NOTICE",
    "STORE_PREFIX",
    "TYPED_LABELS",
    "AltaDemo",
    "Classification",
    "DemoGallery",
    "GalleryStudy",
    "Hit",
    "build_demo_gallery",
    "generate_gallery_studies",
    "parse_labels",
    "study_input",
    "write_examples",
]
