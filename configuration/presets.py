"""Named model presets (the open_clip ``model_configs`` idea): JSON files in ``configuration/presets``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modeling_alta.configuration_alta import AltaConfig


PRESET_DIR = Path(__file__).resolve().parent / "presets"


def list_presets() -> list[str]:
    """Names accepted by :func:`load_preset`."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def preset_dict(name: str) -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"Unknown preset {name!r}; available presets: {list_presets()}")
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def load_preset(name: str, **overrides: Any) -> AltaConfig:
    """Build an :class:`AltaConfig` from a named preset; keyword overrides replace top-level fields.

    Example: ``load_preset("alta-tiny", contrastive_loss_weight=0.0)``.
    """
    data = preset_dict(name)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return AltaConfig(**data)
