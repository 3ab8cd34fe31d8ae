"""Parity with the reference implementation's goldens (`ALTA_PARITY_DIR`, default ../shared/parity).

The golden checkpoint is converted with `alta-convert` (as a real subprocess), and every size is read from that
folder (`meta.json` for the attention heads, which weights cannot reveal; the checkpoint and the text config for
the rest), so the same test runs on golden folders of other sizes. When `ALTA_PARITY_DIR` is set, a missing file
is an error, never a skip. Tolerances are the goldens' README's: 1e-5 for features, logits and losses; 1e-4
relative for gradients. Every model-level check runs on both attention paths: `sdpa` (the default) and `eager`
(attention written out, the path that returns attention weights).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from modeling_alta import AltaForPreTraining, AltaModel
from modeling_alta.modeling_alta import alta_contrastive_loss, alta_local_loss
from training.convert_original_checkpoint import map_official_key

from .conftest import REPO_ROOT


FEATURE_TOL = {"atol": 1e-5, "rtol": 1e-5}
LOSS_TOL = {"atol": 0.0, "rtol": 1e-5}
SCENARIOS = ("full", "missing")
ATTENTION = ("sdpa", "eager")


def _load(parity: Path, name: str) -> dict[str, torch.Tensor]:
    path = parity / name
    if not path.is_file():
        raise FileNotFoundError(f"golden file missing: {path}")
    return load_file(str(path))


def _json(parity: Path, name: str) -> dict:
    path = parity / name
    if not path.is_file():
        raise FileNotFoundError(f"golden file missing: {path}")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def converted(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    meta = _json(parity_dir, "meta.json")
    vision = meta["vision_config"]
    out = tmp_path_factory.mktemp("alta-parity")
    checkpoint = parity_dir / "ALTA_tiny.pth"
    text_dir = parity_dir / "BiomedVLP-CXR-BERT-specialized"
    for path in (checkpoint, text_dir):
        if not path.exists():
            raise FileNotFoundError(f"golden input missing: {path}")
    cmd = [
        sys.executable,
        "-m",
        "training.convert_original_checkpoint",
        "--checkpoint",
        str(checkpoint),
        "--text-model",
        str(text_dir),
        "--output",
        str(out),
        "--vision-num-attention-heads",
        str(vision["num_heads"]),
        "--decoder-num-attention-heads",
        str(vision["decoder_num_heads"]),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["unused"] == [] and report["initialised_fresh"] == []
    return out


@pytest.fixture(scope="module", params=ATTENTION)
def attn_implementation(request: pytest.FixtureRequest) -> str:
    return request.param


def _load_model(cls, folder: Path, attn_implementation: str):
    model = cls.from_pretrained(folder, attn_implementation=attn_implementation).eval()
    # every attention module of both towers (and the decoder) runs the requested kernel
    for sub in (model.config, model.config.vision_config, model.config.text_config):
        assert sub._attn_implementation == attn_implementation
    return model


@pytest.fixture(scope="module")
def pretraining_model(converted: Path, attn_implementation: str) -> AltaForPreTraining:
    torch.set_num_threads(1)
    return _load_model(AltaForPreTraining, converted, attn_implementation)


@pytest.fixture(scope="module")
def dual_encoder(converted: Path, attn_implementation: str) -> AltaModel:
    return _load_model(AltaModel, converted, attn_implementation)


def test_sizes_come_from_the_golden_folder(parity_dir: Path, pretraining_model: AltaForPreTraining) -> None:
    meta = _json(parity_dir, "meta.json")
    vision, text = pretraining_model.config.vision_config, pretraining_model.config.text_config
    assert vision.hidden_size == meta["vision_config"]["embed_dim"]
    assert vision.num_hidden_layers == meta["vision_config"]["depth"]
    assert vision.decoder_num_hidden_layers == meta["vision_config"]["decoder_depth"]
    assert vision.image_size == meta["vision_config"]["img_size"]
    assert text.vocab_size == meta["vocab_size"]
    assert text.num_hidden_layers == meta["text_config"]["num_hidden_layers"]


def test_state_dict_round_trip_is_exact(parity_dir: Path, pretraining_model: AltaForPreTraining) -> None:
    golden = _load(parity_dir, "ALTA_tiny.safetensors")
    ours = pretraining_model.state_dict()
    for key, value in golden.items():
        mapped = map_official_key(key)
        if mapped is None:  # tied copies: the MLM decoder weight/bias
            continue
        torch.testing.assert_close(ours[mapped], value.float(), atol=0, rtol=0, msg=key)


def test_image_features(parity_dir: Path, dual_encoder: AltaModel) -> None:
    golden = _load(parity_dir, "img_feature.safetensors")
    with torch.no_grad():
        feats = F.normalize(dual_encoder.get_image_features(golden["x"].float()).pooler_output, dim=-1)
    torch.testing.assert_close(feats, golden["img_feature"], **FEATURE_TOL)


def test_text_features(parity_dir: Path, dual_encoder: AltaModel) -> None:
    golden = _load(parity_dir, "txt_feature.safetensors")
    with torch.no_grad():
        out = dual_encoder.text_model(golden["input_ids"], golden["attention_mask"], golden["token_type_ids"])
        projected = dual_encoder.get_text_features(
            golden["input_ids"], golden["attention_mask"], golden["token_type_ids"]
        ).pooler_output
    torch.testing.assert_close(out.last_hidden_state, golden["last_hidden_state"], **FEATURE_TOL)
    torch.testing.assert_close(projected, golden["cls_projected_embedding_unnormalised"], **FEATURE_TOL)
    torch.testing.assert_close(F.normalize(projected, dim=-1), golden["txt_feature"], **FEATURE_TOL)


def test_zero_shot_logits(parity_dir: Path, dual_encoder: AltaModel) -> None:
    golden = _load(parity_dir, "zeroshot.safetensors")
    image = F.normalize(_load(parity_dir, "img_feature.safetensors")["img_feature"], dim=-1)
    classes = _json(parity_dir, "zeroshot.json")["class_order"]
    class_features = []
    with torch.no_grad():
        for name in classes:
            key = name.replace(" ", "_")
            prompts = dual_encoder.get_text_features(
                golden[f"{key}.input_ids"], golden[f"{key}.attention_mask"]
            ).pooler_output
            torch.testing.assert_close(prompts, golden[f"{key}.prompt_embeddings"], **FEATURE_TOL)
            class_feature = F.normalize(prompts.mean(0), dim=-1)
            torch.testing.assert_close(class_feature, golden[f"{key}.class_feature"], **FEATURE_TOL)
            class_features.append(class_feature)
        class_features = torch.stack(class_features)
        torch.testing.assert_close(class_features, golden["class_features"], **FEATURE_TOL)
        torch.testing.assert_close(image @ class_features.t(), golden["logits"], **FEATURE_TOL)
        pos = dual_encoder.get_text_features(golden["rsna.pos_input_ids"], golden["rsna.pos_attention_mask"])
        neg = dual_encoder.get_text_features(golden["rsna.neg_input_ids"], golden["rsna.neg_attention_mask"])
        pos, neg = F.normalize(pos.pooler_output, dim=-1), F.normalize(neg.pooler_output, dim=-1)
    torch.testing.assert_close(pos, golden["rsna.pos_feature"], **FEATURE_TOL)
    torch.testing.assert_close(neg, golden["rsna.neg_feature"], **FEATURE_TOL)
    sims = torch.stack([(image @ pos.t())[:, 0], (image @ neg.t())[:, 0]], dim=1)
    torch.testing.assert_close(sims[:, 0], golden["rsna.pos_sim"], **FEATURE_TOL)
    torch.testing.assert_close(sims.softmax(dim=1)[:, 0], golden["rsna.predict_soft"], **FEATURE_TOL)


def _train_inputs(golden: dict[str, torch.Tensor], scenario: str) -> dict[str, torch.Tensor]:
    present = golden[f"present_{scenario}"].bool()
    side = [golden[k].float() for k in ("a_img", "l_img", "la_img")]
    side = [img * present[:, i + 1, None, None, None] for i, img in enumerate(side)]
    recon = golden["img"].float()
    slot0 = torch.zeros_like(side[0])  # derived from `reconstruction_pixel_values` inside the model
    return {
        "pixel_values": torch.stack([slot0, *side], dim=1),
        "reconstruction_pixel_values": recon,
        "input_ids": golden["ids"],
        "attention_mask": golden["attention_mask"],
        "mlm_input_ids": golden["inputs"],
        "mlm_labels": golden["labels"],
        "mask_noise": golden[f"{scenario}.noise"],
    }


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("norm_pix", [False, True], ids=["plain", "norm_pix"])
def test_training_losses(
    parity_dir: Path, pretraining_model: AltaForPreTraining, scenario: str, norm_pix: bool
) -> None:
    golden = _load(parity_dir, "train_forward.safetensors")
    pretraining_model.config.vision_config.norm_pix_loss = norm_pix
    with torch.no_grad():
        out = pretraining_model(**_train_inputs(golden, scenario))
    losses = torch.stack([out.contrastive_loss, out.local_loss, out.reconstruction_loss, out.mlm_loss])
    expected = golden[f"{scenario}.{'norm_pix' if norm_pix else 'plain'}.losses"]
    torch.testing.assert_close(losses, expected, **LOSS_TOL)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_training_intermediates(parity_dir: Path, pretraining_model: AltaForPreTraining, scenario: str) -> None:
    golden = _load(parity_dir, "train_forward.safetensors")
    with torch.no_grad():
        out = pretraining_model(**_train_inputs(golden, scenario))
    g = lambda name: golden[f"{scenario}.{name}"]  # noqa: E731
    torch.testing.assert_close(out.slot_embeds, g("cls_embed"), **FEATURE_TOL)
    torch.testing.assert_close(out.patch_embeds, g("others_embed"), **FEATURE_TOL)
    torch.testing.assert_close(out.mask, g("mask"), atol=0, rtol=0)
    torch.testing.assert_close(out.ids_restore, g("ids_restore"), atol=0, rtol=0)
    torch.testing.assert_close(out.image_embeds, F.normalize(g("img_global_proj"), dim=-1), **FEATURE_TOL)
    torch.testing.assert_close(out.image_local_embeds, g("img_local_proj"), **FEATURE_TOL)
    torch.testing.assert_close(out.image_conditioning, g("bert_embed_out"), **FEATURE_TOL)
    torch.testing.assert_close(out.text_embeds, F.normalize(g("txt_cls_projected"), dim=-1), **FEATURE_TOL)
    torch.testing.assert_close(out.text_local_embeds, g("txt_local_projected"), **FEATURE_TOL)
    # By default the MLM head runs on the masked positions only; the full logits are still compared at them.
    torch.testing.assert_close(out.mlm_logits, g("txt_logits_at_masked"), **FEATURE_TOL)
    with torch.no_grad():
        full = pretraining_model(**_train_inputs(golden, scenario), return_full_mlm_logits=True)
    masked = golden["labels"] != -100
    assert full.mlm_logits.shape == (*golden["labels"].shape, g("txt_logits_at_masked").shape[-1])
    torch.testing.assert_close(full.mlm_logits[masked], g("txt_logits_at_masked"), **FEATURE_TOL)
    torch.testing.assert_close(full.mlm_loss, out.mlm_loss, **LOSS_TOL)
    torch.testing.assert_close(out.reconstruction_logits[..., :96], g("pred_first96"), **FEATURE_TOL)
    latent_tokens = torch.cat([out.slot_embeds[:, :1], out.patch_embeds[:, : g("latent").shape[1] - 1]], dim=1)
    torch.testing.assert_close(latent_tokens, g("latent"), **FEATURE_TOL)


def test_slot0_resize_matches_reference(parity_dir: Path) -> None:
    golden = _load(parity_dir, "train_forward.safetensors")
    resized = F.interpolate(
        golden["img"].float(), size=golden["img_224"].shape[-2:], mode="bicubic", antialias=True, align_corners=False
    )
    torch.testing.assert_close(resized, golden["img_224"], atol=0, rtol=0)


def test_gradients_of_trainable_parameters(parity_dir: Path, converted: Path, attn_implementation: str) -> None:
    golden = _load(parity_dir, "train_forward.safetensors")
    expected = _load(parity_dir, "train_grads_full_normpix.safetensors")
    # the goldens were recorded in eval mode (no dropout)
    model = _load_model(AltaForPreTraining, converted, attn_implementation)
    model.config.vision_config.norm_pix_loss = True
    model.freeze_backbone()
    out = model(**_train_inputs(golden, "full"))
    out.loss.backward()
    params = dict(model.named_parameters())
    trainable = {name for name, p in params.items() if p.requires_grad}
    mapped = {}
    for key, grad in expected.items():
        ours = map_official_key(key)
        assert ours in trainable, f"golden trainable tensor {key} -> {ours} is not trainable here"
        mapped[ours] = grad
    assert set(mapped) == trainable
    for name, grad in mapped.items():
        scale = grad.abs().max().clamp(min=1e-12)
        torch.testing.assert_close(params[name].grad, grad, rtol=1e-4, atol=1e-4 * float(scale), msg=name)


def test_trainable_set_matches_reference(parity_dir: Path, pretraining_model: AltaForPreTraining) -> None:
    golden = _json(parity_dir, "trainable_tiny.json")
    model = pretraining_model
    counts = model.freeze_backbone()
    try:
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        expected = {map_official_key(k) for k in golden["trainable_names"]}
        assert names == expected
        assert counts["trainable"] == golden["trainable"]
        assert counts["total"] == golden["total"]
    finally:
        for p in model.parameters():
            p.requires_grad_(False)


def test_clip_loss_goldens(parity_dir: Path) -> None:
    golden = _load(parity_dir, "clip_losses.safetensors")
    meta = _json(parity_dir, "clip_losses.json")
    img, txt = golden["clip.image_features"], golden["clip.text_features"]
    for scale, value in _pairs(meta, "clip"):
        loss = alta_contrastive_loss(img, txt, torch.tensor(scale))
        torch.testing.assert_close(loss, torch.tensor(value), **LOSS_TOL)


def test_local_loss_goldens(parity_dir: Path) -> None:
    golden = _load(parity_dir, "clip_losses.safetensors")
    meta = _json(parity_dir, "clip_losses.json")
    image_local = golden["local.img_features"]
    words = golden["local.words_emb"].transpose(1, 2)  # reference layout [B, P, T] -> [B, T, P]
    cap_lens = golden["local.cap_lens"].long()
    for temps, value in _pairs(meta, "local"):
        s1, s2, s3 = (torch.tensor(t) for t in temps)
        loss = alta_local_loss(image_local, words, cap_lens, s1, s2, s3, chunk_size=2)
        torch.testing.assert_close(loss, torch.tensor(value), **LOSS_TOL)


def _pairs(meta: dict, kind: str) -> list[tuple]:
    """(temperature(s), expected loss) pairs from clip_losses.json."""
    if kind == "clip":
        section = meta["ClipLoss"]
        return list(zip(section["logit_scale(already exp'd)"], section["loss"]))
    section = meta["LocalClipLoss"]
    temps = section["temps(temp1,temp2,temp3) already exp'd"]
    return [(temps[name], section["loss"][name]) for name in temps]
