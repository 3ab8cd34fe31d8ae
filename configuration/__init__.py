"""Presets and recipes. The config classes are defined in ``modeling_alta`` (they ship to the Hub) and re-exported."""

from modeling_alta.configuration_alta import AltaAdapterConfig, AltaConfig, AltaTextConfig, AltaVisionConfig

from .presets import list_presets, load_preset, preset_dict


__all__ = [
    "AltaAdapterConfig",
    "AltaConfig",
    "AltaTextConfig",
    "AltaVisionConfig",
    "list_presets",
    "load_preset",
    "preset_dict",
]
