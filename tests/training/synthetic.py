"""Small synthetic study datasets written to disk for training tests (PNG files + a `datasets` folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


FINDINGS = [
    "There is a small left pleural effusion.",
    "The heart is enlarged.",
    "Patchy consolidation in the right lower lobe.",
    "No acute cardiopulmonary process.",
    "Mild pulmonary edema is present.",
    "Bibasilar atelectasis is seen.",
]


def write_studies(root: Path, n: int = 8, size: int = 48, seed: int = 0, corrupt: tuple[int, ...] = ()) -> list[dict]:
    """Write `n` studies (frontal always; lateral and priors for some) and return rows with absolute paths.

    Studies whose index is in `corrupt` get a truncated frontal PNG (an unreadable file).
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        row: dict = {"study_id": f"s{i}", "subject_id": f"p{i // 2}"}
        for view in ("frontal", "lateral", "prior_frontal", "prior_lateral"):
            present = (
                view == "frontal" or (view == "lateral" and i % 2 == 0) or (view.startswith("prior") and i % 3 == 0)
            )
            if not present:
                row[view] = None
                continue
            pixels = (rng.random((size, size)) * 255).astype(np.uint8)
            pixels[size // 4 : 3 * size // 4, (i % 4) * size // 4 : (i % 4 + 1) * size // 4] = 255
            path = root / f"{i}_{view}.png"
            Image.fromarray(pixels, mode="L").save(path)
            if view == "frontal" and i in corrupt:
                path.write_bytes(path.read_bytes()[:40])
            row[view] = str(path)
        row["report"] = " ".join(FINDINGS[(i + k) % len(FINDINGS)] for k in range(2))
        rows.append(row)
    return rows


def write_dataset(root: Path, n: int = 8, **kwargs) -> Path:
    from processing.datasets import dataset_from_rows, save_study_dataset

    rows = write_studies(root / "images", n=n, **kwargs)
    return save_study_dataset(dataset_from_rows(rows), root / "dataset")
