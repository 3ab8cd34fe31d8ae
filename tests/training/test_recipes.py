"""The shipped recipes: same keys, the reference values, presets that exist, numbers parsed as numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from configuration import list_presets


RECIPE_DIR = Path(__file__).resolve().parents[2] / "configuration" / "recipes"
KEYS = {
    "preset", "model_name_or_path", "train_csv", "image_root", "dataset_path", "output_dir",
    "per_device_train_batch_size", "base_learning_rate", "weight_decay", "adam_beta1", "adam_beta2",
    "warmup_epochs", "schedule_epochs", "max_epochs", "max_steps", "mask_ratio", "mlm_probability", "norm_pix_loss",
    "mixed_precision", "gradient_accumulation_steps", "max_grad_norm", "checkpointing_steps",
    "checkpoints_total_limit", "seed", "adapter", "report_to",
}  # fmt: skip


def _load(name: str) -> dict:
    return yaml.safe_load((RECIPE_DIR / name).read_text())


@pytest.mark.parametrize("name", ["align-mimic-cxr.yaml", "align-smoke.yaml"])
def test_recipe_keys_and_types(name: str):
    recipe = _load(name)
    assert set(recipe) == KEYS
    assert recipe["preset"] in list_presets()
    assert recipe["adapter"] in ("alta", "lora", "ia3", "full", "mae")
    # PyYAML reads "5e-5" (no dot) as a string: every float field must come back as a number.
    for key in ("base_learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "mask_ratio", "mlm_probability"):
        assert isinstance(recipe[key], float), (key, recipe[key])


def test_mimic_recipe_is_the_reference():
    recipe = _load("align-mimic-cxr.yaml")
    expected = {
        "per_device_train_batch_size": 24, "gradient_accumulation_steps": 1, "base_learning_rate": 1.5e-4,
        "weight_decay": 0.05, "adam_beta1": 0.9, "adam_beta2": 0.95, "warmup_epochs": 10, "schedule_epochs": 100,
        "max_epochs": 30, "max_steps": None, "mask_ratio": 0.75, "mlm_probability": 0.5, "norm_pix_loss": True,
        "mixed_precision": "fp16", "max_grad_norm": None, "seed": 0, "adapter": "alta", "preset": "alta-base",
    }  # fmt: skip
    assert {k: recipe[k] for k in expected} == expected
    # 4 GPUs: peak lr 5.625e-5; at the 30-epoch stop the cosine sits at ~0.883 x peak.
    peak = recipe["base_learning_rate"] * recipe["per_device_train_batch_size"] * 4 / 256
    assert math.isclose(peak, 5.625e-5)
    w, s, m = recipe["warmup_epochs"], recipe["schedule_epochs"], recipe["max_epochs"]
    assert math.isclose(0.5 * (1 + math.cos(math.pi * (m - w) / (s - w))), 0.883, abs_tol=1e-3)
