"""Shapes, input contracts, adapters and the trainable set of the ALTA models (tiny configs)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from configuration import load_preset
from modeling_alta import AltaAdapterConfig, AltaConfig, AltaForPreTraining, AltaModel
from modeling_alta.modeling_alta import (
    AltaBottleneckAdapter,
    get_2d_sincos_position_embedding,
    patchify,
    text_cap_lens,
    unpatchify,
)


class AltaModelTester:
    """Tiny configs and random inputs, in the spirit of transformers' model testers."""

    def __init__(self, batch_size: int = 2, seq_length: int = 16, image_size: int = 32, patch_size: int = 8):
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.image_size = image_size
        self.patch_size = patch_size

    def get_config(self, **overrides) -> AltaConfig:
        vision = dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=self.image_size,
            patch_size=self.patch_size,
            decoder_hidden_size=32,
            decoder_num_hidden_layers=1,
            decoder_num_attention_heads=4,
            decoder_intermediate_size=64,
            reconstruction_image_size=self.image_size * 2,
            reconstruction_patch_size=self.patch_size * 2,
        )
        text = dict(
            vocab_size=99,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        return AltaConfig(vision_config=vision, text_config=text, projection_dim=16, **overrides)

    def text_inputs(self, batch: int | None = None) -> dict[str, torch.Tensor]:
        batch = batch or self.batch_size
        ids = torch.randint(5, 99, (batch, self.seq_length))
        mask = torch.ones_like(ids)
        mask[0, self.seq_length // 2 :] = 0
        ids[0, self.seq_length // 2 :] = 0
        return {"input_ids": ids, "attention_mask": mask}

    def pretraining_inputs(self) -> dict[str, torch.Tensor]:
        b, s = self.batch_size, self.image_size
        text = self.text_inputs()
        labels = torch.full_like(text["input_ids"], -100)
        labels[:, 1:4] = text["input_ids"][:, 1:4]
        mlm = text["input_ids"].clone()
        mlm[:, 1:4] = 4
        return {
            "pixel_values": torch.randn(b, 4, 3, s, s),
            "reconstruction_pixel_values": torch.randn(b, 3, 2 * s, 2 * s),
            "view_mask": torch.tensor([[True, True, True, True], [True, False, True, False]][:b]),
            "mlm_input_ids": mlm,
            "mlm_labels": labels,
            **text,
        }


@pytest.fixture
def tester() -> AltaModelTester:
    return AltaModelTester()


def test_dual_encoder_shapes_and_logits(tester: AltaModelTester) -> None:
    model = AltaModel(tester.get_config()).eval()
    pixels = torch.randn(3, 3, tester.image_size, tester.image_size)
    text = tester.text_inputs(batch=5)
    with torch.no_grad():
        out = model(pixel_values=pixels, token_type_ids=torch.zeros_like(text["input_ids"]), **text)
        image = model.get_image_features(pixels).pooler_output
        words = model.get_text_features(**text).pooler_output
    assert out.logits_per_image.shape == (3, 5)
    assert out.logits_per_text.shape == (5, 3)
    assert image.shape == (3, 16) and words.shape == (5, 16)
    expected = model.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(words, dim=-1).t()
    torch.testing.assert_close(out.logits_per_image, expected)
    assert out.vision_model_output.last_hidden_state.shape == (
        3,
        1 + (tester.image_size // tester.patch_size) ** 2,
        32,
    )


def test_study_input_and_view_mask(tester: AltaModelTester) -> None:
    model = AltaModel(tester.get_config()).eval()
    s = tester.image_size
    study = torch.randn(2, 4, 3, s, s)
    study[1, 1] = 0
    study[1, 3] = 0
    explicit = torch.tensor([[True] * 4, [True, False, True, False]])
    with torch.no_grad():
        by_rule = model.get_image_features(study).pooler_output
        by_mask = model.get_image_features(study, view_mask=explicit).pooler_output
        # a partial study (V=2) pads to four slots with missing views under "all" pooling
        partial = model.get_image_features(study[:, :2], view_mask=explicit[:, :2]).pooler_output
        padded = model.get_image_features(
            torch.cat([study[:, :2], torch.zeros_like(study[:, :2])], 1),
            view_mask=torch.cat([explicit[:, :2], torch.zeros(2, 2, dtype=torch.bool)], 1),
        ).pooler_output
    torch.testing.assert_close(by_rule, by_mask)
    torch.testing.assert_close(partial, padded)
    # a missing view's pixels are ignored: they go through the missing-view token
    noisy = study.clone()
    noisy[1, 1] = torch.randn_like(noisy[1, 1])
    with torch.no_grad():
        torch.testing.assert_close(model.get_image_features(noisy, view_mask=explicit).pooler_output, by_mask)


def test_present_pooling_ignores_missing_slots(tester: AltaModelTester) -> None:
    model = AltaModel(tester.get_config()).eval()
    s = tester.image_size
    frontal = torch.randn(1, 3, s, s)
    with torch.no_grad():
        out = model.vision_model(
            frontal[:, None], view_mask=torch.ones(1, 1, dtype=torch.bool), study_pooling="present"
        )
        slots = model.vision_model(frontal[:, None], view_mask=torch.ones(1, 1, dtype=torch.bool), study_pooling="all")
    torch.testing.assert_close(out.pooler_output, out.slot_embeds[:, 0])
    torch.testing.assert_close(slots.pooler_output, slots.slot_embeds.mean(1))


def test_missing_frames_are_encoded_once_per_slot_in_inference(tester: AltaModelTester) -> None:
    """In eval without patch masking a missing view's frame depends on its slot alone, so it is encoded once per
    slot: the outputs equal encoding every frame, and the patch embedding sees fewer frames. Training, masking and
    per-frame hidden states take the full path."""
    config = tester.get_config()
    config.vision_config.pooling = "mean"  # every patch token counts, not only [CLS]
    model = AltaModel(config).eval()
    for adapter in model.alta_adapters():
        for param in adapter.parameters():
            torch.nn.init.normal_(param, 0.0, 0.02)
    s = tester.image_size
    view_mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 0, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    study = torch.randn(5, 4, 3, s, s) * view_mask[..., None, None, None]
    encoder = model.vision_model
    seen: list[int] = []
    hook = encoder.embeddings.patch_embed.register_forward_hook(lambda module, args, out: seen.append(out.shape[0]))
    try:
        for pooling in ("all", "present"):
            seen.clear()
            with torch.no_grad():
                shared = encoder(study, view_mask=view_mask, study_pooling=pooling)
                encoder.share_missing_frames = False
                full = encoder(study, view_mask=view_mask, study_pooling=pooling)
                encoder.share_missing_frames = True
                with_states = encoder(study, view_mask=view_mask, study_pooling=pooling, output_hidden_states=True)
            # 11 present frames + one stand-in for each of the 3 slots missing somewhere; then all 20 frames, twice
            assert seen == [14, 20, 20]
            torch.testing.assert_close(shared.pooler_output, full.pooler_output, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(shared.last_hidden_state, full.last_hidden_state, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(with_states.pooler_output, full.pooler_output, rtol=1e-5, atol=1e-6)
        seen.clear()
        model.train()
        encoder(study, view_mask=view_mask, mask_ratio=0.0)
        model.eval()
        with torch.no_grad():
            encoder(study, view_mask=view_mask, mask_ratio=0.5)
        assert seen == [20, 20]
    finally:
        hook.remove()


def test_any_image_size_divisible_by_patch(tester: AltaModelTester) -> None:
    model = AltaModel(tester.get_config()).eval()
    with torch.no_grad():
        out = model.vision_model(torch.randn(2, 3, 48, 40))
        patches = model.get_image_patch_features(torch.randn(1, 3, 48, 40))
    assert out.last_hidden_state.shape == (2, 1 + 6 * 5, 32)
    assert patches.shape == (1, 30, 16)
    with pytest.raises(ValueError, match=r"not divisible by the patch size 8"):
        model.vision_model(torch.randn(1, 3, 30, 32))


def test_bad_inputs_raise_clear_errors(tester: AltaModelTester) -> None:
    model = AltaModel(tester.get_config()).eval()
    with pytest.raises(ValueError, match=r"at most 4 views.*got 5"):
        model.get_image_features(torch.randn(1, 5, 3, 32, 32))
    with pytest.raises(ValueError, match=r"got shape \(3, 32, 32\)"):
        model.get_image_features(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"`view_mask` must have shape \(1, 2\)"):
        model.get_image_features(torch.randn(1, 2, 3, 32, 32), view_mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs both"):
        model(pixel_values=torch.randn(1, 3, 32, 32))


def test_config_validation_messages() -> None:
    with pytest.raises(
        ValueError, match=r"hidden size \(30\) is not a multiple of the number of attention heads \(4\)"
    ):
        AltaConfig(vision_config={"hidden_size": 30, "num_attention_heads": 4})
    with pytest.raises(ValueError, match=r"`mask_ratio` must be in \[0, 1\); got 1.5"):
        AltaConfig(vision_config={"mask_ratio": 1.5})
    with pytest.raises(ValueError, match=r"reconstruction grid must match"):
        AltaConfig(vision_config={"reconstruction_image_size": 512})
    with pytest.raises(TypeError, match=r"`vision_config` must be a dict or AltaVisionConfig; got int"):
        AltaConfig(vision_config=3)
    with pytest.raises(ValueError, match=r"Unknown `trainable_groups` \['everything'\]"):
        AltaAdapterConfig(trainable_groups=("everything",))


def test_config_round_trip(tmp_path, tester: AltaModelTester) -> None:
    config = tester.get_config(adapter_config=AltaAdapterConfig(bottleneck_size=4, towers=("vision",)))
    config.save_pretrained(tmp_path)
    loaded = AltaConfig.from_pretrained(tmp_path)
    assert loaded.vision_config.adapter.bottleneck_size == 4
    assert loaded.text_config.adapter is None
    assert loaded.to_diff_dict() == config.to_diff_dict()


def test_adapters_are_identity_at_init(tester: AltaModelTester) -> None:
    model = AltaModel(tester.get_config()).eval()
    pixels = torch.randn(2, 3, 32, 32)
    text = tester.text_inputs()
    with torch.no_grad():
        with_adapters = model(pixel_values=pixels, **text).logits_per_image
        model.set_adapters_enabled(False)
        without = model(pixel_values=pixels, **text).logits_per_image
    torch.testing.assert_close(with_adapters, without, atol=0, rtol=0)
    for adapter in model.alta_adapters():
        assert torch.count_nonzero(adapter.up_proj.weight) == 0


def test_adapter_placement_and_layers(tester: AltaModelTester) -> None:
    adapter = AltaAdapterConfig(placement=("attn",), layers=(1,), towers=("text",), bottleneck_ratio=0.5)
    model = AltaModel(tester.get_config(adapter_config=adapter))
    assert all(layer.attn_adapter is None and layer.mlp_adapter is None for layer in model.vision_model.layers)
    text_layers = model.text_model.encoder.layer
    assert text_layers[0].attn_adapter is None and text_layers[1].attn_adapter is not None
    assert text_layers[1].mlp_adapter is None
    assert text_layers[1].attn_adapter.down_proj.out_features == 16


def test_only_the_adapter_set_moves_after_three_steps(tester: AltaModelTester) -> None:
    torch.manual_seed(0)
    model = AltaForPreTraining(tester.get_config())
    model.train()
    model.freeze_backbone()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    inputs = tester.pretraining_inputs()
    for _ in range(3):
        optimizer.zero_grad()
        model(**inputs).loss.backward()
        optimizer.step()
        model.clamp_logit_scales()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved <= trainable
    frozen = set(before) - trainable
    assert not (moved & frozen)
    assert any("attn_adapter" in n for n in moved) and any("mlp_adapter" in n for n in moved)


def test_trainable_counts_at_full_size() -> None:
    # alta_reference.md §4 / trainable_full.json: 18,333,502 of 242,177,854 with the meta-device trick below
    with torch.device("meta"):
        model = AltaForPreTraining(load_preset("alta-base"))
    counts = model.freeze_backbone()
    assert counts == {"trainable": 18_333_502, "total": 242_177_854}
    groups = model._alta_group_members()
    adapters = sum(p.numel() for _, p in groups["adapters"])
    assert adapters == 2 * 7_100_928


def test_full_size_trainable_names_match_reference(parity_dir) -> None:
    import json

    from training.convert_original_checkpoint import map_official_key

    golden = json.loads((parity_dir / "trainable_full.json").read_text())
    with torch.device("meta"):
        model = AltaForPreTraining(load_preset("alta-base"))
    model.freeze_backbone()
    params = dict(model.named_parameters())

    def expand(groups: dict) -> dict[str, int]:
        out = {}
        for pattern, info in groups.items():
            names = [pattern.replace("*", str(i)) for i in range(info["tensors"])] if "*" in pattern else [pattern]
            for name in names:
                mapped = map_official_key(name)
                if mapped is not None:  # the tied MLM decoder weight is the (frozen) word embedding
                    out[mapped] = params[mapped].numel()
        return out

    trainable, frozen = expand(golden["trainable_groups"]), expand(golden["frozen_groups"])
    assert set(trainable) == {n for n, p in params.items() if p.requires_grad}
    assert set(frozen) == {n for n, p in params.items() if not p.requires_grad}
    assert sum(trainable.values()) == golden["trainable"]
    assert sum(trainable.values()) + sum(frozen.values()) == golden["total"]


def test_pretraining_losses_and_weights(tester: AltaModelTester) -> None:
    torch.manual_seed(0)
    model = AltaForPreTraining(tester.get_config()).eval()
    inputs = tester.pretraining_inputs()
    noise = torch.rand(2, 4, 16)
    with torch.no_grad():
        out = model(**inputs, mask_noise=noise)
        again = model(**inputs, mask_noise=noise)
    total = out.contrastive_loss + out.local_loss + out.reconstruction_loss + out.mlm_loss
    torch.testing.assert_close(out.loss, total)
    torch.testing.assert_close(out.loss, again.loss)
    assert out.mask.shape == (2, 16) and int(out.mask.sum(1)[0]) == 16 - int(16 * 0.25)
    assert out.image_local_embeds.shape == (2, 4 * 4, 16)
    assert out.text_local_embeds.shape == (2, tester.seq_length - 1, 16)
    model.config.mlm_loss_weight = 0.0
    model.config.reconstruction_loss_weight = 0.0
    with torch.no_grad():
        partial = model(**inputs, mask_noise=noise)
    assert partial.mlm_loss is None and partial.reconstruction_loss is None
    torch.testing.assert_close(partial.loss, out.contrastive_loss + out.local_loss)


def test_missing_reconstruction_image_is_a_clear_error(tester: AltaModelTester) -> None:
    model = AltaForPreTraining(tester.get_config())
    inputs = tester.pretraining_inputs()
    inputs.pop("reconstruction_pixel_values")
    with pytest.raises(ValueError, match="needs `reconstruction_pixel_values`"):
        model(**inputs)


def test_logit_scale_clamp(tester: AltaModelTester) -> None:
    model = AltaModel(tester.get_config())
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
        model.logit_scale_local2.fill_(-3.0)
    model.clamp_logit_scales()
    assert math.isclose(model.logit_scale.item(), math.log(100), rel_tol=1e-6)
    assert model.logit_scale_local2.item() == 0.0


def test_gradient_checkpointing_gives_same_gradients(tester: AltaModelTester) -> None:
    torch.manual_seed(0)
    config = tester.get_config()
    config.text_config.hidden_dropout_prob = config.text_config.attention_probs_dropout_prob = 0.0
    model = AltaForPreTraining(config)  # no dropout, so train-mode passes are deterministic
    inputs = tester.pretraining_inputs()
    noise = torch.rand(2, 4, 16)

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model.train()
        model(**inputs, mask_noise=noise).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    calls = []
    model.alta.text_model.encoder.layer[0].attention.register_forward_hook(lambda *_: calls.append(1))
    plain = grads()
    assert len(calls) == 1
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # transformers' switch reaches every block of both towers and of the decoder (GradientCheckpointingLayer)
    layers = [*model.alta.vision_model.layers, *model.alta.text_model.encoder.layer, *model.decoder.layers]
    assert all(layer.gradient_checkpointing for layer in layers)
    checkpointed = grads()
    assert len(calls) == 3  # the checkpointed layer ran again in the backward pass
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], msg=name)
    model.gradient_checkpointing_disable()
    assert not any(layer.gradient_checkpointing for layer in layers)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_on_cpu(tester: AltaModelTester, dtype: torch.dtype) -> None:
    model = AltaForPreTraining(tester.get_config())
    inputs = tester.pretraining_inputs()
    with torch.autocast("cpu", dtype=dtype):
        out = model(**inputs)
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_save_and_reload_keeps_tied_mlm_decoder(tmp_path, tester: AltaModelTester) -> None:
    model = AltaForPreTraining(tester.get_config()).eval()
    assert model.mlm_head.decoder.weight is model.alta.text_model.embeddings.word_embeddings.weight
    model.save_pretrained(tmp_path)
    reloaded = AltaForPreTraining.from_pretrained(tmp_path).eval()
    assert reloaded.mlm_head.decoder.weight is reloaded.alta.text_model.embeddings.word_embeddings.weight
    inputs = tester.pretraining_inputs()
    noise = torch.rand(2, 4, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs, mask_noise=noise).loss, reloaded(**inputs, mask_noise=noise).loss)
    base = AltaModel.from_pretrained(tmp_path).eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            base.get_image_features(pixels).pooler_output, model.alta.get_image_features(pixels).pooler_output
        )


def test_helpers() -> None:
    images = torch.randn(2, 3, 64, 64)
    patches = patchify(images, 16)
    assert patches.shape == (2, 16, 16 * 16 * 3)
    # channel-last flattening: element (row*p + col)*C + c of patch 0 is pixel (c, row, col)
    assert patches[0, 0, (2 * 16 + 5) * 3 + 1] == images[0, 1, 2, 5]
    torch.testing.assert_close(unpatchify(patches, 16), images)
    table = get_2d_sincos_position_embedding(8, 2, 3)
    assert table.shape == (7, 8) and torch.count_nonzero(table[0]) == 0
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert text_cap_lens(mask).tolist() == [2, 4]
    adapter = AltaBottleneckAdapter(8, AltaAdapterConfig(), skip=True)
    assert adapter.down_proj.out_features == 2


def test_mean_text_pooling(tester: AltaModelTester) -> None:
    config = tester.get_config()
    config.text_config.pooling = "mean"
    model = AltaModel(config).eval()
    text = tester.text_inputs()
    with torch.no_grad():
        hidden = model.text_model(**text).last_hidden_state
        mask = text["attention_mask"][..., None].float()
        expected = model.text_projection((hidden * mask).sum(1) / mask.sum(1))
        torch.testing.assert_close(model.get_text_features(**text).pooler_output, expected)
    with pytest.raises(ValueError, match=r"`pooling` must be 'cls' or 'mean'; got 'max'"):
        AltaConfig(text_config={"pooling": "max"})


def test_mean_frame_pooling(tester: AltaModelTester) -> None:
    config = tester.get_config()
    config.vision_config.pooling = "mean"
    model = AltaModel(config).eval()
    image = torch.randn(2, 3, 32, 32)
    study = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        single = model.vision_model(image)
        studies = model.vision_model(study, view_mask=torch.ones(2, 4, dtype=torch.bool))
    torch.testing.assert_close(single.pooler_output, single.last_hidden_state[:, 1:].mean(1))
    torch.testing.assert_close(studies.slot_embeds, studies.last_hidden_state[:, :, 1:].mean(2))
    torch.testing.assert_close(studies.pooler_output, studies.slot_embeds.mean(1))
    with pytest.raises(ValueError, match=r"`pooling` must be one of \('cls', 'mean'\); got 'max'"):
        AltaConfig(vision_config={"pooling": "max"})


def test_pretraining_honours_study_pooling(tester: AltaModelTester) -> None:
    config = tester.get_config()
    config.vision_config.study_pooling = "present"
    model = AltaForPreTraining(config).eval()
    inputs = tester.pretraining_inputs()
    with torch.no_grad():
        out = model(**inputs, mask_noise=torch.rand(2, 4, 16))
        present = inputs["view_mask"].float()[..., None]
        pooled = (out.slot_embeds * present).sum(1) / present.sum(1)
        expected = F.normalize(model.alta.vision_projection(pooled), dim=-1)
    torch.testing.assert_close(out.image_embeds, expected)


def test_sincos_positions_are_bit_identical_in_another_process() -> None:
    """A model rebuilt from its config in another process must hash like the one it was saved from: torch's
    vectorised sin/cos gave last-bit differences between processes (an intermittent adapter base mismatch)."""
    import subprocess
    import sys

    from modeling_alta.modeling_alta import get_2d_sincos_position_embedding

    here = get_2d_sincos_position_embedding(768, 14, 14)
    code = (
        "import hashlib; from modeling_alta.modeling_alta import get_2d_sincos_position_embedding as f; "
        "print(hashlib.sha256(f(768, 14, 14).numpy().tobytes()).hexdigest())"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    import hashlib

    assert there == hashlib.sha256(here.numpy().tobytes()).hexdigest()
    assert here.shape == (197, 768) and torch.equal(here[0], torch.zeros(768))
    # column channels first, then row channels; position (r=1, c=2) is row-major index 1 + 1*14 + 2
    assert torch.equal(here[1 + 14 + 2, :384], here[1 + 2, :384]) and torch.equal(
        here[1 + 14 + 2, 384:], here[1 + 14, 384:]
    )


def test_local_loss_leaves_out_a_text_without_words() -> None:
    """A report that is only [CLS] has no word to attend to: its pair is left out of the local term, which stays
    finite for the batch (and equals the loss over the other pairs), gradients included."""
    from modeling_alta.modeling_alta import alta_local_loss

    torch.manual_seed(0)
    images = torch.randn(3, 5, 8, requires_grad=True)
    words = torch.randn(3, 6, 8, requires_grad=True)
    scales = [torch.tensor(4.0), torch.tensor(5.0), torch.tensor(10.0)]
    loss = alta_local_loss(images, words, torch.tensor([4, 0, 2]), *scales, chunk_size=2)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(images.grad).all() and torch.isfinite(words.grad).all()
    assert images.grad[1].abs().sum() == 0 and words.grad[1].abs().sum() == 0  # the empty pair takes no part
    keep = torch.tensor([0, 2])
    expected = alta_local_loss(images[keep], words[keep], torch.tensor([4, 2]), *scales)
    torch.testing.assert_close(loss, expected)
    # across processes (gathered features, this process holding pairs 1..2), the same pairs are left out
    gathered = alta_local_loss(
        images[1:], words[1:], torch.tensor([0, 2]), *scales, images, words, torch.tensor([4, 0, 2]), offset=1
    )
    assert torch.isfinite(gathered)
    # nothing left: a zero that keeps the graph
    none = alta_local_loss(images[1:2], words[1:2], torch.tensor([0]), *scales)
    assert none.item() == 0.0 and none.requires_grad


def test_pretraining_batch_with_an_empty_report_has_finite_losses(tester: AltaModelTester) -> None:
    model = AltaForPreTraining(tester.get_config())
    inputs = tester.pretraining_inputs()
    inputs["attention_mask"][1] = 0
    inputs["attention_mask"][1, 0] = 1  # report 1 is [CLS] alone: 0 words for the local loss
    out = model(**inputs, mask_noise=torch.rand(2, 4, 16))
    assert out.cap_lens.tolist()[1] == 0
    assert torch.isfinite(out.local_loss) and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_impossible_studies_and_one_channel_images_are_refused(tester: AltaModelTester) -> None:
    model = AltaModel(tester.get_config()).eval()
    study = torch.randn(3, 4, 3, 32, 32)
    no_view = torch.tensor([[True, True, False, False], [False] * 4, [True] * 4])
    with pytest.raises(
        ValueError, match=r"Study/studies \[1\] of the batch have no view at all according to `view_mask`"
    ):
        model.get_image_features(study, view_mask=no_view)
    no_frontal = torch.tensor([[True] * 4, [True] * 4, [False, True, True, False]])
    with pytest.raises(ValueError, match=r"Study/studies \[2\] .* no current frontal view \(slot 0, 'frontal'\)"):
        model.get_image_features(study, view_mask=no_frontal)
    zero_frontal = study.clone()
    zero_frontal[0, 0] = 0
    with pytest.raises(ValueError, match=r"\[0\] .* no current frontal .* missing-view rule"):
        model.get_image_features(zero_frontal)
    with pytest.raises(ValueError, match=r"has 1 channel\(s\) but the model takes 3 .* replicate grayscale"):
        model.get_image_features(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"has 1 channel\(s\)"):
        model.get_image_features(torch.randn(2, 4, 1, 32, 32))
    pretraining = AltaForPreTraining(tester.get_config())
    inputs = tester.pretraining_inputs()
    inputs["view_mask"] = torch.tensor([[False, True, True, True], [True, False, True, False]])
    with pytest.raises(ValueError, match="no current frontal"):
        pretraining(**inputs)


def test_eager_attention_returns_weights_and_matches_sdpa(tester: AltaModelTester, tmp_path) -> None:
    config = tester.get_config()
    AltaModel(config).save_pretrained(tmp_path)
    sdpa = AltaModel.from_pretrained(tmp_path).eval()
    eager = AltaModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert sdpa.config.vision_config._attn_implementation == "sdpa"
    assert eager.config.text_config._attn_implementation == "eager"
    pixels = torch.randn(2, 4, 3, 32, 32)
    text = tester.text_inputs()
    with torch.no_grad():
        a = eager(pixel_values=pixels, output_attentions=True, output_hidden_states=True, **text)
        b = sdpa(pixel_values=pixels, **text)
    torch.testing.assert_close(a.logits_per_image, b.logits_per_image, atol=1e-5, rtol=1e-5)
    vision_attn, text_attn = a.vision_model_output.attentions, a.text_model_output.attentions
    assert len(vision_attn) == 2 and vision_attn[0].shape == (2 * 4, 4, 17, 17)  # frames x heads x tokens x tokens
    assert len(text_attn) == 2 and text_attn[0].shape == (2, 4, 16, 16)
    torch.testing.assert_close(vision_attn[0].sum(-1), torch.ones(8, 4, 17))
    assert text_attn[0][0, :, :, 8:].abs().max() == 0  # padding of text 0 gets no attention
    assert len(a.vision_model_output.hidden_states) == 3 and b.vision_model_output.hidden_states is None
    # the kernel is read at each call: switching takes effect at once, towers included
    sdpa.set_attn_implementation("eager")
    assert sdpa.config.vision_config._attn_implementation == "eager"
    with torch.no_grad():
        switched = sdpa.get_text_features(**text, output_attentions=True)
    assert switched.attentions[0].shape == (2, 4, 16, 16)
    sdpa.set_attn_implementation({"vision_config": "sdpa"})
    assert sdpa.config.vision_config._attn_implementation == "sdpa"
    assert sdpa.config.text_config._attn_implementation == "eager"


def test_output_switches_follow_the_config(tester: AltaModelTester) -> None:
    config = tester.get_config()
    config.output_hidden_states = True
    config.return_dict = False
    model = AltaModel(config).eval()
    text = tester.text_inputs()
    with torch.no_grad():
        out = model(pixel_values=torch.randn(2, 3, 32, 32), **text)
        features = model.get_text_features(**text)
        as_dict = model.get_text_features(**text, return_dict=True)
    assert isinstance(out, tuple) and isinstance(features, tuple)
    assert len(as_dict.hidden_states) == 3
    torch.testing.assert_close(features[1], as_dict.pooler_output)


def test_legacy_text_max_length_is_read_and_dropped(tmp_path) -> None:
    """Configs saved before the text length moved to the processor still load; nothing saves it any more."""
    from modeling_alta import AltaTextConfig

    config = AltaConfig(text_config={"max_length": 80, "hidden_size": 64, "num_attention_heads": 4})
    assert not hasattr(config.text_config, "max_length")
    config.text_config.save_pretrained(tmp_path / "text")  # transformers 5 refuses generation keys in configs
    saved = (tmp_path / "text" / "config.json").read_text()
    assert "max_length" not in saved
    assert AltaTextConfig.from_pretrained(tmp_path / "text").hidden_size == 64


# ---------------------------------------------------------------------------------------------------------------
# Cheaper dropout (issue 14): the same distribution and train/eval behaviour as F.dropout
# ---------------------------------------------------------------------------------------------------------------


def test_alta_dropout_has_the_dropout_distribution() -> None:
    from modeling_alta.modeling_alta import alta_dropout

    x = torch.ones(1000, 1000, requires_grad=True)
    torch.manual_seed(0)
    out = alta_dropout(x, 0.25, training=True)
    kept = out != 0
    share = kept.float().mean().item()
    assert abs(share - 0.75) < 5 * math.sqrt(0.75 * 0.25 / x.numel())  # 5 sigma
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.75))
    # independent elements: neighbours (same 32-bit draw) are not correlated
    a, b = kept.flatten()[0::4].float(), kept.flatten()[1::4].float()
    assert abs(((a - a.mean()) * (b - b.mean())).mean().item()) < 5 * 0.75 * 0.25 / math.sqrt(a.numel())
    out.sum().backward()
    torch.testing.assert_close(x.grad, out.detach())  # gradient = keep mask x scale
    # reproducible from the global seed, fresh draws otherwise
    torch.manual_seed(0)
    assert torch.equal(alta_dropout(x, 0.25, training=True), out)
    assert not torch.equal(alta_dropout(x, 0.25, training=True), out)
    # identity in eval or at p = 0; other probabilities are F.dropout's
    assert alta_dropout(x, 0.25, training=False) is x and alta_dropout(x, 0.0, training=True) is x
    torch.manual_seed(1)
    other = alta_dropout(x, 0.1, training=True)
    torch.manual_seed(1)
    assert torch.equal(other, F.dropout(x, 0.1, training=True))


def test_text_tower_dropout_modules_and_attention_kernel() -> None:
    from modeling_alta.modeling_alta import AltaDropout, _attention_function, alta_eager_attention

    config = load_preset("alta-tiny")
    model = AltaModel(config)
    text = model.text_model
    assert isinstance(text.embeddings.dropout, AltaDropout) and text.embeddings.dropout.p == 0.25
    text_config = config.text_config
    # with CPU attention dropout of a multiple of 1/256, eager attention with byte draws replaces SDPA's fallback
    assert _attention_function(text_config, False, 0.25, "cpu") is alta_eager_attention
    assert _attention_function(text_config, False, 0.1, "cpu") is not alta_eager_attention
    assert _attention_function(text_config, False, 0.25, "cuda") is not alta_eager_attention
    assert _attention_function(text_config, False, 0.0, "cpu") is not alta_eager_attention
    ids = torch.randint(5, 100, (2, 12))
    mask = torch.ones_like(ids)
    model.eval()
    with torch.no_grad():
        a, b = (model.get_text_features(ids, mask).pooler_output for _ in range(2))
    assert torch.equal(a, b)  # eval: no dropout
    model.train()
    torch.manual_seed(3)
    c = model.get_text_features(ids, mask).pooler_output
    torch.manual_seed(3)
    d = model.get_text_features(ids, mask).pooler_output
    assert torch.equal(c, d) and not torch.allclose(c, a)  # train: dropout, reproducible from the seed


def test_vision_attention_backward_stacks_the_qkv_gradient_once() -> None:
    """q, k, v come from one `unbind` of the fused projection: its backward writes the three gradients into one
    tensor, where indexing them out would zero-fill a qkv-sized gradient three times and add the three up."""
    torch.manual_seed(0)
    model = AltaModel(load_preset("alta-tiny")).train()
    layer = model.vision_model.layers[0]
    hidden = torch.randn(2, 5, layer.norm1.normalized_shape[0], requires_grad=True)
    out, _ = layer.attn(hidden)
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    names = {type(node).__name__ for node in seen}
    assert "UnbindBackward0" in names and "SelectBackward0" not in names, sorted(names)


def test_mlm_head_runs_on_masked_positions_only_by_default() -> None:
    torch.manual_seed(0)
    config = load_preset("alta-tiny", vision_config={"image_size": 32, "reconstruction_image_size": 64})
    model = AltaForPreTraining(config).eval()
    batch, length = 3, 10
    ids = torch.randint(5, 100, (batch, length))
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 5], labels[1, 7], labels[2, 1] = ids[0, 2], ids[1, 5], ids[1, 7], ids[2, 1]
    inputs = {
        "pixel_values": torch.randn(batch, 4, 3, 32, 32),
        "reconstruction_pixel_values": torch.randn(batch, 3, 64, 64),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mlm_input_ids": torch.where(labels != -100, torch.full_like(ids, 4), ids),
        "mlm_labels": labels,
        "mask_noise": torch.rand(batch, 4, config.vision_config.num_patches),
    }
    masked_only = model(**inputs)
    full = model(**inputs, return_full_mlm_logits=True)
    assert masked_only.mlm_logits.shape == (4, config.text_config.vocab_size)
    assert full.mlm_logits.shape == (batch, length, config.text_config.vocab_size)
    torch.testing.assert_close(masked_only.mlm_logits, full.mlm_logits[labels != -100], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(masked_only.mlm_loss, full.mlm_loss, atol=0, rtol=1e-6)
    assert int(masked_only.mlm_num_tokens) == 4
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model(**inputs, return_full_mlm_logits=flag).mlm_loss.backward()
        grads.append(model.mlm_head.transform.dense.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
