"""The evaluation protocols of the ALTA paper, as pure functions of embeddings, scores and labels.

Nothing here runs a model. The embedding conventions follow the official evaluation scripts
(alta_reference.md §8):

- zero-shot class embedding = `normalize(mean over prompts)` of the **unnormalised** prompt embeddings; images are
  L2-normalised; the score is the plain cosine (the logit scale is unused);
- CheXpert 5x200 zero-shot: argmax over the class cosines, accuracy (also per class here);
- RSNA pneumonia: `softmax([cos_pos, cos_neg])[0]` at temperature 1, AUROC over all scores, and accuracy/F1 from a
  10-fold stratified threshold search whose threshold is chosen by **F1** (the reference's choice, kept by default
  and switchable with `select_by="accuracy"`);
- retrieval P@K: mean over queries of (relevant items among the top K by cosine) / K, relevant = same label.
  Ties in the ranking are broken by the lower gallery index, so results do not depend on `torch.topk`'s
  unspecified tie order.

Inputs may be numpy arrays, torch tensors or lists; similarities are computed in torch, metrics in numpy (float64).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from inference.arrays import ArrayLike, as_1d_array, as_float_tensor, check_same_length, l2_normalize
from inference.search import TopKResult


IMAGE_TO_TEXT_KS: tuple[int, ...] = (5, 10, 100)
TEXT_TO_IMAGE_KS: tuple[int, ...] = (5, 10, 50)
IMAGE_TO_IMAGE_KS: tuple[int, ...] = (5, 10, 50)

# The reference's threshold grid, built with the same expression so that every value is bitwise the same float
# (0.015000000000000001 rather than 0.015): 201 values from 0 to 1.
RSNA_THRESHOLDS: np.ndarray = np.arange(0, 1 + 0.005, 0.005)


def _binary_labels(labels: ArrayLike, name: str = "labels") -> np.ndarray:
    a = as_1d_array(labels, name)
    values = set(np.unique(a).tolist())
    if not values <= {0, 1}:  # True == 1 and False == 0, so bools pass too
        raise ValueError(f"`{name}` must be binary (0/1 or bool); got values {sorted(values)[:10]}")
    return a.astype(bool)


# ---------------------------------------------------------------------------------------------------------------
# zero-shot classification
# ---------------------------------------------------------------------------------------------------------------


def _predictions_from(predictions: ArrayLike) -> np.ndarray:
    a = predictions.detach().cpu().numpy() if isinstance(predictions, torch.Tensor) else np.asarray(predictions)
    if a.ndim == 2:
        # Logits: argmax takes the first maximum, as torch.argmax does in the reference.
        return a.argmax(axis=1)
    if a.ndim != 1:
        raise ValueError(f"`predictions` must be class indices [N] or logits [N, C]; got shape {a.shape}")
    return a


def zero_shot_accuracy(
    predictions: ArrayLike,
    references: ArrayLike,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """CheXpert 5x200-style accuracy, overall and per class.

    Args:
        predictions: `[N]` predicted class indices, or `[N, C]` logits (argmax, first maximum wins).
        references: `[N]` true class indices.
        class_names: names for the per-class keys; default the indices as strings. Classes absent from
            `references` are left out of `per_class_accuracy` (their accuracy is undefined).

    Returns:
        `{"accuracy": float, "per_class_accuracy": {name: float}, "num_samples": int}`; per-class accuracy is the
        fraction of that class's samples predicted correctly (its recall).
    """
    pred = _predictions_from(predictions).astype(np.int64)
    ref = as_1d_array(references, "references").astype(np.int64)
    check_same_length(predictions=pred, references=ref)
    if len(ref) == 0:
        raise ValueError("`references` is empty: accuracy needs at least one sample")
    correct = pred == ref
    per_class: dict[str, float] = {}
    for c in np.unique(ref).tolist():
        if class_names is not None and not 0 <= c < len(class_names):
            raise ValueError(f"reference class {c} has no name in `class_names` ({len(class_names)} names)")
        name = class_names[c] if class_names is not None else str(c)
        per_class[name] = float(correct[ref == c].mean())
    if class_names is not None:
        per_class = {n: per_class[n] for n in class_names if n in per_class}
    return {"accuracy": float(correct.mean()), "per_class_accuracy": per_class, "num_samples": int(len(ref))}


def confusion_matrix(predictions: ArrayLike, references: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """`[C, C]` int64 counts, rows = true class, columns = predicted class. `predictions` may be logits `[N, C]`."""
    pred = _predictions_from(predictions).astype(np.int64)
    ref = as_1d_array(references, "references").astype(np.int64)
    check_same_length(predictions=pred, references=ref)
    num_classes = int(max(pred.max(initial=-1), ref.max(initial=-1))) + 1 if num_classes is None else num_classes
    for name, a in (("predictions", pred), ("references", ref)):
        if len(a) and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"`{name}` values must lie in [0, {num_classes}); got {sorted(set(a.tolist()))[:10]}")
    return np.bincount(ref * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


# ---------------------------------------------------------------------------------------------------------------
# RSNA pneumonia
# ---------------------------------------------------------------------------------------------------------------


def rsna_zero_shot_scores(image_embeds: ArrayLike, positive_embed: ArrayLike, negative_embed: ArrayLike) -> np.ndarray:
    """`softmax([cos_pos, cos_neg])[0]` per image, at temperature 1 (so scores stay close to 0.5).

    Args:
        image_embeds: `[N, P]` (normalised here).
        positive_embed, negative_embed: `[P]` or `[n, P]` embeddings of the "There is pneumonia" / "There is no
            pneumonia" prompts; several rows are reduced as a prompt ensemble (normalised mean).

    Returns:
        `[N]` float32 scores.
    """
    img = l2_normalize(as_float_tensor(image_embeds, "image_embeds", 2))
    sims = []
    for name, e in (("positive_embed", positive_embed), ("negative_embed", negative_embed)):
        t = as_float_tensor(e, name, 2) if np.ndim(e) == 2 else as_float_tensor(e, name, 1).unsqueeze(0)
        if t.shape[1] != img.shape[1]:
            raise ValueError(f"`{name}` has size {t.shape[1]}; image_embeds have {img.shape[1]}")
        sims.append(img @ l2_normalize(t.mean(0)).to(img.dtype))
    return torch.softmax(torch.stack(sims, dim=-1), dim=-1)[:, 0].to(torch.float32).numpy()


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (tied scores count one half), equal to scikit-learn's `roc_auc_score`.

    Computed from average ranks (Mann-Whitney U), so it needs no scikit-learn.
    """
    y = _binary_labels(labels)
    s = as_1d_array(scores, "scores").astype(np.float64)
    check_same_length(labels=y, scores=s)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUROC needs both classes; got {n_pos} positives and {n_neg} negatives")
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    # 1-based ranks, averaged over runs of equal scores.
    ranks = np.empty(len(s), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + 1 + b) / 2.0
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _stratified_kfold_numpy(y: np.ndarray, n_splits: int, shuffle: bool, random_state: int | None) -> np.ndarray:
    """Test-fold number per sample, by the algorithm of scikit-learn's `StratifiedKFold` (1.x):

    classes are numbered by first appearance; fold sizes per class come from dealing the class-sorted labels round
    robin over the folds; each class's block of fold numbers is shuffled with one `RandomState(random_state)`,
    class after class, and assigned to that class's samples in order. Same seed, same folds (checked in the tests
    against scikit-learn 1.9).
    """
    rng = np.random.RandomState(random_state)
    _, first_index, inverse = np.unique(y, return_index=True, return_inverse=True)
    _, class_by_appearance = np.unique(first_index, return_inverse=True)
    encoded = class_by_appearance[inverse.reshape(-1)]
    n_classes = len(first_index)
    y_sorted = np.sort(encoded)
    allocation = np.stack([np.bincount(y_sorted[i::n_splits], minlength=n_classes) for i in range(n_splits)])
    test_folds = np.empty(len(y), dtype=np.int64)
    for k in range(n_classes):
        folds = np.repeat(np.arange(n_splits), allocation[:, k])
        if shuffle:
            rng.shuffle(folds)
        test_folds[encoded == k] = folds
    return test_folds


