"""ALTA as a transformers model. Importing this package registers the classes with the Auto* factories.

This ``__init__`` is never shipped to the Hub; the files beside it are, and they import each other only as
``from .x import Y`` so that ``save_pretrained`` can copy them as custom code.
"""

from .configuration_alta import AltaAdapterConfig, AltaConfig, AltaTextConfig, AltaVisionConfig


__all__ = ["AltaAdapterConfig", "AltaConfig", "AltaTextConfig", "AltaVisionConfig"]
