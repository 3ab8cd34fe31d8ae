"""ALTA as a transformers model. Importing this package registers the classes with the Auto* factories.

This ``__init__`` is never shipped to the Hub; the files beside it are, and they import each other only as
``from .x import Y`` so that ``save_pretrained`` can copy them as custom code.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

from .configuration_alta import AltaAdapterConfig, AltaConfig, AltaTextConfig, AltaVisionConfig
from .image_processing_alta import AltaImageProcessor
from .modeling_alta import (
    AltaForPreTraining,
    AltaForPreTrainingOutput,
    AltaModel,
    AltaOutput,
    AltaPreTrainedModel,
    AltaTextModel,
    AltaVisionModel,
    alta_contrastive_loss,
    alta_local_loss,
    alta_local_similarity,
    alta_mlm_loss,
    alta_reconstruction_loss,
)
from .processing_alta import AltaProcessor


def _register() -> None:
    for model_type, config_class in (
        ("alta", AltaConfig),
        ("alta_vision_model", AltaVisionConfig),
        ("alta_text_model", AltaTextConfig),
    ):
        try:
            AutoConfig.register(model_type, config_class)
        except ValueError:  # already registered (re-import)
            pass
    for factory, config_class, model_class in (
        (AutoModel, AltaConfig, AltaModel),
        (AutoModel, AltaVisionConfig, AltaVisionModel),
        (AutoModel, AltaTextConfig, AltaTextModel),
        (AutoModelForPreTraining, AltaConfig, AltaForPreTraining),
        (AutoModelForZeroShotImageClassification, AltaConfig, AltaModel),
    ):
        try:
            factory.register(config_class, model_class)
        except ValueError:
            pass
    AutoImageProcessor.register(AltaConfig, image_processor_classes={"pil": AltaImageProcessor}, exist_ok=True)
    AutoProcessor.register(AltaConfig, AltaProcessor, exist_ok=True)


_register()

__all__ = [
    "AltaAdapterConfig",
    "AltaConfig",
    "AltaForPreTraining",
    "AltaForPreTrainingOutput",
    "AltaImageProcessor",
    "AltaModel",
    "AltaOutput",
    "AltaPreTrainedModel",
    "AltaProcessor",
    "AltaTextConfig",
    "AltaTextModel",
    "AltaVisionConfig",
    "AltaVisionModel",
    "alta_contrastive_loss",
    "alta_local_loss",
    "alta_local_similarity",
    "alta_mlm_loss",
    "alta_reconstruction_loss",
]
