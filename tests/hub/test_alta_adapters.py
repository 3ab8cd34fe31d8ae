"""ALTA native adapters as artifacts: the files hold only the adapter set, a fresh process reloads them exactly, a
mismatched base is refused with a message naming both sides, several named adapters switch and disable."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open

from modeling_alta.adapters_alta import ALTA_ADAPTER_CONFIG_NAME, ALTA_ADAPTER_WEIGHTS_NAME
from tests.hub.fake_hub import run_python
from tests.hub.toy_alta import ToyAltaForPreTraining, ToyAltaModel, toy_config, toy_inputs


def make_model(seed: int = 0, cls=ToyAltaForPreTraining, **overrides):
    torch.manual_seed(seed)
    return cls(toy_config(**overrides)).eval()


def features(model) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(model(*toy_inputs()), dim=-1)


def train_adapter_set(model, seed: int) -> None:
    """Stand-in for training: move every adapter-set value, nothing else."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.alta_trainable_parameters().values():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def _read(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def test_adapter_files_hold_only_the_adapter_set(tmp_path):
    model = make_model()
    adapter_set = {k.removeprefix("alta."): p for k, p in model.alta_trainable_parameters().items()}
    model.save_alta_adapter(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ALTA_ADAPTER_CONFIG_NAME, ALTA_ADAPTER_WEIGHTS_NAME]

    weights = tmp_path / ALTA_ADAPTER_WEIGHTS_NAME
    with safe_open(str(weights), framework="pt") as f:
        keys = sorted(f.keys())
        tensors = {k: f.get_tensor(k) for k in keys}
    assert keys == sorted(adapter_set)
    assert len(keys) == 50  # 2 towers x 2 layers x 2 adapters x 4 tensors + 8 norm + 8 head + 2 decoder_pred
    n_values = sum(t.numel() for t in tensors.values())
    assert n_values == model.num_alta_adapter_parameters() == 1784
    assert all(torch.equal(tensors[k], adapter_set[k]) for k in keys)
    # Byte size: 8-byte header length + JSON header + fp32 payload, nothing else.
    raw = weights.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert len(raw) == 8 + header_len + 4 * n_values

    config = json.loads((tmp_path / ALTA_ADAPTER_CONFIG_NAME).read_text())
    assert config["adapter_format"] == "alta" and config["peft_type"] == "ALTA"
    assert config["num_adapter_parameters"] == 1784 and config["num_adapter_tensors"] == 50
    assert config["bottleneck_ratio"] == 0.25 and config["placement"] == ["attn", "mlp"]
    assert config["base_model_fingerprint"]["num_parameters"] == 3160 - 1784


def test_peft_does_not_misread_an_alta_adapter(tmp_path):
    from peft import PeftConfig

    make_model().save_alta_adapter(tmp_path)
    with pytest.raises(KeyError, match="ALTA"):
        PeftConfig.from_pretrained(str(tmp_path))


def test_round_trip_in_a_fresh_process_is_exact(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path / "base")
    train_adapter_set(model, seed=1)
    model.save_alta_adapter(tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))
    expected = features(model)
    torch.save(expected, tmp_path / "expected.pt")
    out = run_python(
        f"""
import torch
from tests.hub.toy_alta import ToyAltaForPreTraining, ToyAltaModel, toy_inputs
base = ToyAltaForPreTraining.from_pretrained({str(tmp_path / "base")!r}).eval()
with torch.no_grad():
    before = torch.cat(base(*toy_inputs()), -1)
info = base.load_alta_adapter({str(tmp_path / "adapter")!r})
with torch.no_grad():
    after = torch.cat(base(*toy_inputs()), -1)
expected = torch.load({str(tmp_path / "expected.pt")!r})
print("EXACT", torch.equal(after, expected), "CHANGED", not torch.equal(before, expected), len(info.loaded_keys))
# The same adapter on the inference class: the decoder part is skipped, the features are the same.
bare = ToyAltaModel.from_pretrained({str(tmp_path / "base")!r}).eval()
bare.load_alta_adapter({str(tmp_path / "adapter")!r})
with torch.no_grad():
    print("BARE", torch.equal(torch.cat(bare(*toy_inputs()), -1), expected))
# transformers' entry point: from_pretrained(<adapter folder>) loads the recorded base, then the adapter.
auto = ToyAltaForPreTraining.from_pretrained({str(tmp_path / "adapter")!r}).eval()
with torch.no_grad():
    print("FROM_PRETRAINED", torch.equal(torch.cat(auto(*toy_inputs()), -1), expected), auto.list_alta_adapters())
""",
        cwd=tmp_path,
    )
    assert "EXACT True CHANGED True 50" in out, out
    assert "BARE True" in out, out
    assert "FROM_PRETRAINED True ['default']" in out, out


