# Copyright 2026 The alta developers. Licensed under the Apache License, Version 2.0.
"""ALTA adapters as shareable artifacts: save, load, switch, disable and push the *adapter set* alone.

ALTA's bottleneck adapters are native modules of the model (PEFT's method registry is closed, so they cannot be a
PEFT method without patching PEFT). This mixin makes them behave like PEFT adapters for a user:

- `save_alta_adapter(dir)` writes `adapter_model.safetensors` + `adapter_config.json` (PEFT's file names) holding
  only the parameters `model.alta_trainable_parameters()` returns: the adapters plus the groups that train with them
  (`AltaAdapterConfig.trainable_groups`).
- `load_alta_adapter(path_or_repo_id, adapter_name)` loads one from a folder or a Hub repository onto a base model,
  after checking that the base matches (adapter shapes and settings, and a fingerprint of the frozen base).
- Several named adapters live on one base; `set_alta_adapter(name)` switches by copying weights in place (no
  merging, no re-wrapping), `disable_alta_adapters()`/`enable_alta_adapters()` toggle the backbone-only model.
- `push_alta_adapter_to_hub(repo_id)` uploads the two files and a model card.

Method names carry `alta` so they never shadow transformers' own PEFT methods on `PreTrainedModel`
(`load_adapter`, `add_adapter`, `set_adapter`, `enable_adapters`, ...). The one exception is `load_adapter`, which
is implemented *compatibly*: it forwards ALTA adapter folders to `load_alta_adapter` and everything else to
transformers, so `AltaForPreTraining.from_pretrained("user/alta-adapter")` loads the base named in the adapter
config and the adapter on top of it, as PEFT adapters do.

Base fingerprint (recorded at save, checked at load). Computed over the **base model** part only (the parameters
under `base_model_prefix`, i.e. `AltaModel`: both towers and the projection heads), minus the adapter set, so that
an adapter trained with `AltaForPreTraining` loads onto `AltaModel` for inference:

- `structure`: sha256 of the sorted `name:shape` lines. A mismatch always refuses the load.
- `architecture`: what the weights do not show: the attention-head counts and every size of the config (encoder,
  decoder, text, projection; `_ARCHITECTURE_FIELDS`). A base with other heads has tensors of the same shapes but
  computes other features, so a mismatch always refuses the load too, naming the fields that differ. (Adapter files
  written before this field existed load with a warning that the architecture could not be checked.)
- `weights`: sha256 of the raw bytes of those parameters' values (so their dtype counts here). A mismatch means the
  adapter was trained on other base weights, or the base was cast (e.g. to bfloat16): refused unless
  `verify_base_weights=False`. Hashing the ~225M frozen values of alta-base takes about a second on a CPU.

Tampering. An adapter file may only change the parameters of the adapter set its `adapter_config.json` declares
(`trainable_groups`, found structurally in the model): a tensor of any other model parameter is refused by name, so
an adapter can never overwrite frozen base weights, and the base fingerprint covers everything outside the declared
set. Every field of `adapter_config.json` is type-checked, and errors name the field.

This file ships to the Hub next to `modeling_alta.py`: it imports only torch, safetensors, huggingface_hub,
transformers and its siblings (`from .x import Y`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData, hf_hub_download
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.utils import logging

from .configuration_alta import ADAPTER_TOWERS, TRAINABLE_GROUPS, AltaAdapterConfig, check_pretrained_source


logger = logging.get_logger(__name__)

ALTA_ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ALTA_ADAPTER_CONFIG_NAME = "adapter_config.json"
# `adapter_format` is how we recognise our files. `peft_type` is set too, to a value absent from PEFT's `PeftType`,
# so that PEFT fails on it at once (KeyError 'ALTA') instead of reading the file as, say, a LoRA.
ALTA_ADAPTER_FORMAT = "alta"
ALTA_ADAPTER_FORMAT_VERSION = 1
# Fingerprints of version 2 hash shapes only in `structure` (version 1 included dtypes, so a bf16 base could never
# load an fp32-trained adapter, even with verify_base_weights=False).
ALTA_FINGERPRINT_VERSION = 2
ALTA_PEFT_TYPE = "ALTA"
DEFAULT_ADAPTER_NAME = "default"
_ADAPTER_FIELDS = tuple(f.name for f in fields(AltaAdapterConfig))
# Fields that decide which adapter modules exist and what they compute; they must agree between file and model.
_STRUCTURAL_FIELDS = ("act", "mlp_scale", "placement", "layers")
_TOWERS = ("vision", "text")
# Config fields that fix what the frozen base computes beyond its tensor shapes: head counts (invisible in the
# weights) and every size, by config (`""` is the top-level `AltaConfig`, or the tower config of a tower model).
_ARCHITECTURE_FIELDS = {
    "": ("projection_dim", "projection_layer_norm_eps"),
    "vision_config": (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "layer_norm_eps",
        "image_size",
        "patch_size",
        "num_channels",
        "qkv_bias",
        "num_view_kinds",
        "num_times",
        "decoder_hidden_size",
        "decoder_num_hidden_layers",
        "decoder_num_attention_heads",
        "decoder_intermediate_size",
        "reconstruction_image_size",
        "reconstruction_patch_size",
    ),
    "text_config": (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "layer_norm_eps",
        "max_position_embeddings",
        "type_vocab_size",
        "pad_token_id",
    ),
}


@dataclass
class AltaAdapterLoadInfo:
    """What `load_alta_adapter` did. `to_dict()` matches transformers' loading-info shape."""

    adapter_name: str
    source: str
    loaded_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "missing_keys": list(self.missing_keys),
            "unexpected_keys": list(self.unexpected_keys),
            "mismatched_keys": [],
            "error_msgs": [],
        }


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """Raw bytes of a tensor in memory order (any dtype, bfloat16 included, which numpy lacks)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _read_adapter_config(path: str | os.PathLike) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object; got {type(data).__name__}.")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_str_list(value: Any, allowed: tuple[str, ...] | None = None) -> bool:
    return (
        isinstance(value, list)
        and all(isinstance(v, str) for v in value)
        and (allowed is None or all(v in allowed for v in value))
    )


def validate_alta_adapter_config(data: dict[str, Any], source: str) -> AltaAdapterConfig:
    """Check every field of an ALTA `adapter_config.json`; return its `AltaAdapterConfig`.

    Raises:
        ValueError: naming the file, the field, what it must be and the value found.
    """
    checks: dict[str, tuple[Any, str]] = {
        "format_version": (_is_int, "an integer"),
        "base_model_name_or_path": (lambda v: v is None or isinstance(v, str), "a string or null"),
        "towers": (lambda v: _is_str_list(v, ADAPTER_TOWERS), f"a list of {list(ADAPTER_TOWERS)}"),
        "tower_bottleneck_sizes": (
            lambda v: (
                isinstance(v, dict) and all(t in ADAPTER_TOWERS and (x is None or _is_int(x)) for t, x in v.items())
            ),
            "an object mapping 'vision'/'text' to an integer or null",
        ),
        "trainable_groups": (lambda v: _is_str_list(v, TRAINABLE_GROUPS), f"a list of {list(TRAINABLE_GROUPS)}"),
        "placement": (_is_str_list, "a list of strings"),
        "layers": (
            lambda v: v is None or (isinstance(v, list) and all(_is_int(i) for i in v)),
            "null or a list of ints",
        ),
        "act": (lambda v: isinstance(v, str), "a string"),
        "mlp_scale": (_is_number, "a number"),
        "bottleneck_ratio": (_is_number, "a number"),
        "bottleneck_size": (lambda v: v is None or _is_int(v), "an integer or null"),
        "zero_init_up": (lambda v: isinstance(v, bool), "true or false"),
        "num_adapter_parameters": (_is_int, "an integer"),
        "num_adapter_tensors": (_is_int, "an integer"),
        "base_model_fingerprint": (lambda v: isinstance(v, dict), "an object"),
    }
    required = ("format_version", "towers", "tower_bottleneck_sizes", "trainable_groups", "base_model_fingerprint")
    for name in required:
        if name not in data:
            raise ValueError(f"{source}: field {name!r} is missing; it is not an ALTA adapter config this code wrote.")
    for name, (ok, expected) in checks.items():
        if name in data and not ok(data[name]):
            raise ValueError(f"{source}: field {name!r} must be {expected}; got {data[name]!r}.")
    fingerprint = data["base_model_fingerprint"]
    for name, ok, expected in (
        ("structure", lambda v: isinstance(v, str), "a string"),
        ("weights", lambda v: isinstance(v, str), "a string"),
        ("num_parameters", lambda v: v is None or _is_int(v), "an integer"),
        ("version", _is_int, "an integer"),
        ("architecture", lambda v: isinstance(v, dict), "an object"),
        (
            "tensors",
            lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
            "an object of strings",
        ),
    ):
        if (name in fingerprint or name in ("structure", "weights")) and not ok(fingerprint.get(name)):
            raise ValueError(
                f"{source}: field 'base_model_fingerprint.{name}' must be {expected}; got {fingerprint.get(name)!r}."
            )
    fields_of_config = {f.name for f in fields(AltaAdapterConfig)}
    try:
        return AltaAdapterConfig.from_dict({k: v for k, v in data.items() if k in fields_of_config})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {err}") from err


def is_alta_adapter_config(data: dict[str, Any]) -> bool:
    """True for the `adapter_config.json` of an ALTA native adapter (as opposed to a PEFT adapter)."""
    return data.get("adapter_format") == ALTA_ADAPTER_FORMAT


def build_alta_adapter_card(
    repo_id: str | None,
    base_model: str | None,
    adapter_config: dict[str, Any],
    num_parameters: int,
    license: str = "apache-2.0",  # noqa: A002 - the model-card field's name
) -> ModelCard:
    """A short model card for an adapter-only repository (no template engine needed)."""
    data = ModelCardData(
        library_name="transformers",
        license=license,
        base_model=base_model if base_model and not os.path.isabs(base_model) else None,
        pipeline_tag="zero-shot-image-classification",
        tags=["alta", "adapter", "medical-imaging", "chest-x-ray"],
    )
    name = repo_id or "ALTA adapter"
    settings = ", ".join(
        f"`{k}={adapter_config.get(k)}`" for k in ("bottleneck_ratio", "bottleneck_size", "placement")
    )
    body = f"""
