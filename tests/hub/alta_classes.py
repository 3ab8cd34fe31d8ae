"""The ALTA model classes with `AltaAdapterMixin`, for the hub tests (and their child processes).

Once `AltaPreTrainedModel` inherits `AltaAdapterMixin` these are the package's own classes; until then thin test
subclasses add the mixin, so the adapter tests run against the real model either way.
"""

from __future__ import annotations

import torch

from configuration import load_preset
from modeling_alta import AltaForPreTraining as _AltaForPreTraining
from modeling_alta import AltaModel as _AltaModel
from modeling_alta.adapters_alta import AltaAdapterMixin


if issubclass(_AltaForPreTraining, AltaAdapterMixin):
    AltaForPreTraining, AltaModel = _AltaForPreTraining, _AltaModel
else:

    class AltaForPreTraining(AltaAdapterMixin, _AltaForPreTraining):  # type: ignore[no-redef]
        pass

    class AltaModel(AltaAdapterMixin, _AltaModel):  # type: ignore[no-redef]
        pass


def make_model(seed: int = 0, cls: type = AltaForPreTraining, **overrides):
    """A seeded alta-tiny model in eval mode (the text tower has dropout 0.25)."""
    torch.manual_seed(seed)
    return cls(load_preset("alta-tiny", **overrides)).eval()


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(5, 421, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return {"pixel_values": torch.randn(3, 3, 224, 224, generator=g), "input_ids": ids, "attention_mask": mask}


def features(model) -> torch.Tensor:
    """Image and text embeddings side by side, [3, 2 * projection_dim]."""
    base = getattr(model, "alta", model)
    x = inputs()
    with torch.no_grad():
        image = base.get_image_features(x["pixel_values"]).pooler_output
        text = base.get_text_features(x["input_ids"], attention_mask=x["attention_mask"]).pooler_output
    return torch.cat([image, text], dim=-1)


def train_adapter_set(model, seed: int) -> None:
    """Stand-in for training: move every value of the adapter set, nothing else."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.alta_trainable_parameters().values():
            p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.dtype))


# The same probe as source text, for children where this package cannot be imported (remote-code checks).
TINY_PROBE = """
def probe(model):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(5, 421, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    pixel_values = torch.randn(3, 3, 224, 224, generator=g)
    base = getattr(model, "alta", model)
    with torch.no_grad():
        return torch.cat(
            [
                base.get_image_features(pixel_values).pooler_output,
                base.get_text_features(ids, attention_mask=mask).pooler_output,
            ],
            dim=-1,
        )
"""
