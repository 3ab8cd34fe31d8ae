"""ALTA native adapters as artifacts, on the real alta-tiny model: the files hold only the adapter set, a fresh process
reloads them exactly, a mismatched base is refused with a message naming both sides, several named adapters switch
and disable."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open

from modeling_alta.adapters_alta import ALTA_ADAPTER_CONFIG_NAME, ALTA_ADAPTER_WEIGHTS_NAME
from tests.hub.alta_classes import AltaModel, features, make_model, train_adapter_set
from tests.hub.fake_hub import run_python


# alta_reference.md §4: the tiny golden config trains 327,977 of 727,593 values; 99 tensors in the set.
TINY_TRAINABLE, TINY_TOTAL, TINY_TENSORS = 327_977, 727_593, 99


def _read(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__


def test_adapter_files_hold_only_the_adapter_set(tmp_path):
    model = make_model()
    assert model.freeze_backbone() == {"trainable": TINY_TRAINABLE, "total": TINY_TOTAL}
    adapter_set = {k.removeprefix("alta."): p for k, p in model.alta_trainable_parameters().items()}
    model.save_alta_adapter(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ALTA_ADAPTER_CONFIG_NAME, ALTA_ADAPTER_WEIGHTS_NAME]

    weights = tmp_path / ALTA_ADAPTER_WEIGHTS_NAME
    tensors = _read(weights)
    assert sorted(tensors) == sorted(adapter_set) and len(tensors) == TINY_TENSORS
    assert all(torch.equal(tensors[k], adapter_set[k]) for k in tensors)
    n_values = sum(t.numel() for t in tensors.values())
    assert n_values == model.num_alta_adapter_parameters() == TINY_TRAINABLE
    # Byte size: the 8-byte header length + the JSON header + the fp32 payload, nothing else.
    raw = weights.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert len(raw) == 8 + header_len + 4 * TINY_TRAINABLE
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert not {f"alta.{k}" for k in tensors} & frozen and not set(tensors) & frozen

    config = json.loads((tmp_path / ALTA_ADAPTER_CONFIG_NAME).read_text())
    assert config["adapter_format"] == "alta" and config["peft_type"] == "ALTA"
    assert config["num_adapter_parameters"] == TINY_TRAINABLE and config["num_adapter_tensors"] == TINY_TENSORS
    assert config["bottleneck_ratio"] == 0.25 and config["placement"] == ["attn", "mlp"]
    assert config["tower_bottleneck_sizes"] == {"vision": 16, "text": 16}
    # The fingerprint covers the frozen AltaModel part only (not the MAE decoder, MLM decoder or bert_embed).
    base_frozen = sum(p.numel() for n, p in model.alta.named_parameters() if not p.requires_grad)
    assert config["base_model_fingerprint"]["num_parameters"] == base_frozen


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
from tests.hub.alta_classes import AltaForPreTraining, AltaModel, features
expected = torch.load({str(tmp_path / "expected.pt")!r})
base = AltaForPreTraining.from_pretrained({str(tmp_path / "base")!r}).eval()
before = features(base)
info = base.load_alta_adapter({str(tmp_path / "adapter")!r})
print("EXACT", torch.equal(features(base), expected), "CHANGED", not torch.equal(before, expected), len(info.loaded_keys))
# The same adapter on the inference class: the pre-training-only tensors are skipped, the features are the same.
bare = AltaModel.from_pretrained({str(tmp_path / "base")!r}).eval()
bare.load_alta_adapter({str(tmp_path / "adapter")!r})
print("BARE", torch.equal(features(bare), expected))
# transformers' entry point: from_pretrained(<adapter folder>) loads the recorded base, then the adapter.
auto = AltaForPreTraining.from_pretrained({str(tmp_path / "adapter")!r}).eval()
print("FROM_PRETRAINED", torch.equal(features(auto), expected), auto.list_alta_adapters())
""",
        cwd=tmp_path,
    )
    assert f"EXACT True CHANGED True {TINY_TENSORS}" in out, out
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
    other_weights.load_alta_adapter(tmp_path, verify_base_weights=False)  # an explicit opt-out loads
    assert other_weights.active_alta_adapter == "default"

    one_changed = make_model(seed=0)
    with torch.no_grad():
        one_changed.alta.vision_model.embeddings.patch_embed.weight[0, 0, 0, 0] += 1e-3
    with pytest.raises(
        ValueError, match=r"Tensors that differ \(1 of \d+\): \['vision_model.embeddings.patch_embed.weight'\]"
    ):
        one_changed.load_alta_adapter(tmp_path)

    # Same seed, same tensor shapes, same values: only the head count differs, which no tensor shows.
    other_heads_count = make_model(seed=0, vision_config={"num_attention_heads": 2})
    fingerprint, base = other_heads_count.alta_base_fingerprint(), make_model(seed=0).alta_base_fingerprint()
    assert (fingerprint["structure"], fingerprint["weights"]) == (base["structure"], base["weights"])
    for verify in (True, False):
        with pytest.raises(
            ValueError,
            match=r"base of another architecture .*vision_config.num_attention_heads: adapter base 4, this model 2",
        ):
            other_heads_count.load_alta_adapter(tmp_path, verify_base_weights=verify)
    assert other_heads_count.list_alta_adapters() == []

    other_arch = make_model(vision_config={"intermediate_size": 128})  # same adapters, other frozen MLPs
    with pytest.raises(ValueError, match=r"different base model: it records base 'user/alta-base'.*this AltaFor"):
        other_arch.load_alta_adapter(tmp_path)

    wider = make_model(adapter_config={"bottleneck_size": 8})
    with pytest.raises(ValueError, match=r"vision bottleneck: file=16, model=8; text bottleneck: file=16, model=8"):
        wider.load_alta_adapter(tmp_path)

    vision_only = make_model(adapter_config={"towers": ["vision"]})
    with pytest.raises(ValueError, match=r"text adapters: file=yes, model=no"):
        vision_only.load_alta_adapter(tmp_path)

    deeper = make_model(text_config={"num_hidden_layers": 3})
    with pytest.raises(ValueError, match=r"lacks 8 adapter-module parameter"):
        deeper.load_alta_adapter(tmp_path)

    other_heads = make_model(projection_dim=64)
    with pytest.raises(ValueError, match=r"shape differs.*file \(128, 64\) vs model \(64, 64\)"):
        other_heads.load_alta_adapter(tmp_path)

    peft_like = tmp_path / "peft"
    peft_like.mkdir()
    (peft_like / ALTA_ADAPTER_CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA"}))
    (peft_like / ALTA_ADAPTER_WEIGHTS_NAME).write_bytes((tmp_path / ALTA_ADAPTER_WEIGHTS_NAME).read_bytes())
    with pytest.raises(ValueError, match=r"not an ALTA adapter config.*peft_type='LORA'"):
        model.load_alta_adapter(peft_like)
    with pytest.raises(FileNotFoundError, match=r"adapter_model.safetensors is missing"):
        (peft_like / ALTA_ADAPTER_WEIGHTS_NAME).unlink()
        model.load_alta_adapter(peft_like)


def test_named_adapters_switch_disable_enable(tmp_path):
    model = make_model()
    train_adapter_set(model, 9)  # a base with its own trained adapter set, like the released ALTA checkpoint
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
    # Adapters bypassed and norms/heads/scales back at the base's values: the backbone-only base.
    assert torch.equal(features(model), backbone_out) and not torch.equal(backbone_out, base_out)
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

    # Saving a non-active adapter by name writes what was loaded; the adapter state never enters state_dict().
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
    assert not torch.equal(features(model), trained)
    model.set_alta_adapter("a")
    assert torch.equal(features(model), trained)


def test_inference_model_adapter_loads_onto_the_pretraining_model(tmp_path):
    bare = make_model(cls=AltaModel)
    train_adapter_set(bare, 4)
    bare.save_alta_adapter(tmp_path)
    keys = set(_read(tmp_path / ALTA_ADAPTER_WEIGHTS_NAME))
    full = make_model()
    assert keys == {k.removeprefix("alta.") for k in full.alta_trainable_parameters() if k.startswith("alta.")}
    full.load_alta_adapter(tmp_path)  # the decoder/MLM parts keep their own values; the base-model part loads
    assert torch.equal(features(full), features(bare))


# ---------------------------------------------------------------------------------------------------------------
# Tampering, malformed configs, cast bases, mistyped folders (issue 12)
# ---------------------------------------------------------------------------------------------------------------


def test_a_tampered_adapter_cannot_overwrite_frozen_base_weights(tmp_path):
    from safetensors.torch import save_file

    model = make_model()
    train_adapter_set(model, seed=1)
    model.save_alta_adapter(tmp_path)
    weights = tmp_path / ALTA_ADAPTER_WEIGHTS_NAME
    tensors = _read(weights)
    target = "vision_model.layers.0.attn.qkv.weight"
    base = make_model()
    frozen = base.alta.vision_model.layers[0].attn.qkv.weight
    tensors[target] = torch.zeros_like(frozen)  # the probe's payload: zero a frozen attention matrix
    save_file(tensors, str(weights), metadata={"format": "pt", "adapter_format": "alta"})
    before = frozen.detach().clone()
    with pytest.raises(
        ValueError, match=rf"outside its declared trainable set .*\['{target}'\].*never the frozen base"
    ):
        base.load_alta_adapter(tmp_path)
    assert torch.equal(frozen, before) and base.list_alta_adapters() == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("towers", 5, r"field 'towers' must be a list of \['vision', 'text'\]; got 5"),
        ("towers", ["vision", "audio"], r"field 'towers' must be a list of"),
        ("trainable_groups", "adapters", r"field 'trainable_groups' must be a list of \['adapters'"),
        ("tower_bottleneck_sizes", [16, 16], r"field 'tower_bottleneck_sizes' must be an object"),
        ("format_version", "1", r"field 'format_version' must be an integer; got '1'"),
        ("mlp_scale", "half", r"field 'mlp_scale' must be a number; got 'half'"),
        ("layers", "all", r"field 'layers' must be null or a list of ints; got 'all'"),
        ("base_model_fingerprint", {"structure": 3, "weights": "x"}, r"'base_model_fingerprint.structure' must be"),
        ("bottleneck_ratio", 0, r"`bottleneck_ratio` must be in \(0, 4\]; got 0"),
        ("trainable_groups", None, r"field 'trainable_groups' is missing"),
    ],
)
def test_adapter_config_fields_are_validated_by_name(tmp_path, field, value, message):
    make_model().save_alta_adapter(tmp_path)
    path = tmp_path / ALTA_ADAPTER_CONFIG_NAME
    data = json.loads(path.read_text())
    if value is None:
        del data[field]
    else:
        data[field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"{path}: .*{message}"):
        make_model().load_alta_adapter(tmp_path)