# {name}

An ALTA bottleneck-adapter set (`{ALTA_ADAPTER_WEIGHTS_NAME}`, {num_parameters:,} parameters) for the base model
`{base_model}`. It is not a PEFT adapter: load it with the ALTA model's own method.

```python
from transformers import AutoModel

model = AutoModel.from_pretrained("{base_model}", trust_remote_code=True)
model.load_alta_adapter("{name}")
```

Settings: {settings}; towers `{adapter_config.get("towers")}`; trainable groups `{adapter_config.get("trainable_groups")}`.

## Intended use and limitations

For research on chest radiograph / report alignment only. **Not a medical device**; not for clinical decisions.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


class AltaAdapterMixin:
    """Adapter artifacts for ALTA models. Mixed into `AltaPreTrainedModel` **before** `PreTrainedModel`.

    The host model provides `config` (an `AltaConfig`), `alta_trainable_parameters() -> dict[str, nn.Parameter]`
    (the adapter set, following `config.adapter.trainable_groups`), `set_adapters_enabled(bool)`, and marks each
    adapter module with `_is_alta_adapter = True`.

    Example:

    ```python
    >>> model = AltaForPreTraining.from_pretrained("user/alta-base")
    >>> model.load_alta_adapter("user/alta-chexpert-adapter", adapter_name="chexpert")
    >>> model.load_alta_adapter("./rsna-adapter", adapter_name="rsna")
    >>> model.set_alta_adapter("chexpert")
    >>> model.disable_alta_adapters()  # the backbone alone
    >>> model.enable_alta_adapters()  # back to "chexpert"
    ```
    """

    # -------------------------------------------------------------------------------------------------------------
    # State (kept in the instance __dict__, never registered as buffers: it must not enter state_dict())
    # -------------------------------------------------------------------------------------------------------------
    def _alta_state(self) -> dict[str, Any]:
        state = self.__dict__.get("_alta_adapter_state")
        if state is None:
            # adapters: name -> {file key: tensor}; base: file key -> the value before any adapter was applied.
            state = {"adapters": {}, "configs": {}, "base": {}, "active": None, "enabled": True}
            self.__dict__["_alta_adapter_state"] = state
        return state

    # -------------------------------------------------------------------------------------------------------------
    # Names: file keys are relative to the base model, so AltaModel and AltaForPreTraining share adapter files
    # -------------------------------------------------------------------------------------------------------------
    def _alta_prefix(self) -> str:
        prefix = getattr(self, "base_model_prefix", "")
        return f"{prefix}." if prefix and hasattr(self, prefix) else ""

    def _alta_file_key(self, name: str) -> str:
        prefix = self._alta_prefix()
        return name[len(prefix) :] if prefix and name.startswith(prefix) else name

    def _alta_named_parameters(self) -> dict[str, torch.nn.Parameter]:
        """All parameters by file key (tied weights once)."""
        return {self._alta_file_key(n): p for n, p in self.named_parameters()}

    def _alta_adapter_set(self) -> dict[str, torch.nn.Parameter]:
        """The adapter set of the model as configured now, by file key."""
        getter = getattr(self, "alta_trainable_parameters", None)
        if getter is None:
            raise TypeError(
                f"{type(self).__name__} does not define `alta_trainable_parameters()`, which AltaAdapterMixin needs "
                "to know which parameters form the adapter set."
            )
        return {self._alta_file_key(n): p for n, p in getter().items()}

    def _alta_adapter_module_keys(self) -> set[str]:
        """File keys of the parameters inside modules marked `_is_alta_adapter` (found structurally)."""
        keys: set[str] = set()
        for module_name, module in self.named_modules():
            if getattr(module, "_is_alta_adapter", False):
                for param_name, _ in module.named_parameters():
                    keys.add(self._alta_file_key(f"{module_name}.{param_name}" if module_name else param_name))
        return keys

    def num_alta_adapter_parameters(self) -> int:
        """Number of values in the adapter set (what `save_alta_adapter` writes)."""
        return sum(p.numel() for p in self._alta_adapter_set().values())

    # -------------------------------------------------------------------------------------------------------------
    # Base fingerprint
    # -------------------------------------------------------------------------------------------------------------
    def alta_base_fingerprint(
        self, adapter_keys: Iterable[str] | None = None, version: int = ALTA_FINGERPRINT_VERSION
    ) -> dict[str, Any]:
        """Hashes of the frozen base: the base-model parameters outside `adapter_keys` (default: the adapter set).

        Values changed by loaded adapters are hashed as they were before the first adapter was applied, so the
        fingerprint of a base does not depend on which adapter is active. `version=1` computes the structure hash
        of older files (dtypes included).
        """
        adapter_keys = set(self._alta_adapter_set() if adapter_keys is None else adapter_keys)
        prefix = self._alta_prefix()
        base_values = self._alta_state()["base"]
        structure, weights = hashlib.sha256(), hashlib.sha256()
        per_tensor: dict[str, str] = {}
        count = 0
        for name, param in sorted(self.named_parameters()):
            if prefix and not name.startswith(prefix):
                continue  # pre-training-only parts (decoder, MLM head, bert_embed) are not part of the base model
            key = self._alta_file_key(name)
            if key in adapter_keys:
                continue
            value = base_values.get(key, param)
            dtype = f":{str(value.dtype).replace('torch.', '')}" if version < 2 else ""
            structure.update(f"{key}:{tuple(value.shape)}{dtype}\n".encode())
            data = _tensor_bytes(value)
            weights.update(data)
            # Short per-tensor digests let a mismatch name the tensors that differ (a few bytes each in the file).
            per_tensor[key] = hashlib.sha256(data).hexdigest()[:16]
            count += value.numel()
        return {
            "version": version,
            "structure": structure.hexdigest(),
            "architecture": self.alta_base_architecture(),
            "weights": weights.hexdigest(),
            "num_parameters": count,
            "tensors": per_tensor,
        }

    def alta_base_architecture(self) -> dict[str, Any]:
        """`{"vision_config.num_attention_heads": 12, ...}`: head counts and sizes that the weights do not reveal.

        A tower model (whose config is a tower config) reports the fields of its own tower under its key.
        """
        config = self.config
        out: dict[str, Any] = {}
        for key, names in _ARCHITECTURE_FIELDS.items():
            if key:
                sub = getattr(config, key, None)
                if sub is None and getattr(config, "base_config_key", None) == key:
                    sub = config  # AltaVisionModel / AltaTextModel
            else:
                sub = config if getattr(config, "sub_configs", None) else None
            if sub is None:
                continue
            for name in names:
                if hasattr(sub, name):
                    value = getattr(sub, name)
                    out[f"{key}.{name}" if key else name] = value if not isinstance(value, tuple) else list(value)
        return out

    # -------------------------------------------------------------------------------------------------------------
    # Adapter config
    # -------------------------------------------------------------------------------------------------------------
    def _alta_tower_adapter(self, tower: str) -> AltaAdapterConfig | None:
        sub = getattr(self.config, f"{tower}_config", None)
        return None if sub is None else sub.adapter

    def _alta_tower_bottlenecks(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for tower in _TOWERS:
            adapter = self._alta_tower_adapter(tower)
            sub = getattr(self.config, f"{tower}_config", None)
            out[tower] = None if adapter is None or sub is None else adapter.hidden_size_for(sub.hidden_size)
        return out

    def _alta_adapter_config_dict(
        self, keys: list[str], num_parameters: int, base_model_name_or_path: str | None
    ) -> dict[str, Any]:
        adapter = self.config.adapter
        if adapter is None:
            raise ValueError(f"{type(self).__name__} was built without adapters (`config.adapter` is None).")
        data: dict[str, Any] = {
            "adapter_format": ALTA_ADAPTER_FORMAT,
            "format_version": ALTA_ADAPTER_FORMAT_VERSION,
            "peft_type": ALTA_PEFT_TYPE,
            "library": "alta",
            "base_model_name_or_path": base_model_name_or_path,
            "base_model_class": type(self).__name__,
            "model_type": getattr(self.config, "model_type", None),
            "base_model_fingerprint": self.alta_base_fingerprint(keys),
            "tower_bottleneck_sizes": self._alta_tower_bottlenecks(),
            "num_adapter_parameters": num_parameters,
            "num_adapter_tensors": len(keys),
        }
        # The AltaAdapterConfig fields at the top level, as PEFT configs keep their method fields.
        data.update(adapter.to_dict())
        # `towers` as the model really has them (AltaConfig may strip a tower's adapters after construction).
        data["towers"] = [t for t in _TOWERS if self._alta_tower_adapter(t) is not None]
        return data

    def _alta_check_adapter_config(self, data: dict[str, Any], source: str) -> None:
        """Refuse an adapter whose settings do not fit this model's adapter modules; the message names both."""
        problems = []
        file_bottlenecks = data.get("tower_bottleneck_sizes", {})
        for tower in _TOWERS:
            mine = self._alta_tower_adapter(tower)
            in_file = tower in data.get("towers", [])
            if (mine is not None) != in_file:
                problems.append(
                    f"{tower} adapters: file={'yes' if in_file else 'no'}, model={'yes' if mine else 'no'}"
                )
                continue
            if mine is None:
                continue
            model_size = self._alta_tower_bottlenecks()[tower]
            if file_bottlenecks.get(tower) != model_size:
                problems.append(f"{tower} bottleneck: file={file_bottlenecks.get(tower)}, model={model_size}")
            mine_dict = mine.to_dict()
            for key in _STRUCTURAL_FIELDS:
                if data.get(key) != mine_dict.get(key):
                    problems.append(f"{tower} `{key}`: file={data.get(key)!r}, model={mine_dict.get(key)!r}")
        if problems:
            raise ValueError(
                f"The ALTA adapter at {source} does not fit this {type(self).__name__}: " + "; ".join(problems) + "."
            )

    # -------------------------------------------------------------------------------------------------------------
    # Save
    # -------------------------------------------------------------------------------------------------------------
    def save_alta_adapter(
        self,
        save_directory: str | os.PathLike,
        adapter_name: str | None = None,
        base_model_name_or_path: str | None = None,
    ) -> list[str]:
        """Write `adapter_model.safetensors` and `adapter_config.json` for one adapter; return the file paths.

        Args:
            save_directory (`str` or `os.PathLike`):
                Folder to write to (created if missing).
            adapter_name (`str`, *optional*):
                A loaded adapter to save. By default, or when it names the active adapter, the model's current values
                of the adapter set are saved (what training changed in place).
            base_model_name_or_path (`str`, *optional*):
                Hub id (or path) of the base to record; defaults to `config._name_or_path`, where `from_pretrained`
                put the id the base was loaded from.
        """
        state = self._alta_state()
        if adapter_name is None or (adapter_name == state["active"] and state["enabled"]):
            live = self._alta_adapter_set()
            tensors = {k: p.detach() for k, p in live.items()}
        else:
            if adapter_name not in state["adapters"]:
                raise ValueError(
                    f"No ALTA adapter named {adapter_name!r}; loaded adapters are {self.list_alta_adapters()}."
                )
            tensors = state["adapters"][adapter_name]
        if not tensors:
            raise ValueError(f"{type(self).__name__} has an empty adapter set; nothing to save.")
        base_id = base_model_name_or_path or getattr(self.config, "_name_or_path", None) or None
        keys = sorted(tensors)
        num_parameters = sum(t.numel() for t in tensors.values())
        config = self._alta_adapter_config_dict(keys, num_parameters, base_id)
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        # Clones: tied or shared storages would make safetensors refuse to write.
        save_file(
            {k: tensors[k].detach().to("cpu").contiguous().clone() for k in keys},
            str(out / ALTA_ADAPTER_WEIGHTS_NAME),
            metadata={"format": "pt", "adapter_format": ALTA_ADAPTER_FORMAT},
        )
        (out / ALTA_ADAPTER_CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return [str(out / ALTA_ADAPTER_WEIGHTS_NAME), str(out / ALTA_ADAPTER_CONFIG_NAME)]

    # -------------------------------------------------------------------------------------------------------------
    # Load
    # -------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _alta_resolve_files(path_or_repo_id: str | os.PathLike, **hub_kwargs: Any) -> tuple[Path, Path, str]:
        local = Path(path_or_repo_id).expanduser()
        subfolder = hub_kwargs.pop("subfolder", None) or ""
        check_pretrained_source(path_or_repo_id, "ALTA adapter")
        if local.is_dir():
            folder = local / subfolder
            config_file, weights_file = folder / ALTA_ADAPTER_CONFIG_NAME, folder / ALTA_ADAPTER_WEIGHTS_NAME
            for f in (config_file, weights_file):
                if not f.is_file():
                    raise FileNotFoundError(f"{folder} is not an ALTA adapter folder: {f.name} is missing.")
            return config_file, weights_file, str(folder)
        repo_id = str(path_or_repo_id)
        allowed = {"revision", "token", "cache_dir", "local_files_only", "force_download", "repo_type"}
        unknown = sorted(set(hub_kwargs) - allowed)
        if unknown:
            raise TypeError(f"Unknown Hub keyword arguments {unknown}; accepted: {sorted(allowed)}.")
        sub = subfolder or None
        try:
            config_file = hf_hub_download(repo_id, ALTA_ADAPTER_CONFIG_NAME, subfolder=sub, **hub_kwargs)
            weights_file = hf_hub_download(repo_id, ALTA_ADAPTER_WEIGHTS_NAME, subfolder=sub, **hub_kwargs)
        except (OSError, ValueError) as err:  # not found, offline, gated: say both places were looked at
            raise FileNotFoundError(
                f"ALTA adapter {repo_id!r}: there is no local folder of that name ({Path(repo_id).absolute()}), and "
                f"it could not be fetched from the Hub either: {type(err).__name__}: {err}"
            ) from err
        return Path(config_file), Path(weights_file), repo_id

    def load_alta_adapter(
        self,
        path_or_repo_id: str | os.PathLike,
        adapter_name: str | None = None,
        *,
        activate: bool = True,
        verify_base_weights: bool = True,
        **hub_kwargs: Any,
    ) -> AltaAdapterLoadInfo:
        """Load an ALTA adapter from a folder or a Hub repository and (by default) make it the active one.

        Args:
            path_or_repo_id (`str` or `os.PathLike`):
                A folder written by `save_alta_adapter`, or a Hub repository id holding those two files.
            adapter_name (`str`, *optional*, defaults to `"default"`):
                Name to register the adapter under; must not be taken.
            activate (`bool`, *optional*, defaults to `True`):
                Apply the adapter now (otherwise it is only stored until `set_alta_adapter(name)`).
            verify_base_weights (`bool`, *optional*, defaults to `True`):
                Refuse an adapter whose recorded base-weight hash differs from this model's. Pass `False` when the
                base was cast (e.g. to bfloat16) or deliberately swapped; shapes and settings are checked regardless.
            hub_kwargs:
                `revision`, `token`, `cache_dir`, `local_files_only`, `force_download`, `subfolder`, passed to
                `hf_hub_download`.

        Raises:
            `ValueError` when the name is taken, the file is not an ALTA adapter, or the base does not match.
        """
        name = adapter_name or DEFAULT_ADAPTER_NAME
        state = self._alta_state()
        if name in state["adapters"]:
            raise ValueError(
                f"An ALTA adapter named {name!r} is already loaded ({self.list_alta_adapters()}); pick another "
                "`adapter_name` or `delete_alta_adapter` it first."
            )
        config_file, weights_file, source = self._alta_resolve_files(path_or_repo_id, **hub_kwargs)
        data = _read_adapter_config(config_file)
        if not is_alta_adapter_config(data):
            raise ValueError(
                f"{config_file} is not an ALTA adapter config (adapter_format={data.get('adapter_format')!r}, "
                f"peft_type={data.get('peft_type')!r}). For a PEFT adapter use `peft.PeftModel.from_pretrained`."
            )
        declared = validate_alta_adapter_config(data, str(config_file))
        if data["format_version"] > ALTA_ADAPTER_FORMAT_VERSION:
            raise ValueError(
                f"{config_file} has format_version={data['format_version']}, newer than this code reads "
                f"({ALTA_ADAPTER_FORMAT_VERSION}); update the model code."
            )
        self._alta_check_adapter_config(data, source)

        with safe_open(str(weights_file), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open API
        params = self._alta_named_parameters()
        # The declared adapter set, found structurally in this model: the only parameters an adapter may change.
        allowed = {self._alta_file_key(n) for n in self.alta_trainable_parameters(declared.trainable_groups)}
        foreign = sorted(k for k in tensors if k in params and k not in allowed)
        if foreign:
            raise ValueError(
                f"The ALTA adapter at {source} holds {len(foreign)} tensor(s) outside its declared trainable set "
                f"(trainable_groups={list(declared.trainable_groups)}), e.g. {foreign[:5]}: an adapter may only "
                "change adapter-set parameters, never the frozen base. Refusing to load it."
            )
        unexpected = sorted(k for k in tensors if k not in params)
        mismatched = [
            f"{k}: file {tuple(t.shape)} vs model {tuple(params[k].shape)}"
            for k, t in sorted(tensors.items())
            if k in params and t.shape != params[k].shape
        ]
        if mismatched:
            raise ValueError(
                f"The ALTA adapter at {source} has {len(mismatched)} tensor(s) whose shape differs from this "
                f"{type(self).__name__}: {mismatched[:5]}{' ...' if len(mismatched) > 5 else ''}."
            )
        uncovered = sorted(self._alta_adapter_module_keys() - set(tensors))
        if uncovered:
            raise ValueError(
                f"The ALTA adapter at {source} lacks {len(uncovered)} adapter-module parameter(s) this "
                f"{type(self).__name__} has, e.g. {uncovered[:5]}; it was saved from a model with other adapters."
            )
        if unexpected:
            # An adapter saved from AltaForPreTraining carries the decoder / MLM-head parts of its set; a bare
            # AltaModel has no place for them and does not need them for inference.
            logger.warning(
                f"Skipping {len(unexpected)} tensor(s) of the ALTA adapter at {source} that {type(self).__name__} "
                f"does not have (pre-training-only parts?): {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
            )
            tensors = {k: t for k, t in tensors.items() if k not in unexpected}
        non_finite = sorted(k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all())
        if non_finite:
            raise ValueError(f"The ALTA adapter at {source} holds non-finite values in {non_finite[:5]}.")

        self._alta_check_base(data, allowed, source, verify_base_weights)

        device_dtype = {k: (params[k].device, params[k].dtype) for k in tensors}
        state["adapters"][name] = {
            k: t.to(device=device_dtype[k][0], dtype=device_dtype[k][1]) for k, t in tensors.items()
        }
        state["configs"][name] = data
        if activate:
            self.set_alta_adapter(name)
        return AltaAdapterLoadInfo(
            adapter_name=name, source=source, loaded_keys=sorted(tensors), unexpected_keys=unexpected
        )

    def _alta_check_base(self, data: dict[str, Any], keys: set[str], source: str, verify_weights: bool) -> None:
        recorded = data.get("base_model_fingerprint") or {}
        mine = self.alta_base_fingerprint(keys, version=min(int(recorded.get("version", 1)), ALTA_FINGERPRINT_VERSION))
        recorded_id = data.get("base_model_name_or_path")
        my_id = getattr(self.config, "_name_or_path", None) or "<built from a config>"
        if recorded.get("structure") != mine["structure"]:
            raise ValueError(
                f"The ALTA adapter at {source} was trained on a different base model: it records base "
                f"{recorded_id!r} ({recorded.get('num_parameters')} frozen base values, structure hash "
                f"{str(recorded.get('structure'))[:12]}), but this {type(self).__name__} is {my_id!r} "
                f"({mine['num_parameters']} frozen base values, structure hash {mine['structure'][:12]})."
            )
        recorded_architecture = recorded.get("architecture")
        if recorded_architecture is None:
            logger.warning(
                f"The ALTA adapter at {source} records no base architecture (written by an older version): its "
                "attention-head counts and sizes cannot be checked against this model, only its tensors."
            )
        elif recorded_architecture != mine["architecture"]:
            names = sorted(set(recorded_architecture) | set(mine["architecture"]))
            differing = [
                f"{k}: adapter base {recorded_architecture.get(k)!r}, this model {mine['architecture'].get(k)!r}"
                for k in names
                if recorded_architecture.get(k) != mine["architecture"].get(k)
            ]
            raise ValueError(
                f"The ALTA adapter at {source} was trained on a base of another architecture (recorded base "
                f"{recorded_id!r}, this {type(self).__name__} is {my_id!r}): " + "; ".join(differing) + ". Tensor "
                "shapes cannot show attention heads, so the adapter would load but compute other features."
            )
        if recorded.get("weights") != mine["weights"]:
            message = (
                f"The ALTA adapter at {source} was trained on other base weights: it records base {recorded_id!r} "
                f"(weights hash {str(recorded.get('weights'))[:12]}), this model is {my_id!r} (weights hash "
                f"{mine['weights'][:12]}). Same architecture, different values (another checkpoint, or a cast "
                "dtype)."
            )
            recorded_tensors = recorded.get("tensors") or {}
            differing = sorted(
                k for k, digest in mine["tensors"].items() if recorded_tensors.get(k) not in (None, digest)
            )
            if differing:
                message += f" Tensors that differ ({len(differing)} of {len(mine['tensors'])}): {differing[:8]}."
            if verify_weights:
                raise ValueError(message + " Pass `verify_base_weights=False` to load it anyway.")
            logger.warning(message + " Loading anyway (verify_base_weights=False).")

    # -------------------------------------------------------------------------------------------------------------
    # transformers compatibility: from_pretrained(<ALTA adapter repo>) lands here
    # -------------------------------------------------------------------------------------------------------------
    def load_adapter(
        self, peft_model_id: str | None = None, adapter_name: str | None = None, *args: Any, **kwargs: Any
    ):
        """transformers' `load_adapter`, extended: an ALTA adapter folder/repo goes to `load_alta_adapter`.

        `from_pretrained` calls this when pointed at a repository with an `adapter_config.json`, after loading the
        base named in it; PEFT adapters (LoRA, IA3, ...) keep transformers' behaviour unchanged.
        """
        hub_kwargs = dict(kwargs.get("adapter_kwargs") or {})
        if peft_model_id is not None and kwargs.get("peft_config") is None:
            try:
                config_file, _, _ = self._alta_resolve_files(
                    peft_model_id,
                    **{k: v for k, v in hub_kwargs.items() if k in ("revision", "token", "cache_dir", "subfolder")},
                )
                is_alta = is_alta_adapter_config(_read_adapter_config(config_file))
            except (OSError, ValueError, TypeError):
                is_alta = False  # not ours (or not reachable as ours): let transformers decide and report
            if is_alta:
                return self.load_alta_adapter(
                    peft_model_id,
                    adapter_name,
                    **{k: v for k, v in hub_kwargs.items() if k in ("revision", "token", "cache_dir", "subfolder")},
                )
        return super().load_adapter(peft_model_id, adapter_name, *args, **kwargs)  # type: ignore[misc]

    # -------------------------------------------------------------------------------------------------------------
    # Several adapters on one base
    # -------------------------------------------------------------------------------------------------------------
    def _alta_write(self, values: dict[str, torch.Tensor]) -> None:
        params = self._alta_named_parameters()
        base = self._alta_state()["base"]
        with torch.no_grad():
            for key, value in values.items():
                if key not in base:  # first time an adapter touches this parameter: remember the base value
                    base[key] = params[key].detach().clone()
                params[key].copy_(value)

    def _alta_restore_base(self) -> None:
        params = self._alta_named_parameters()
        with torch.no_grad():
            for key, value in self._alta_state()["base"].items():
                params[key].copy_(value)

    def list_alta_adapters(self) -> list[str]:
        """Names of the loaded ALTA adapters, in load order."""
        return list(self._alta_state()["adapters"])

    @property
    def active_alta_adapter(self) -> str | None:
        """Name of the adapter whose weights are in the model (None: the base as loaded)."""
        return self._alta_state()["active"]

    def set_alta_adapter(self, adapter_name: str | None) -> None:
        """Make `adapter_name` the active adapter (None: the base's own values). Copies weights in place.

        The outgoing adapter's live values are kept, so training an active adapter and switching away loses
        nothing.
        """
        state = self._alta_state()
        if adapter_name is not None and adapter_name not in state["adapters"]:
            raise ValueError(
                f"No ALTA adapter named {adapter_name!r}; loaded adapters are {self.list_alta_adapters()}."
            )
        current = state["active"]
        if current is not None and state["enabled"]:
            params = self._alta_named_parameters()
            state["adapters"][current] = {k: params[k].detach().clone() for k in state["adapters"][current]}
        self._alta_restore_base()
        if adapter_name is not None and state["enabled"]:
            self._alta_write(state["adapters"][adapter_name])
        state["active"] = adapter_name

    def disable_alta_adapters(self) -> None:
        """The backbone alone: adapter modules bypassed (`set_adapters_enabled(False)`) and every other parameter of
        the adapter set back at its base value, as PEFT's `disable_adapter` also restores `modules_to_save`.
        Loaded adapters stay loaded; `enable_alta_adapters()` re-applies the active one."""
        state = self._alta_state()
        if state["enabled"] and state["active"] is not None:
            params = self._alta_named_parameters()
            active = state["active"]
            state["adapters"][active] = {k: params[k].detach().clone() for k in state["adapters"][active]}
        self._alta_restore_base()
        self.set_adapters_enabled(False)
        state["enabled"] = False

    def enable_alta_adapters(self) -> None:
        """Undo `disable_alta_adapters()`: adapter modules on, the active adapter's weights back in."""
        state = self._alta_state()
        self.set_adapters_enabled(True)
        state["enabled"] = True
        if state["active"] is not None:
            self._alta_write(state["adapters"][state["active"]])

    def delete_alta_adapter(self, adapter_name: str) -> None:
        """Forget a loaded adapter; if it was active, the base values come back."""
        state = self._alta_state()
        if adapter_name not in state["adapters"]:
            raise ValueError(
                f"No ALTA adapter named {adapter_name!r}; loaded adapters are {self.list_alta_adapters()}."
            )
        if state["active"] == adapter_name:
            self._alta_restore_base()
            state["active"] = None
        del state["adapters"][adapter_name]
        del state["configs"][adapter_name]

    # -------------------------------------------------------------------------------------------------------------
    # Hub
    # -------------------------------------------------------------------------------------------------------------
    def push_alta_adapter_to_hub(
        self,
        repo_id: str,
        adapter_name: str | None = None,
        *,
        base_model_name_or_path: str | None = None,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        model_card: ModelCard | str | None = None,
    ) -> Any:
        """Upload one adapter (the two files and a model card) to a Hub repository; returns the `CommitInfo`.

        `model_card` replaces the generated README (e.g. one from `training.export.build_model_card`).
        """
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            self.save_alta_adapter(tmp, adapter_name, base_model_name_or_path)
            if model_card is None:
                data = _read_adapter_config(Path(tmp) / ALTA_ADAPTER_CONFIG_NAME)
                model_card = build_alta_adapter_card(
                    repo_id, data.get("base_model_name_or_path"), data, data["num_adapter_parameters"]
                )
            card_text = model_card if isinstance(model_card, str) else str(model_card)
            (Path(tmp) / "README.md").write_text(card_text, encoding="utf-8")
            return api.upload_folder(
                folder_path=tmp,
                repo_id=repo_id,
                commit_message=commit_message or f"Upload ALTA adapter {adapter_name or DEFAULT_ADAPTER_NAME}",
                revision=revision,
                create_pr=create_pr,
            )


__all__ = [
    "ALTA_ADAPTER_CONFIG_NAME",
    "ALTA_ADAPTER_WEIGHTS_NAME",
    "AltaAdapterLoadInfo",
    "AltaAdapterMixin",
    "build_alta_adapter_card",
    "is_alta_adapter_config",
    "validate_alta_adapter_config",
]
