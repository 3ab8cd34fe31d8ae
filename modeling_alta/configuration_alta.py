# Copyright 2026 The alta developers. Licensed under the Apache License, Version 2.0.
"""Configuration classes for ALTA (ALign Through Adapting).

This file is copied next to the weights by ``save_pretrained`` and loaded as Hub custom code, so it imports only
``transformers`` and the standard library.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from transformers import PretrainedConfig
from transformers.utils import logging


logger = logging.get_logger(__name__)

ADAPTER_PLACEMENTS = ("attn", "mlp")
ADAPTER_TOWERS = ("vision", "text")
# Parameter groups that train together with the adapters. The default is the reference's trainable set
# (alta_reference.md §4): every LayerNorm, the four projection heads, the MLM transform and bias, the logit
# scales, the CLS/mask tokens, the view/time embeddings and the MAE decoder's input and output projections.
TRAINABLE_GROUPS = (
    "adapters",
    "norms",
    "heads",
    "logit_scales",
    "tokens",
    "view_time_embeddings",
    "decoder_embed",
    "decoder_pred",
    "mlm_head",
)
STUDY_POOLING_MODES = ("all", "present")
# The study vocabulary, defined here once and imported everywhere (this file ships to the Hub with the model).
# A *view kind* is frontal or lateral; a *time point* is current or prior; a *slot* is one (view kind, time point)
# position of a study, ordered view-fastest. A study holds at most one image per slot.
VIEW_KINDS = ("frontal", "lateral")
TIME_POINTS = ("current", "prior")
STUDY_SLOTS = ("frontal", "lateral", "prior_frontal", "prior_lateral")
FRAME_POOLING_MODES = ("cls", "mean")


def _is_hub_repo_id(name: str) -> bool:
    """True when `name` can be a Hub repository id (`repo` or `namespace/repo`); a path-like name cannot."""
    if os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name or name.count("/") > 1:
        return False
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except Exception:  # HFValidationError, or huggingface_hub without the helper
        return False
    return True


def check_pretrained_source(name: Any, what: str = "model") -> None:
    """Refuse a `from_pretrained` source that is meant as a local folder but does not exist.

    Without this, a mistyped path reaches the Hub client and fails with `HFValidationError: Repo id must be in the
    form ...`, which does not say that the folder is missing.

    Raises:
        FileNotFoundError: naming the folder (and its absolute path) and saying the Hub was not searched.
    """
    if not isinstance(name, (str, os.PathLike)):
        return
    text = os.fspath(name)
    if os.path.exists(os.path.expanduser(text)) or _is_hub_repo_id(text):
        return
    raise FileNotFoundError(
        f"{what} folder {text!r} does not exist ({os.path.abspath(os.path.expanduser(text))}); the name is not a "
        "Hub repository id either, so the Hub was not searched."
    )


def not_found_anywhere(name: Any, what: str, err: Exception) -> Exception:
    """The error for a repository-id-shaped name that is neither a local folder nor found on the Hub (or `err`
    itself when `name` exists locally: then the failure is about its content)."""
    if getattr(err, "_alta_not_found", False) or not isinstance(name, (str, os.PathLike)):
        return err  # already explained (a config loaded inside a model's from_pretrained)
    text = os.fspath(name)
    if os.path.exists(os.path.expanduser(text)):
        return err
    error = FileNotFoundError(
        f"{what} {text!r}: there is no local folder of that name ({os.path.abspath(text)}), and it was not found on "
        f"the Hub either: {err}"
    )
    error._alta_not_found = True
    return error


@dataclass
class AltaAdapterConfig:
    """Settings of ALTA's bottleneck adapters (AIM-style), and of the parameter groups that train with them.

    Each adapter is ``Linear(hidden -> bottleneck) -> act -> Linear(bottleneck -> hidden)``. The attention adapter is
    serial with an internal skip, ``A(y) = y + up(act(down(y)))``; the MLP adapter is parallel to the MLP, fed the
    MLP's input, and scaled by ``mlp_scale``.

    Example:

    ```python
    >>> from modeling_alta import AltaAdapterConfig, AltaConfig
    >>> config = AltaConfig(adapter_config=AltaAdapterConfig(bottleneck_ratio=0.125, towers=("vision",)))
    ```
    """

    bottleneck_ratio: float = field(
        default=0.25, metadata={"help": "Bottleneck width as a fraction of the hidden size (int(hidden * ratio))."}
    )
    bottleneck_size: int | None = field(
        default=None, metadata={"help": "Explicit bottleneck width; overrides `bottleneck_ratio` when set."}
    )
    act: str = field(default="gelu", metadata={"help": "Activation between the two projections (exact GELU)."})
    mlp_scale: float = field(default=0.5, metadata={"help": "Scale of the parallel MLP adapter's output."})
    zero_init_up: bool = field(
        default=True, metadata={"help": "Zero-initialise the up-projection so a fresh adapter is an identity."}
    )
    placement: tuple[str, ...] = field(
        default=ADAPTER_PLACEMENTS, metadata={"help": "Where adapters go inside a block: 'attn', 'mlp' or both."}
    )
    layers: tuple[int, ...] | None = field(
        default=None, metadata={"help": "Indices of the blocks that get adapters; None means every block."}
    )
    towers: tuple[str, ...] = field(
        default=ADAPTER_TOWERS, metadata={"help": "Which towers get adapters: 'vision', 'text' or both."}
    )
    trainable_groups: tuple[str, ...] = field(
        default=TRAINABLE_GROUPS,
        metadata={"help": f"Parameter groups that train with the adapters; any of {TRAINABLE_GROUPS}."},
    )

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; keep one canonical type.
        self.placement = tuple(self.placement)
        self.towers = tuple(self.towers)
        self.trainable_groups = tuple(self.trainable_groups)
        if self.layers is not None:
            self.layers = tuple(int(i) for i in self.layers)
        if not 0.0 < self.bottleneck_ratio <= 4.0:
            raise ValueError(f"`bottleneck_ratio` must be in (0, 4]; got {self.bottleneck_ratio}.")
        if self.bottleneck_size is not None and self.bottleneck_size < 1:
            raise ValueError(f"`bottleneck_size` must be a positive integer; got {self.bottleneck_size}.")
        bad = [p for p in self.placement if p not in ADAPTER_PLACEMENTS]
        if bad:
            raise ValueError(f"`placement` entries must be in {ADAPTER_PLACEMENTS}; got {list(self.placement)}.")
        bad = [t for t in self.towers if t not in ADAPTER_TOWERS]
        if bad:
            raise ValueError(f"`towers` entries must be in {ADAPTER_TOWERS}; got {list(self.towers)}.")
        bad = [g for g in self.trainable_groups if g not in TRAINABLE_GROUPS]
        if bad:
            raise ValueError(f"Unknown `trainable_groups` {bad}; choose from {TRAINABLE_GROUPS}.")
        if self.layers is not None and any(i < 0 for i in self.layers):
            raise ValueError(f"`layers` must hold non-negative block indices; got {list(self.layers)}.")

    def hidden_size_for(self, hidden_size: int) -> int:
        """Bottleneck width for a tower of width `hidden_size` (the reference uses ``int(hidden * 0.25)``)."""
        if self.bottleneck_size is not None:
            return self.bottleneck_size
        return max(1, int(hidden_size * self.bottleneck_ratio))

    def applies_to(self, layer_index: int) -> bool:
        return self.layers is None or layer_index in self.layers

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | AltaAdapterConfig | None) -> AltaAdapterConfig:
        if data is None:
            return cls()
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise TypeError(f"`adapter_config` must be a dict or AltaAdapterConfig; got {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown adapter config keys {unknown}; known keys are {sorted(known)}.")
        return cls(**data)


def _adapter_dict(value: dict | AltaAdapterConfig | str | None) -> dict | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value != "reference":
            raise ValueError(
                f"`adapter_config` must be a dict, AltaAdapterConfig, 'reference' or None; got {value!r}."
            )
        return AltaAdapterConfig().to_dict()
    return AltaAdapterConfig.from_dict(value).to_dict()


def _check_heads(name: str, hidden_size: int, num_heads: int) -> None:
    if hidden_size <= 0 or num_heads <= 0:
        raise ValueError(f"{name}: hidden size and heads must be positive; got {hidden_size} and {num_heads}.")
    if hidden_size % num_heads != 0:
        raise ValueError(
            f"{name}: the hidden size ({hidden_size}) is not a multiple of the number of attention heads "
            f"({num_heads})."
        )


class AltaVisionConfig(PretrainedConfig):
    r"""Configuration of ALTA's vision tower: an MRM-pretrained ViT with per-block adapters, slot (view/time)
    embeddings, a missing-view token, and the MAE decoder used for masked image reconstruction.

    Args:
        hidden_size (`int`, *optional*, defaults to 768):
            Width of the ViT encoder.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of ViT blocks.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Attention heads per block.
        intermediate_size (`int`, *optional*, defaults to 3072):
            Width of the MLP inside each block.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            MLP activation (exact GELU, as timm's ViT).
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            LayerNorm epsilon of the encoder and decoder.
        image_size (`int`, *optional*, defaults to 224):
            Training resolution of the encoder; other sizes divisible by `patch_size` work at inference.
        patch_size (`int`, *optional*, defaults to 16):
            Side of a square patch.
        num_channels (`int`, *optional*, defaults to 3):
            Input channels (grayscale radiographs are replicated to three).
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Whether the fused qkv projection has a bias.
        num_view_kinds (`int`, *optional*, defaults to 2):
            View kinds per time point (frontal, lateral); the rows of `view_embedding`. (Older configs call it
            `num_views`; that key is still read.)
        num_times (`int`, *optional*, defaults to 2):
            Time points (current, prior); the rows of `temporal_embedding`. A study has `num_slots =
            num_view_kinds * num_times` slots, ordered view-fastest: `STUDY_SLOTS` = frontal, lateral,
            prior_frontal, prior_lateral.
        pooling (`str`, *optional*, defaults to `"cls"`):
            How one frame becomes one embedding: its `"cls"` token (the reference, and what MRM/ALTA weights are
            trained with) or the `"mean"` of its patch tokens (MAE's `global_pool`; a short masked-image
            pre-training leaves the CLS token nearly untrained, so small backbones built from scratch align faster
            from the patch mean).
        study_pooling (`str`, *optional*, defaults to `"all"`):
            How a study's slot CLS tokens become one embedding: `"all"` averages every slot, missing views
            included (what ALTA is trained with); `"present"` averages the present slots only.
        mask_ratio (`float`, *optional*, defaults to 0.75):
            Fraction of patches removed per frame during pre-training (0 keeps every patch: no reconstruction loss
            then, e.g. a contrastive-only run).
        decoder_hidden_size (`int`, *optional*, defaults to 768):
            Width of the MAE decoder.
        decoder_num_hidden_layers (`int`, *optional*, defaults to 4):
            Decoder blocks.
        decoder_num_attention_heads (`int`, *optional*, defaults to 6):
            Decoder attention heads.
        decoder_intermediate_size (`int`, *optional*, defaults to 3072):
            Width of the decoder MLP.
        reconstruction_image_size (`int`, *optional*, defaults to 448):
            Side of the frontal image the decoder reconstructs.
        reconstruction_patch_size (`int`, *optional*, defaults to 32):
            Patch side of the reconstruction target; `reconstruction_image_size / reconstruction_patch_size` must
            equal `image_size / patch_size`.
        norm_pix_loss (`bool`, *optional*, defaults to `True`):
            Normalise each target patch by its mean and unbiased variance (MAE's `norm_pix_loss`).
        adapter_config (`dict`, *optional*):
            [`AltaAdapterConfig`] as a dict; `"reference"` (the default) gives the reference adapters, `None` builds
            the tower without adapters.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Std of the normal init of tokens that are not zero-initialised.

    Example:

    ```python
    >>> from modeling_alta import AltaVisionConfig
    >>> config = AltaVisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
    ```
    """

    model_type = "alta_vision_model"
    base_config_key = "vision_config"

    def __init__(
        self,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-6,
        image_size: int = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        qkv_bias: bool = True,
        num_view_kinds: int = 2,
        num_times: int = 2,
        study_pooling: str = "all",
        pooling: str = "cls",
        mask_ratio: float = 0.75,
        decoder_hidden_size: int = 768,
        decoder_num_hidden_layers: int = 4,
        decoder_num_attention_heads: int = 6,
        decoder_intermediate_size: int = 3072,
        reconstruction_image_size: int = 448,
        reconstruction_patch_size: int = 32,
        norm_pix_loss: bool = True,
        adapter_config: dict | AltaAdapterConfig | str | None = "reference",
        initializer_range: float = 0.02,
        attention_dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        num_view_kinds = kwargs.pop("num_views", num_view_kinds)  # the key's name before 0.2
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.qkv_bias = qkv_bias
        self.num_view_kinds = num_view_kinds
        self.num_times = num_times
        self.study_pooling = study_pooling
        self.pooling = pooling
        self.mask_ratio = mask_ratio
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_hidden_layers = decoder_num_hidden_layers
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.decoder_intermediate_size = decoder_intermediate_size
        self.reconstruction_image_size = reconstruction_image_size
        self.reconstruction_patch_size = reconstruction_patch_size
        self.norm_pix_loss = norm_pix_loss
        self.adapter_config = _adapter_dict(adapter_config)
        self.initializer_range = initializer_range
        self.attention_dropout = attention_dropout
        self._validate()

    def _validate(self) -> None:
        _check_heads("AltaVisionConfig", self.hidden_size, self.num_attention_heads)
        _check_heads("AltaVisionConfig decoder", self.decoder_hidden_size, self.decoder_num_attention_heads)
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be divisible by `patch_size` ({self.patch_size})."
            )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"`mask_ratio` must be in [0, 1); got {self.mask_ratio}.")
        if self.reconstruction_image_size % self.reconstruction_patch_size != 0:
            raise ValueError(
                f"`reconstruction_image_size` ({self.reconstruction_image_size}) must be divisible by "
                f"`reconstruction_patch_size` ({self.reconstruction_patch_size})."
            )
        if self.reconstruction_image_size // self.reconstruction_patch_size != self.image_size // self.patch_size:
            raise ValueError(
                "The reconstruction grid must match the encoder grid: "
                f"{self.reconstruction_image_size}/{self.reconstruction_patch_size} != "
                f"{self.image_size}/{self.patch_size}."
            )
        if self.study_pooling not in STUDY_POOLING_MODES:
            raise ValueError(f"`study_pooling` must be one of {STUDY_POOLING_MODES}; got {self.study_pooling!r}.")
        if self.pooling not in FRAME_POOLING_MODES:
            raise ValueError(f"`pooling` must be one of {FRAME_POOLING_MODES}; got {self.pooling!r}.")
        if self.num_view_kinds < 1 or self.num_times < 1:
            raise ValueError(
                f"`num_view_kinds` and `num_times` must be >= 1; got {self.num_view_kinds}, {self.num_times}."
            )
        if self.num_slots > len(STUDY_SLOTS):
            raise ValueError(
                f"`num_view_kinds * num_times` must be at most {len(STUDY_SLOTS)} (the slots {STUDY_SLOTS}); got "
                f"{self.num_view_kinds} * {self.num_times}."
            )

    @property
    def num_slots(self) -> int:
        """Slots per study: ``num_view_kinds * num_times`` (4: `STUDY_SLOTS`)."""
        return self.num_view_kinds * self.num_times

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def adapter(self) -> AltaAdapterConfig | None:
        return None if self.adapter_config is None else AltaAdapterConfig.from_dict(self.adapter_config)


class AltaTextConfig(PretrainedConfig):
    r"""Configuration of ALTA's text tower: a BERT encoder (CXR-BERT sizes) with per-layer adapters and an MLM head.

    Args:
        vocab_size (`int`, *optional*, defaults to 30522):
            WordPiece vocabulary size (CXR-BERT's).
        hidden_size (`int`, *optional*, defaults to 768):
            Width of the encoder.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of BERT layers.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Attention heads per layer.
        intermediate_size (`int`, *optional*, defaults to 3072):
            Feed-forward width.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Feed-forward activation.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.25):
            Dropout on embeddings and sub-layer outputs (CXR-BERT-specialized uses 0.25).
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.25):
            Dropout on attention probabilities.
        max_position_embeddings (`int`, *optional*, defaults to 512):
            Learned absolute positions.
        type_vocab_size (`int`, *optional*, defaults to 2):
            Token-type (segment) embeddings.
        layer_norm_eps (`float`, *optional*, defaults to 1e-12):
            LayerNorm epsilon.
        pad_token_id (`int`, *optional*, defaults to 0):
            Id of `[PAD]`.
        pooling (`str`, *optional*, defaults to `"cls"`):
            Global text embedding: the `[CLS]` state (`"cls"`, as ALTA with CXR-BERT, whose `[CLS]` is trained) or the
            mean of the non-padding token states (`"mean"`, for a text tower whose `[CLS]` never was, e.g. one
            pre-trained by masked language modeling alone).
        adapter_config (`dict`, *optional*):
            [`AltaAdapterConfig`] as a dict; `"reference"` (the default) gives the reference adapters, `None` builds
            the tower without adapters.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Std of the normal init.

    Example:

    ```python
    >>> from modeling_alta import AltaTextConfig
    >>> config = AltaTextConfig(vocab_size=421, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    ```
    """

    model_type = "alta_text_model"
    base_config_key = "text_config"

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.25,
        attention_probs_dropout_prob: float = 0.25,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        pooling: str = "cls",
        adapter_config: dict | AltaAdapterConfig | str | None = "reference",
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        # Configs saved before 0.2 carry the report length here. It is a tokenizer setting (the processor's
        # `tokenizer.model_max_length`, saved with it), and transformers 5 reads `max_length` in a model config as a
        # generation setting and refuses to save it: the old key is read and dropped.
        legacy_max_length = kwargs.pop("max_length", None)
        if legacy_max_length is not None:
            logger.info(
                f"AltaTextConfig: ignoring the legacy `max_length={legacy_max_length}`; the text length is the "
                "processor's (`processor.tokenizer.model_max_length`)."
            )
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.layer_norm_eps = layer_norm_eps
        self.pooling = pooling
        self.adapter_config = _adapter_dict(adapter_config)
        self.initializer_range = initializer_range
        self._validate()

    def _validate(self) -> None:
        _check_heads("AltaTextConfig", self.hidden_size, self.num_attention_heads)
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"`pooling` must be 'cls' or 'mean'; got {self.pooling!r}.")
        if self.vocab_size < 5:
            raise ValueError(f"`vocab_size` must hold at least the 5 special tokens; got {self.vocab_size}.")

    @property
    def adapter(self) -> AltaAdapterConfig | None:
        return None if self.adapter_config is None else AltaAdapterConfig.from_dict(self.adapter_config)


class AltaConfig(PretrainedConfig):
    r"""Configuration of the full ALTA model: vision and text towers, the four projection heads and the
    temperatures of the global and local contrastive losses.

    Args:
        vision_config (`dict` or [`AltaVisionConfig`], *optional*):
            Vision tower settings.
        text_config (`dict` or [`AltaTextConfig`], *optional*):
            Text tower settings.
        adapter_config (`dict` or [`AltaAdapterConfig`], *optional*):
            Adapter settings. When given, they are written into the tower configs listed in its `towers` (and
            removed from the others); when omitted, each tower keeps its own (the reference adapters by default).
        projection_dim (`int`, *optional*, defaults to 128):
            Size of the joint embedding space.
        projection_layer_norm_eps (`float`, *optional*, defaults to 1e-12):
            LayerNorm epsilon inside the projection heads.
        logit_scale_init_value (`float`, *optional*, defaults to ln(1/0.07)):
            Initial value of the global and the three local temperatures (log scale).
        logit_scale_max (`float`, *optional*, defaults to ln(100)):
            Upper clamp of the log temperatures, applied after each optimizer step.
        contrastive_loss_weight, local_loss_weight, reconstruction_loss_weight, mlm_loss_weight (`float`, *optional*, defaults to 1.0):
            Weights of the four pre-training losses; a weight of 0 skips that loss entirely.
        local_loss_chunk_size (`int`, *optional*, defaults to 32):
            Texts per chunk in the vectorised local loss (bounds its memory to about
            `images x chunk x patches x words` floats).

    Example:

    ```python
    >>> from modeling_alta import AltaConfig, AltaModel
    >>> config = AltaConfig()  # alta-base: ViT-B/16 + CXR-BERT-base, 128-d projections
    >>> model = AltaModel(config)
    ```
    """

    model_type = "alta"
    sub_configs = {"vision_config": AltaVisionConfig, "text_config": AltaTextConfig}

    def __init__(
        self,
        vision_config: dict | AltaVisionConfig | None = None,
        text_config: dict | AltaTextConfig | None = None,
        adapter_config: dict | AltaAdapterConfig | None = None,
        projection_dim: int = 128,
        projection_layer_norm_eps: float = 1e-12,
        logit_scale_init_value: float = math.log(1 / 0.07),
        logit_scale_max: float = math.log(100.0),
        contrastive_loss_weight: float = 1.0,
        local_loss_weight: float = 1.0,
        reconstruction_loss_weight: float = 1.0,
        mlm_loss_weight: float = 1.0,
        local_loss_chunk_size: int = 32,
        tie_word_embeddings: bool = True,
        **kwargs: Any,
    ) -> None:
        vision_config = self._sub_config(vision_config, AltaVisionConfig, "vision_config")
        text_config = self._sub_config(text_config, AltaTextConfig, "text_config")
        if adapter_config is not None:
            adapter = AltaAdapterConfig.from_dict(adapter_config)
            vision_config.adapter_config = adapter.to_dict() if "vision" in adapter.towers else None
            text_config.adapter_config = adapter.to_dict() if "text" in adapter.towers else None
        self.vision_config = vision_config
        self.text_config = text_config
        self.projection_dim = projection_dim
        self.projection_layer_norm_eps = projection_layer_norm_eps
        self.logit_scale_init_value = logit_scale_init_value
        self.logit_scale_max = logit_scale_max
        self.contrastive_loss_weight = contrastive_loss_weight
        self.local_loss_weight = local_loss_weight
        self.reconstruction_loss_weight = reconstruction_loss_weight
        self.mlm_loss_weight = mlm_loss_weight
        self.local_loss_chunk_size = local_loss_chunk_size
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        if projection_dim < 1:
            raise ValueError(f"`projection_dim` must be positive; got {projection_dim}.")
        if local_loss_chunk_size < 1:
            raise ValueError(f"`local_loss_chunk_size` must be positive; got {local_loss_chunk_size}.")
        weights = {
            "contrastive_loss_weight": contrastive_loss_weight,
            "local_loss_weight": local_loss_weight,
            "reconstruction_loss_weight": reconstruction_loss_weight,
            "mlm_loss_weight": mlm_loss_weight,
        }
        negative = {k: v for k, v in weights.items() if v < 0}
        if negative:
            raise ValueError(f"Loss weights must be >= 0; got {negative}.")

    @staticmethod
    def _sub_config(value: Any, cls: type, name: str) -> PretrainedConfig:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != "model_type"}
            return cls(**value)
        raise TypeError(f"`{name}` must be a dict or {cls.__name__}; got {type(value).__name__}.")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> AltaConfig:
        """`PretrainedConfig.from_pretrained`, with a clear error for a local folder that does not exist."""
        check_pretrained_source(pretrained_model_name_or_path, "model")
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except OSError as err:
            explained = not_found_anywhere(pretrained_model_name_or_path, "model", err)
            if explained is err:
                raise
            raise explained from err

    @property
    def adapter(self) -> AltaAdapterConfig | None:
        """The adapter settings in force (the vision tower's, else the text tower's); `None` without adapters."""
        return self.vision_config.adapter or self.text_config.adapter

    @property
    def trainable_groups(self) -> tuple[str, ...]:
        adapter = self.adapter
        return adapter.trainable_groups if adapter is not None else TRAINABLE_GROUPS


__all__ = [
    "check_pretrained_source",
    "not_found_anywhere",
    "STUDY_SLOTS",
    "TIME_POINTS",
    "VIEW_KINDS",
    "AltaAdapterConfig",
    "AltaConfig",
    "AltaTextConfig",
    "AltaVisionConfig",
]
