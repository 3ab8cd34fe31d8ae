"""Pictures of evaluation results: a confusion matrix, a retrieval example sheet, a word-to-patch heatmap (on a fixed
cosine scale, never min-max scaled per image).

matplotlib is optional (the `eval` extra). The figures are drawn on `matplotlib.figure.Figure` with the Agg canvas
directly rather than through `pyplot`, so nothing here switches the user's backend or keeps global figure state,
and it works headless.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


ImageLike = Image.Image | np.ndarray
Item = ImageLike | str  # a retrieval query or hit: an image, or a report text


def _figure(width: float, height: float, dpi: int, layout: str | None = None):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "evaluation.plots needs matplotlib; install it with `pip install matplotlib` or the `eval` extra "
            "(`pip install -e .[eval]`)"
        ) from err
    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plots are written as PNG; got the file name {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def _as_gray(image: ImageLike) -> np.ndarray:
    """`[H, W]` float array in [0, 1] from a PIL image or a `[H, W]`/`[H, W, C]`/`[C, H, W]` array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    raw = np.asarray(image)
    a = raw.astype(np.float32)
    if a.ndim == 3:
        channels_first = a.shape[0] in (1, 3) and a.shape[2] not in (1, 3)
        a = a.mean(axis=0) if channels_first else a.mean(axis=2)
    if a.ndim != 2:
        raise ValueError(f"an image must be [H, W], [H, W, C] or [C, H, W]; got shape {raw.shape}")
    if raw.dtype == np.uint8:
        return a / 255.0
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        return a
    # Normalised model inputs and other ranges: scale by the image's own range for display.
    return (a - lo) / max(hi - lo, 1e-12)


