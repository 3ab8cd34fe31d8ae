"""PEFT on ALTA: LoRA and IA3 through `get_peft_model` with the documented target names, only their parameters
move in training, and the saved adapter reloads exactly with `PeftModel.from_pretrained`."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel

from configuration import load_preset
from modeling_alta import AltaForPreTraining
from training.peft_utils import (
    alta_target_modules,
    apply_adapter_method,
    ia3_config_for_alta,
    lora_config_for_alta,
    trainable_summary,
)


def make_model(seed: int = 0) -> AltaForPreTraining:
    torch.manual_seed(seed)
    return AltaForPreTraining(load_preset("alta-tiny")).eval()


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 421, (4, 10), generator=g)
    return {"pixel_values": torch.randn(4, 3, 224, 224, generator=g), "input_ids": ids}


def features(model) -> torch.Tensor:
    x = batch()
    image = model.alta.get_image_features(x["pixel_values"]).pooler_output
    text = model.alta.get_text_features(x["input_ids"], attention_mask=torch.ones_like(x["input_ids"])).pooler_output
    return torch.cat([image, text], dim=-1)


def contrastive_step(model, optimizer) -> None:
    x = batch()
    image = F.normalize(model.alta.get_image_features(x["pixel_values"]).pooler_output, dim=-1)
    text = F.normalize(model.alta.get_text_features(x["input_ids"]).pooler_output, dim=-1)
    logits = 14.3 * image @ text.T
    labels = torch.arange(len(logits))
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_target_modules_name_the_tower_linears_only():
    names = [n for n, m in make_model().named_modules() if isinstance(m, torch.nn.Linear)]
    lora = [n for n in names if re.fullmatch(alta_target_modules(), n)]
    assert len(lora) == 2 * 4 + 2 * 6  # 2 ViT blocks x 4 Linears + 2 BERT layers x 6 Linears
    assert not [n for n in lora if n.startswith("decoder.") or "adapter" in n or "projection" in n]
    text_attn = [n for n in names if re.fullmatch(alta_target_modules(("text",), ("attn",), layers=[1]), n)]
    assert text_attn == [
        f"alta.text_model.encoder.layer.1.{s}"
        for s in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
    ]
    text_mlp = [n for n in names if re.fullmatch(alta_target_modules(("text",), ("mlp",)), n)]
    assert text_mlp == [
        f"alta.text_model.encoder.layer.{i}.{s}" for i in (0, 1) for s in ("intermediate.dense", "output.dense")
    ]
    with pytest.raises(
        ValueError, match=r"`towers` must be a non-empty subset of \('vision', 'text'\); got \['audio'\]"
    ):
        alta_target_modules(("audio",))


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_peft_method_trains_only_its_parameters_and_reloads(method, tmp_path):
    model = apply_adapter_method(make_model(), method)
    assert isinstance(model, PeftModel)
    marker = "lora_" if method == "lora" else "ia3_l"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(marker in n or "modules_to_save" in n for n in trainable), sorted(trainable)[:5]
    if method == "ia3":  # the feed-forward modules scale their input (in_features), the others their output
        ia3 = dict(model.named_parameters())
        assert ia3["base_model.model.alta.text_model.encoder.layer.0.output.dense.ia3_l.default"].shape == (1, 256)
        assert ia3["base_model.model.alta.vision_model.layers.0.attn.qkv.ia3_l.default"].shape == (192, 1)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        contrastive_step(model, optimizer)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable, sorted(changed - trainable)[:5]
    model.clamp_logit_scales()  # ALTA methods stay reachable through the PeftModel

    model.eval()
    with torch.no_grad():
        expected = features(model)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(make_model(), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(features(reloaded), expected)
        assert not torch.equal(features(make_model()), expected)


def test_presets_and_methods():
    assert lora_config_for_alta(r=4).r == 4
    assert set(ia3_config_for_alta(towers=("vision",)).modules_to_save) >= {"vision_projection"}
    assert trainable_summary(apply_adapter_method(make_model(), "alta")) == {"trainable": 327_977, "total": 727_593}
    full = apply_adapter_method(make_model(), "full")
    frozen = sorted(n for n, p in full.named_parameters() if not p.requires_grad)
    assert frozen == [
        "alta.vision_model.embeddings.missing_token",
        "alta.vision_model.embeddings.position_embedding",
        "decoder.position_embedding",
    ]
    # align.py passes the same options to both methods; IA3 drops the LoRA-only ones.
    lora = apply_adapter_method(make_model(), "lora", r=4, alpha=8, dropout=0.1)
    assert lora.peft_config["default"].r == 4 and lora.peft_config["default"].lora_alpha == 8
    ia3 = apply_adapter_method(make_model(), "ia3", r=4, alpha=8, dropout=0.1)
    assert type(ia3.peft_config["default"]).__name__ == "IA3Config"
    with pytest.raises(TypeError, match="either `alpha` or `lora_alpha`"):
        apply_adapter_method(make_model(), "lora", alpha=8, lora_alpha=16)
    with pytest.raises(ValueError, match=r"Unknown adapter method 'prefix'"):
        apply_adapter_method(make_model(), "prefix")