def test_verify_base_weights_false_loads_onto_a_bfloat16_base(tmp_path, caplog):
    model = make_model()
    train_adapter_set(model, seed=1)
    model.save_alta_adapter(tmp_path)
    expected = features(model)
    cast = make_model().to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"other base weights.*cast dtype.*verify_base_weights=False"):
        cast.load_alta_adapter(tmp_path)
    cast.load_alta_adapter(tmp_path, verify_base_weights=False)  # as documented
    assert cast.active_alta_adapter == "default"
    assert any("Loading anyway (verify_base_weights=False)" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(features(cast).float(), expected, atol=0.1, rtol=0.05)
    assert not torch.allclose(features(make_model().to(torch.bfloat16)).float(), expected, atol=0.1, rtol=0.05)


def test_a_mistyped_folder_says_it_does_not_exist(tmp_path):
    model = make_model()
    with pytest.raises(FileNotFoundError, match=r"ALTA adapter folder '\./no-such-adapter' does not exist"):
        model.load_alta_adapter("./no-such-adapter")
    with pytest.raises(FileNotFoundError, match=r"no local folder of that name .* could not be fetched from the Hub"):
        model.load_alta_adapter("someone/no-such-adapter")  # tests run offline: not on the Hub either
    with pytest.raises(FileNotFoundError, match=rf"model folder '{tmp_path}/typo/model' does not exist"):
        AltaModel.from_pretrained(tmp_path / "typo" / "model")
    with pytest.raises(FileNotFoundError, match=r"model 'someone/no-such-model': there is no local folder .* Hub"):
        AltaModel.from_pretrained("someone/no-such-model")