def plot_confusion_matrix(
    matrix: Any,
    class_names: Sequence[str],
    path: str | os.PathLike,
    normalize: bool = False,
    title: str | None = "Zero-shot confusion matrix",
    dpi: int = 120,
) -> Path:
    """Write a confusion matrix as a PNG.

    Args:
        matrix: `[C, C]` counts, rows = true class, columns = predicted (`evaluation.protocols.confusion_matrix`).
        class_names: the C names.
        path: the `.png` file.
        normalize: colour and print each row as fractions of its true class (counts stay in brackets).
        title: figure title (`None` for none).

    Returns:
        the path written.
    """
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(class_names):
        raise ValueError(f"`matrix` must be [C, C] with C = {len(class_names)} class names; got shape {m.shape}")
    rows = m.sum(axis=1, keepdims=True)
    shown = np.divide(m, rows, out=np.zeros(m.shape, dtype=np.float64), where=rows > 0) if normalize else m
    size = 1.2 + 0.75 * len(class_names)
    fig = _figure(size + 1.5, size, dpi)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(1, int(m.max())))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(class_names)), labels=class_names, rotation=40, ha="right")
    ax.set_yticks(range(len(class_names)), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = (1 if normalize else max(1, m.max())) / 2
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            text = f"{shown[i, j]:.2f}\n({m[i, j]})" if normalize else f"{m[i, j]}"
            ax.text(
                j, i, text, ha="center", va="center", fontsize=8, color="white" if shown[i, j] > threshold else "black"
            )
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _draw_item(ax, item: Item, caption: str | None, edge: str | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if isinstance(item, str):
        ax.set_facecolor("#f4f4f4")
        ax.text(
            0.04,
            0.96,
            textwrap.fill(item, 28)[:420],
            ha="left",
            va="top",
            fontsize=6.5,
            transform=ax.transAxes,
            clip_on=True,  # long reports are cut at the cell edge instead of spilling over the next row
        )
    else:
        ax.imshow(_as_gray(item), cmap="gray", vmin=0, vmax=1)
    if caption:
        ax.set_title(caption, fontsize=8)
    for spine in ax.spines.values():
        spine.set_edgecolor(edge or "#999999")
        spine.set_linewidth(3 if edge else 0.5)


def plot_retrieval_examples(
    queries: Sequence[Item],
    hits: Sequence[Sequence[Item]],
    scores: Sequence[Sequence[float]],
    path: str | os.PathLike,
    relevant: Sequence[Sequence[bool]] | None = None,
    query_captions: Sequence[str] | None = None,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Write a retrieval example sheet: one row per query, the query then its top hits with their scores.

    Args:
        queries: per row, the query: an image (PIL or array) or a text.
        hits: per row, the ranked hits (images or texts), best first.
        scores: per row, the hits' similarities.
        relevant: per row, whether each hit is relevant (frames it green, else red); `None` for no frames.
        query_captions: per row, a caption for the query (e.g. its label).
        title: figure title.

    Returns:
        the path written.
    """
    if not len(queries) == len(hits) == len(scores):
        raise ValueError(f"queries, hits and scores need one row each; got {len(queries)}, {len(hits)}, {len(scores)}")
    if relevant is not None and len(relevant) != len(queries):
        raise ValueError(f"`relevant` needs one row per query; got {len(relevant)} rows for {len(queries)} queries")
    if not queries:
        raise ValueError("nothing to draw: `queries` is empty")
    for r, (h, s) in enumerate(zip(hits, scores)):
        if len(h) != len(s):
            raise ValueError(f"row {r}: {len(h)} hits but {len(s)} scores")
    n_cols = 1 + max(len(h) for h in hits)
    fig = _figure(1.9 * n_cols, 2.1 * len(queries) + (0.4 if title else 0), dpi)
    for r, query in enumerate(queries):
        ax = fig.add_subplot(len(queries), n_cols, r * n_cols + 1)
        caption = "query" + (f": {query_captions[r]}" if query_captions is not None else "")
        _draw_item(ax, query, caption, "#1f4e9c")
        for c, (hit, score) in enumerate(zip(hits[r], scores[r])):
            ax = fig.add_subplot(len(queries), n_cols, r * n_cols + 2 + c)
            edge = None if relevant is None else ("#2ca02c" if relevant[r][c] else "#d62728")
            _draw_item(ax, hit, f"#{c + 1}  {float(score):.3f}", edge)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def upsample_similarity(similarity: Any, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of an `[h, w]` patch similarity map to an image size `(H, W)`."""
    sim = np.asarray(similarity, dtype=np.float32)
    if sim.ndim != 2:
        raise ValueError(f"`similarity` must be a [h, w] patch grid; got shape {sim.shape}")
    height, width = size
    return np.asarray(Image.fromarray(sim, mode="F").resize((width, height), Image.BILINEAR), dtype=np.float32)


def similarity_overlay(
    similarity: Any, size: tuple[int, int], vmax: float = 1.0, alpha: float = 0.7, cmap: str = "RdBu_r"
) -> np.ndarray:
    """The coloured overlay of a patch similarity map on a **fixed** scale: `[H, W, 4]` RGBA floats in [0, 1].

    Colours map cosine similarity on `[-vmax, vmax]` (values beyond are clipped), the same for every image and
    phrase, and the opacity of each pixel is `alpha * min(|cosine| / vmax, 1)`: a map of near-zero similarities
    stays nearly transparent instead of being stretched over the whole colour range, as a per-image min-max
    scaling would do with noise.

    Args:
        similarity: `[h, w]` patch cosines (`inference.heatmaps.word_patch_similarity`).
        size: `(H, W)` of the image it is drawn over (bilinear upsampling).
        vmax: the colour scale's end, `> 0` (cosines are at most 1).
        alpha: opacity at `|cosine| >= vmax`.
        cmap: a diverging matplotlib colour map (default: blue negative, white zero, red positive).
    """
    if not vmax > 0:
        raise ValueError(f"`vmax` must be positive (the colour scale spans [-vmax, vmax]); got {vmax}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"`alpha` must lie in [0, 1]; got {alpha}")
    from matplotlib import colormaps

    heat = upsample_similarity(similarity, size)
    rgba = colormaps[cmap]((np.clip(heat, -vmax, vmax) + vmax) / (2 * vmax))
    rgba[..., 3] = alpha * np.clip(np.abs(heat) / vmax, 0.0, 1.0)
    return rgba


def similarity_heatmap_figure(
    image: ImageLike,
    similarity: Any,
    phrase: str | None = None,
    vmax: float = 1.0,
    alpha: float = 0.7,
    cmap: str = "RdBu_r",
    dpi: int = 120,
):
    """A word-to-patch similarity heatmap over a radiograph, next to the plain image, on a fixed colour scale.

    See `similarity_overlay` for the scale; the colour bar shows it in cosine units and the caption gives the map's
    own minimum, mean and maximum, so a weak map is read as weak.

    Args:
        image: the radiograph (PIL, `[H, W]` or `[H, W, C]`/`[C, H, W]` array), e.g. `inference.heatmaps.model_view`.
        similarity: `[h, w]` patch cosines (e.g. a 14x14 grid).
        phrase: shown as the title.

    Returns:
        a `matplotlib.figure.Figure` (Agg canvas; `figure_to_image` turns it into a PIL image).
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    gray = _as_gray(image)
    sim = np.asarray(similarity, dtype=np.float32)
    overlay = similarity_overlay(sim, gray.shape, vmax=vmax, alpha=alpha, cmap=cmap)
    fig = _figure(7.4, 3.9, dpi, layout="constrained")  # keeps the colour bar and caption inside the canvas
    left = fig.add_subplot(1, 2, 1)
    left.imshow(gray, cmap="gray", vmin=0, vmax=1)
    left.set_title("image", fontsize=9)
    right = fig.add_subplot(1, 2, 2)
    right.imshow(gray, cmap="gray", vmin=0, vmax=1)
    right.imshow(overlay)
    scale = ScalarMappable(norm=Normalize(-vmax, vmax), cmap=cmap)
    fig.colorbar(scale, ax=right, fraction=0.046, pad=0.04, label=f"cosine similarity (fixed scale ±{vmax:g})")
    right.set_title(textwrap.shorten(f'"{phrase}"', 60) if phrase else "similarity", fontsize=9)
    fig.supxlabel(
        f"this map: min {sim.min():.3f}, mean {sim.mean():.3f}, max {sim.max():.3f} (cosine); "
        f"colours fixed on [-{vmax:g}, {vmax:g}], opacity grows with |cosine|",
        fontsize=8,
    )
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def figure_to_image(fig) -> Image.Image:
    """An RGB PIL image of a figure drawn by this module (rendered by its Agg canvas)."""
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())


def plot_similarity_heatmap(
    image: ImageLike,
    similarity: Any,
    path: str | os.PathLike,
    phrase: str | None = None,
    vmax: float = 1.0,
    alpha: float = 0.7,
    cmap: str = "RdBu_r",
    dpi: int = 120,
) -> Path:
    """Write a word-to-patch similarity heatmap over a radiograph as a PNG (see `similarity_heatmap_figure`).

    Args:
        image: the radiograph (PIL, `[H, W]` or `[H, W, C]`/`[C, H, W]` array, e.g. the model input).
        similarity: `[h, w]` patch cosines of the phrase's token features (e.g. a 14x14 grid).
        path: the `.png` file.
        phrase: shown as the title.
        vmax: the colour scale spans `[-vmax, vmax]` for every map (never rescaled per image).

    Returns:
        the path written.
    """
    fig = similarity_heatmap_figure(image, similarity, phrase=phrase, vmax=vmax, alpha=alpha, cmap=cmap, dpi=dpi)
    return _save(fig, path)


__all__ = [
    "figure_to_image",
    "plot_confusion_matrix",
    "plot_retrieval_examples",
    "plot_similarity_heatmap",
    "similarity_heatmap_figure",
    "similarity_overlay",
    "upsample_similarity",
]