def stratified_kfold(
    labels: ArrayLike,
    n_splits: int = 10,
    shuffle: bool = True,
    random_state: int | None = 0,
    backend: Literal["auto", "sklearn", "numpy"] = "auto",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified K folds as `(train_indices, test_indices)` pairs, in fold order.

    `backend="auto"` uses scikit-learn's `StratifiedKFold(n_splits, shuffle, random_state)` when it is importable
    (the reference's folds), else the numpy re-implementation of the same algorithm (`_stratified_kfold_numpy`),
    which gives the same folds for integer seeds. `random_state=None` is only allowed with scikit-learn.
    """
    y = as_1d_array(labels, "labels")
    if n_splits < 2:
        raise ValueError(f"`n_splits` must be at least 2; got {n_splits}")
    counts = np.unique(y, return_counts=True)[1]
    if n_splits > len(y) or np.all(counts < n_splits):
        raise ValueError(f"`n_splits`={n_splits} is larger than every class (class sizes {counts.tolist()})")
    if backend not in ("auto", "sklearn", "numpy"):
        raise ValueError(f"`backend` must be 'auto', 'sklearn' or 'numpy'; got {backend!r}")
    use_sklearn = backend == "sklearn"
    if backend == "auto":
        try:
            import sklearn.model_selection  # noqa: F401

            use_sklearn = True
        except ImportError:
            use_sklearn = False
    if use_sklearn:
        from sklearn.model_selection import StratifiedKFold

        splitter = StratifiedKFold(n_splits=n_splits, shuffle=shuffle, random_state=random_state if shuffle else None)
        return [(tr, te) for tr, te in splitter.split(np.zeros(len(y)), y)]
    if shuffle and random_state is None:
        raise ValueError("the numpy folds need an integer `random_state` when `shuffle=True`; got None")
    if counts.min() < n_splits:
        warnings.warn(
            f"the least populated class has {counts.min()} members, fewer than n_splits={n_splits}", stacklevel=2
        )
    test_folds = _stratified_kfold_numpy(y, n_splits, shuffle, random_state)
    indices = np.arange(len(y))
    return [(indices[test_folds != i], indices[test_folds == i]) for i in range(n_splits)]


def binary_classification_metrics(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, float]:
    """Accuracy, F1, recall, precision and NPV of the prediction `score > threshold` (strictly greater).

    Undefined ratios (no predicted positives, ...) are NaN, as in the reference's numpy arithmetic. Scores are
    compared in float64.
    """
    y = _binary_labels(labels)
    s = as_1d_array(scores, "scores").astype(np.float64)
    check_same_length(labels=y, scores=s)
    return {k: float(v[0]) for k, v in _confusion_rates(y, s, np.asarray([threshold], dtype=np.float64)).items()}


def _confusion_rates(y: np.ndarray, s: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    pred = s[None, :] > thresholds[:, None]  # [T, N]
    tp = (pred & y).sum(1).astype(np.float64)
    fp = (pred & ~y).sum(1).astype(np.float64)
    fn = (~pred & y).sum(1).astype(np.float64)
    tn = (~pred & ~y).sum(1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / (tp + fn)
        precision = tp / (tp + fp)
        f1 = 2 * precision * recall / (precision + recall)
        npv = tn / (tn + fn)
    return {"accuracy": (tp + tn) / len(y), "f1": f1, "recall": recall, "precision": precision, "npv": npv}


def search_threshold(
    labels: ArrayLike,
    scores: ArrayLike,
    select_by: Literal["f1", "accuracy"] = "f1",
    thresholds: ArrayLike | None = None,
) -> tuple[float, float]:
    """The threshold of the grid with the best `select_by` metric; the first (lowest) maximum wins.

    `select_by="f1"` is the reference's choice (its variable is named as if it were accuracy). Thresholds whose
    metric is undefined (NaN F1) are never chosen, as NaN never compares greater in the reference's loop; if all
    are undefined the threshold stays at the reference's initial 0.

    Returns:
        `(threshold, value of select_by at that threshold)` (value NaN if none was defined).
    """
    if select_by not in ("f1", "accuracy"):
        raise ValueError(f"`select_by` must be 'f1' or 'accuracy'; got {select_by!r}")
    y = _binary_labels(labels)
    s = as_1d_array(scores, "scores").astype(np.float64)
    check_same_length(labels=y, scores=s)
    grid = RSNA_THRESHOLDS if thresholds is None else as_1d_array(thresholds, "thresholds").astype(np.float64)
    values = _confusion_rates(y, s, grid)[select_by]
    if np.all(np.isnan(values)):
        return 0.0, float("nan")
    best = int(np.nanargmax(values))  # first maximum among defined values
    return float(grid[best]), float(values[best])


def rsna_zero_shot_metrics(
    labels: ArrayLike,
    scores: ArrayLike,
    select_by: Literal["f1", "accuracy"] = "f1",
    n_splits: int = 10,
    random_state: int = 0,
    thresholds: ArrayLike | None = None,
    fold_backend: Literal["auto", "sklearn", "numpy"] = "auto",
) -> dict[str, Any]:
    """The RSNA pneumonia protocol: AUROC over all scores, and ACC/F1 from a K-fold threshold search.

    For each stratified fold: pick the threshold on the other K-1 folds (`search_threshold`, by F1 as the
    reference does, or by accuracy), then score the held-out fold with `score > threshold`. ACC and F1 are the
    means over folds (a fold with an undefined F1 makes the mean NaN, as in the reference).

    Args:
        labels: `[N]` 0/1 (1 = pneumonia).
        scores: `[N]` positive-class scores (`rsna_zero_shot_scores`).
        select_by: the metric maximised on the training folds.
        n_splits, random_state: the folds (`stratified_kfold`, shuffled).
        thresholds: the grid; default 0, 0.005, ..., 1.
        fold_backend: see `stratified_kfold`.

    Returns:
        `{"auroc", "accuracy", "f1", "fold_thresholds", "fold_accuracy", "fold_f1", "select_by"}`.
    """
    y = _binary_labels(labels)
    s = as_1d_array(scores, "scores").astype(np.float64)
    check_same_length(labels=y, scores=s)
    fold_thresholds, fold_acc, fold_f1 = [], [], []
    for train_idx, test_idx in stratified_kfold(y, n_splits, True, random_state, backend=fold_backend):
        threshold, _ = search_threshold(y[train_idx], s[train_idx], select_by, thresholds)
        held_out = binary_classification_metrics(y[test_idx], s[test_idx], threshold)
        fold_thresholds.append(threshold)
        fold_acc.append(held_out["accuracy"])
        fold_f1.append(held_out["f1"])
    return {
        "auroc": roc_auc(y, s),
        "accuracy": float(np.mean(fold_acc)),
        "f1": float(np.mean(fold_f1)),
        "fold_thresholds": fold_thresholds,
        "fold_accuracy": fold_acc,
        "fold_f1": fold_f1,
        "select_by": select_by,
    }


# ---------------------------------------------------------------------------------------------------------------
# retrieval
# ---------------------------------------------------------------------------------------------------------------


def _encode_labels(*label_arrays: ArrayLike) -> list[np.ndarray]:
    """Map labels of any hashable kind (ints, class names) to shared integer codes."""
    arrays = [as_1d_array(a, "labels") for a in label_arrays]
    _, inverse = np.unique(np.concatenate(arrays), return_inverse=True)
    out, start = [], 0
    for a in arrays:
        out.append(inverse[start : start + len(a)].reshape(-1))
        start += len(a)
    return out


def ranked_indices(similarity: ArrayLike, k: int) -> torch.Tensor:
    """Indices of the `k` most similar gallery items per query, best first; ties go to the lower index.

    Args:
        similarity: `[Q, G]`.

    Returns:
        `[Q, k]` int64.
    """
    sim = as_float_tensor(similarity, "similarity", 2)
    if not 1 <= k <= sim.shape[1]:
        raise ValueError(f"`k` must lie in [1, {sim.shape[1]}] (the gallery size); got {k}")
    if torch.isnan(sim).any():
        raise ValueError("`similarity` contains NaN; cannot rank")
    # A stable descending sort keeps equal scores in index order; torch.topk gives no such guarantee.
    return torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k]


def precision_at_k_from_ranked_labels(
    ranked_labels: ArrayLike, query_labels: ArrayLike, ks: Sequence[int]
) -> dict[str, float]:
    """P@K from the labels of each query's ranked hits.

    Args:
        ranked_labels: `[Q, K_max]` labels of the hits, best first.
        query_labels: `[Q]`.
        ks: the cut-offs, each at most `K_max`.

    Returns:
        `{"p@K": mean over queries of (hits with the query's label among the first K) / K}`.
    """
    ranked = ranked_labels.cpu().numpy() if isinstance(ranked_labels, torch.Tensor) else np.asarray(ranked_labels)
    q = as_1d_array(query_labels, "query_labels")
    if ranked.ndim != 2 or ranked.shape[0] != len(q):
        raise ValueError(f"`ranked_labels` must be [Q={len(q)}, K]; got shape {ranked.shape}")
    relevant = ranked == q[:, None]
    out = {}
    for k in ks:
        if not 1 <= k <= ranked.shape[1]:
            raise ValueError(f"cut-off k={k} must lie in [1, {ranked.shape[1]}] (hits per query)")
        out[f"p@{k}"] = float(relevant[:, :k].sum(1).mean() / k)
    return out


def precision_at_k(
    similarity: ArrayLike, query_labels: ArrayLike, gallery_labels: ArrayLike, ks: Sequence[int]
) -> dict[str, float]:
    """P@K of a similarity matrix, relevance = same label, ties broken by the lower gallery index.

    Args:
        similarity: `[Q, G]`.
        query_labels: `[Q]`; gallery_labels: `[G]` (ints or class names).
        ks: cut-offs, each at most G.
    """
    sim = as_float_tensor(similarity, "similarity", 2)
    q, g = _encode_labels(query_labels, gallery_labels)
    if sim.shape != (len(q), len(g)):
        raise ValueError(f"`similarity` must be [Q={len(q)}, G={len(g)}]; got shape {tuple(sim.shape)}")
    if not ks:
        raise ValueError("`ks` must hold at least one cut-off")
    top = ranked_indices(sim, max(ks)).numpy()
    return precision_at_k_from_ranked_labels(g[top], q, ks)


def retrieval_precision(
    query_embeds: ArrayLike,
    gallery_embeds: ArrayLike,
    query_labels: ArrayLike,
    gallery_labels: ArrayLike,
    ks: Sequence[int],
) -> dict[str, float]:
    """P@K by cosine between L2-normalised query `[Q, P]` and gallery `[G, P]` embeddings."""
    qe = l2_normalize(as_float_tensor(query_embeds, "query_embeds", 2))
    ge = l2_normalize(as_float_tensor(gallery_embeds, "gallery_embeds", 2))
    if qe.shape[1] != ge.shape[1]:
        raise ValueError(f"embedding sizes differ: queries {tuple(qe.shape)}, gallery {tuple(ge.shape)}")
    return precision_at_k(qe @ ge.to(qe.dtype).T, query_labels, gallery_labels, ks)


def image_to_text_precision(
    image_embeds: ArrayLike,
    text_embeds: ArrayLike,
    image_labels: ArrayLike,
    text_labels: ArrayLike | None = None,
    ks: Sequence[int] = IMAGE_TO_TEXT_KS,
) -> dict[str, float]:
    """CheXpert 5x200 image-to-text P@5/10/100: image queries against all reports (each query's own report is in
    the pool). `text_labels` defaults to `image_labels` (one report per image, same order)."""
    return retrieval_precision(
        image_embeds, text_embeds, image_labels, image_labels if text_labels is None else text_labels, ks
    )


def text_to_image_precision(
    text_embeds: ArrayLike,
    image_embeds: ArrayLike,
    text_labels: ArrayLike,
    image_labels: ArrayLike,
    ks: Sequence[int] = TEXT_TO_IMAGE_KS,
) -> dict[str, float]:
    """CheXpert 8x200 text-to-image P@5/10/50: text queries against candidate images."""
    return retrieval_precision(text_embeds, image_embeds, text_labels, image_labels, ks)


def image_to_image_precision(
    query_embeds: ArrayLike,
    gallery_embeds: ArrayLike,
    query_labels: ArrayLike,
    gallery_labels: ArrayLike,
    ks: Sequence[int] = IMAGE_TO_IMAGE_KS,
) -> dict[str, float]:
    """CheXpert 8x200 image-to-image P@5/10/50: query images against candidate images."""
    return retrieval_precision(query_embeds, gallery_embeds, query_labels, gallery_labels, ks)


def precision_at_k_from_topk(
    result: TopKResult | torch.Tensor | np.ndarray,
    query_labels: Any,
    gallery_labels: Any,
    ks: Sequence[int],
) -> dict[str, float]:
    """P@K (relevance = same label) from top-k results, in memory.

    Args:
        result: a `TopKResult` (`inference.search`) or `[Q, K]` gallery indices, best first, with K >= max(ks).
        query_labels: `[Q]`; gallery_labels: `[G]` (ints or class names), indexed by gallery position.
        ks: the cut-offs.

    Returns:
        `{"p@K": float}`.
    """
    indices = result.indices if isinstance(result, TopKResult) else result
    indices = indices.cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
    gallery = np.asarray(gallery_labels)
    if indices.size and (indices.min() < 0 or indices.max() >= len(gallery)):
        raise ValueError(f"top-k indices reach {indices.max()}, but `gallery_labels` has {len(gallery)} entries")
    return precision_at_k_from_ranked_labels(gallery[indices], np.asarray(query_labels), ks)


__all__ = [
    "IMAGE_TO_IMAGE_KS",
    "IMAGE_TO_TEXT_KS",
    "RSNA_THRESHOLDS",
    "TEXT_TO_IMAGE_KS",
    "binary_classification_metrics",
    "confusion_matrix",
    "image_to_image_precision",
    "image_to_text_precision",
    "precision_at_k",
    "precision_at_k_from_topk",
    "precision_at_k_from_ranked_labels",
    "ranked_indices",
    "retrieval_precision",
    "roc_auc",
    "rsna_zero_shot_metrics",
    "rsna_zero_shot_scores",
    "search_threshold",
    "stratified_kfold",
    "text_to_image_precision",
    "zero_shot_accuracy",
]