def test_mismatched_base_is_refused_with_both_sides_named(tmp_path):
    model = make_model(seed=0)
    train_adapter_set(model, seed=1)
    model.save_alta_adapter(tmp_path, base_model_name_or_path="user/alta-base")

    other_weights = make_model(seed=5)
    with pytest.raises(ValueError, match=r"other base weights.*'user/alta-base'.*<built from a config>") as err:
        other_weights.load_alta_adapter(tmp_path)
    assert "verify_base_weights=False" in str(err.value)
    assert other_weights.list_alta_adapters() == []
    other_weights.load_alta_adapter(tmp_path, verify_base_weights=False)  # explicit opt-out loads
    assert other_weights.active_alta_adapter == "default"

    wider = make_model(adapter_config={"bottleneck_size": 8})
    with pytest.raises(ValueError, match=r"vision bottleneck: file=4, model=8"):
        wider.load_alta_adapter(tmp_path)

    vision_only = make_model(adapter_config={"towers": ["vision"]})
    with pytest.raises(ValueError, match=r"text adapters: file=yes, model=no"):
        vision_only.load_alta_adapter(tmp_path)

    deeper = make_model(text_config={"hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2})
    with pytest.raises(ValueError, match=r"lacks 8 adapter-module parameter"):
        deeper.load_alta_adapter(tmp_path)

    # Same adapters, different frozen base: the structure hash tells, and the message names both sides.
    other_base = make_model(projection_dim=4)
    with pytest.raises(ValueError, match=r"shape differs|different base model"):
        other_base.load_alta_adapter(tmp_path)

    peft_like = tmp_path / "peft"
    peft_like.mkdir()
    (peft_like / ALTA_ADAPTER_CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA"}))
    (peft_like / ALTA_ADAPTER_WEIGHTS_NAME).write_bytes((tmp_path / ALTA_ADAPTER_WEIGHTS_NAME).read_bytes())
    with pytest.raises(ValueError, match=r"not an ALTA adapter config.*peft_type='LORA'"):
        model.load_alta_adapter(peft_like)


def test_structure_mismatch_message_names_both_bases(tmp_path):
    model = make_model()
    model.save_alta_adapter(tmp_path, base_model_name_or_path="user/alta-base")
    with torch.no_grad():  # same shapes, other dtype of a frozen weight: the structure hash differs
        model.alta.vision_model.layers[0].dense.weight.data = model.alta.vision_model.layers[0].dense.weight.double()
    with pytest.raises(ValueError, match=r"different base model: it records base 'user/alta-base'.*this"):
        model.load_alta_adapter(tmp_path)


def test_named_adapters_switch_disable_enable(tmp_path):
    model = make_model()
    base_out = features(model)
    model.set_adapters_enabled(False)
    backbone_out = features(model)
    model.set_adapters_enabled(True)

    for name, seed in (("a", 1), ("b", 2)):
        donor = make_model()
        train_adapter_set(donor, seed)
        donor.save_alta_adapter(tmp_path / name)
    model.load_alta_adapter(tmp_path / "a", adapter_name="a")
    out_a = features(model)
    model.load_alta_adapter(tmp_path / "b", adapter_name="b", activate=False)
    assert model.active_alta_adapter == "a" and model.list_alta_adapters() == ["a", "b"]
    assert torch.equal(features(model), out_a)
    model.set_alta_adapter("b")
    out_b = features(model)
    assert not torch.equal(out_a, out_b) and not torch.equal(out_a, base_out)

    model.disable_alta_adapters()
    assert torch.equal(features(model), backbone_out)  # adapters bypassed, norms/heads back to the base
    model.enable_alta_adapters()
    assert torch.equal(features(model), out_b)
    model.set_alta_adapter("a")
    assert torch.equal(features(model), out_a)
    model.set_alta_adapter(None)
    assert torch.equal(features(model), base_out)

    with pytest.raises(ValueError, match=r"already loaded \(\['a', 'b'\]\)"):
        model.load_alta_adapter(tmp_path / "a", adapter_name="a")
    with pytest.raises(ValueError, match=r"No ALTA adapter named 'c'; loaded adapters are \['a', 'b'\]"):
        model.set_alta_adapter("c")

    # Saving a non-active adapter by name writes what was loaded; the state never enters state_dict().
    model.save_alta_adapter(tmp_path / "b-again", adapter_name="b")
    again, original = (_read(tmp_path / d / ALTA_ADAPTER_WEIGHTS_NAME) for d in ("b-again", "b"))
    assert again.keys() == original.keys() and all(torch.equal(again[k], original[k]) for k in again)
    assert set(model.state_dict()) == set(make_model().state_dict())
    model.delete_alta_adapter("a")
    assert model.list_alta_adapters() == ["b"] and model.active_alta_adapter is None
    assert torch.equal(features(model), base_out)


def test_training_an_active_adapter_survives_switching(tmp_path):
    model = make_model()
    donor = make_model()
    train_adapter_set(donor, 1)
    donor.save_alta_adapter(tmp_path / "a")
    model.load_alta_adapter(tmp_path / "a", adapter_name="a")
    model.load_alta_adapter(tmp_path / "a", adapter_name="a2", activate=False)
    train_adapter_set(model, 3)  # keep training "a" in place
    trained = features(model)
    model.set_alta_adapter("a2")
    model.set_alta_adapter("a")
    assert torch.equal(features(model), trained)


def test_bare_model_uses_keys_relative_to_the_base_model(tmp_path):
    bare = make_model(cls=ToyAltaModel)
    bare.save_alta_adapter(tmp_path)
    with safe_open(str(tmp_path / ALTA_ADAPTER_WEIGHTS_NAME), framework="pt") as f:
        keys = set(f.keys())
    full = make_model()
    assert keys == {k.removeprefix("alta.") for k in full.alta_trainable_parameters()} - {
        "decoder_pred.weight",
        "decoder_pred.bias",
    }
    full.load_alta_adapter(tmp_path)  # decoder_pred keeps its own values; everything else loads
    assert torch.equal(features(full), features(bare))
