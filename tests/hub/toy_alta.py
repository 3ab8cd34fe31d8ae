"""A small stand-in for the ALTA model with the interface `AltaAdapterMixin` needs (used until, and beside, the real
model): `config` is a real `AltaConfig`, adapter modules carry `_is_alta_adapter = True`, `alta_trainable_parameters()`
follows `config.adapter.trainable_groups`, `set_adapters_enabled(bool)` bypasses the adapters, and the pre-training
class keeps the base model under `base_model_prefix = "alta"` plus a pre-training-only `decoder_pred`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from modeling_alta.adapters_alta import AltaAdapterMixin
from modeling_alta.configuration_alta import AltaAdapterConfig, AltaConfig


class ToyAdapter(nn.Module):
    _is_alta_adapter = True

    def __init__(self, hidden: int, config: AltaAdapterConfig) -> None:
        super().__init__()
        width = config.hidden_size_for(hidden)
        self.down = nn.Linear(hidden, width)
        self.up = nn.Linear(width, hidden)
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.nn.functional.gelu(self.down(x))) if self.enabled else torch.zeros_like(x)


class ToyLayer(nn.Module):
    def __init__(self, hidden: int, adapter: AltaAdapterConfig | None, index: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        use = adapter is not None and adapter.applies_to(index)
        self.attn_adapter = ToyAdapter(hidden, adapter) if use and "attn" in adapter.placement else None
        self.mlp_adapter = ToyAdapter(hidden, adapter) if use and "mlp" in adapter.placement else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dense(self.norm(x))
        if self.attn_adapter is not None:
            h = h + self.attn_adapter(h)
        if self.mlp_adapter is not None:
            h = h + 0.5 * self.mlp_adapter(x)
        return x + h


class ToyTower(nn.Module):
    def __init__(self, sub_config) -> None:
        super().__init__()
        self.embed = nn.Linear(8, sub_config.hidden_size)
        self.layers = nn.ModuleList(
            ToyLayer(sub_config.hidden_size, sub_config.adapter, i) for i in range(sub_config.num_hidden_layers)
        )
        self.final_norm = nn.LayerNorm(sub_config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        return self.final_norm(h)


class ToyAltaPreTrainedModel(AltaAdapterMixin, PreTrainedModel):
    config_class = AltaConfig
    base_model_prefix = "alta"

    def _init_weights(self, module: nn.Module) -> None:
        pass  # keep torch's default init: non-zero adapters, so they change the outputs

    def alta_trainable_parameters(self) -> dict[str, nn.Parameter]:
        groups = self.config.trainable_groups
        out = {}
        for name, module in self.named_modules():
            take = (getattr(module, "_is_alta_adapter", False) and "adapters" in groups) or (
                isinstance(module, nn.LayerNorm) and "norms" in groups
            )
            take = take or ("head" in name.split(".")[-1] and "heads" in groups)
            take = take or (name == "decoder_pred" and "decoder_pred" in groups)
            if take:
                for pname, p in module.named_parameters():
                    out[f"{name}.{pname}"] = p
        return out

    def set_adapters_enabled(self, enabled: bool) -> None:
        for module in self.modules():
            if getattr(module, "_is_alta_adapter", False):
                module.enabled = enabled


class ToyAltaModel(ToyAltaPreTrainedModel):
    def __init__(self, config: AltaConfig) -> None:
        super().__init__(config)
        self.vision_model = ToyTower(config.vision_config)
        self.text_model = ToyTower(config.text_config)
        self.visual_projection_head = nn.Linear(config.vision_config.hidden_size, config.projection_dim)
        self.text_projection_head = nn.Linear(config.text_config.hidden_size, config.projection_dim)
        self.post_init()

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.visual_projection_head(self.vision_model(image)), self.text_projection_head(self.text_model(text))


class ToyAltaForPreTraining(ToyAltaPreTrainedModel):
    def __init__(self, config: AltaConfig) -> None:
        super().__init__(config)
        self.alta = ToyAltaModel(config)
        self.decoder_pred = nn.Linear(config.vision_config.hidden_size, 8)
        self.post_init()

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.alta(image, text)


def toy_config(**overrides) -> AltaConfig:
    """AltaConfig with 16-wide, 2-layer towers (adapter width 4)."""
    tower = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}
    kwargs = {
        "vision_config": {**tower, "decoder_hidden_size": 16, "decoder_num_attention_heads": 2},
        "text_config": {**tower, "vocab_size": 30},
        "projection_dim": 8,
        "adapter_config": {},
    }
    kwargs.update(overrides)
    return AltaConfig(**kwargs)


def toy_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
