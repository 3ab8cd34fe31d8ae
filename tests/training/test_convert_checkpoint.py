"""`alta-convert` on the checkpoint formats the reference writes: bare state dicts, `{'model': ...}`, and training
checkpoints `{'model', 'optimizer', 'epoch', 'name', 'scaler', 'args'}` (MAE/MRM/ALTA `save_model`), at two sizes.

Training checkpoints are read with `weights_only=True` and a scoped allowlist; a pickle payload anywhere in them is
refused before it can run. Attention-head counts, which weights do not hold, are reported with their origin.
"""

from __future__ import annotations

import argparse
import builtins
import json
import logging
import os
import pathlib
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modeling_alta import AltaConfig, AltaForPreTraining
from training.convert_original_checkpoint import (
    TRAINING_CHECKPOINT_GLOBALS,
    UnsafeCheckpointError,
    convert,
    main,
    map_official_key,
    read_checkpoint,
)


# Our key -> the official key (the inverse of the converter's renames), for writing official-layout checkpoints of
# any size. `official_state_dict` checks every result against `map_official_key`, so a wrong rule cannot pass.
_TO_OFFICIAL = [
    (r"^alta\.vision_model\.embeddings\.cls_token$", "cls_token"),
    (r"^alta\.vision_model\.embeddings\.position_embedding$", "pos_embed"),
    (r"^alta\.vision_model\.embeddings\.(missing_token|view_embedding|temporal_embedding)$", r"\1"),
    (r"^alta\.vision_model\.embeddings\.patch_embed\.", "patch_embed.proj."),
    (r"^alta\.vision_model\.layers\.(\d+)\.(attn|mlp)_adapter\.down_proj\.", r"blocks.\1.\2_adapter.D_fc1."),
    (r"^alta\.vision_model\.layers\.(\d+)\.(attn|mlp)_adapter\.up_proj\.", r"blocks.\1.\2_adapter.D_fc2."),
    (r"^alta\.vision_model\.layers\.", "blocks."),
    (r"^alta\.vision_model\.norm\.", "norm."),
    (r"^alta\.vision_projection\.", "projection_head."),
    (r"^alta\.vision_local_projection\.", "local_projection_head."),
    (r"^alta\.(logit_scale.*)$", r"\1"),
    (r"^decoder\.decoder_embed\.", "decoder_embed."),
    (r"^decoder\.mask_token$", "mask_token"),
    (r"^decoder\.position_embedding$", "decoder_pos_embed"),
    (r"^decoder\.layers\.", "decoder_blocks."),
    (r"^decoder\.(decoder_norm|decoder_pred)\.", r"\1."),
    (r"^alta\.text_model\.embeddings\.", "bert_encoder.bert.embeddings."),
    (
        r"^alta\.text_model\.encoder\.layer\.(\d+)\.(attn|mlp)_adapter\.down_proj\.",
        r"bert_encoder.bert.encoder.layer.\1.\2_adapter.D_fc1.",
    ),
    (
        r"^alta\.text_model\.encoder\.layer\.(\d+)\.(attn|mlp)_adapter\.up_proj\.",
        r"bert_encoder.bert.encoder.layer.\1.\2_adapter.D_fc2.",
    ),
    (r"^alta\.text_model\.encoder\.layer\.", "bert_encoder.bert.encoder.layer."),
    (r"^mlm_head\.transform\.", "bert_encoder.cls.predictions.transform."),
    (r"^mlm_head\.bias$", "bert_encoder.cls.predictions.bias"),
    (r"^mlm_head\.decoder\.weight$", "bert_encoder.cls.predictions.decoder.weight"),
    (r"^alta\.text_projection\.", "bert_encoder.cls_projection_head."),
    (r"^alta\.text_local_projection\.", "bert_encoder.local_projection_head."),
    (r"^bert_embed\.", "bert_embed."),
]


def official_state_dict(model: AltaForPreTraining) -> dict[str, torch.Tensor]:
    """The model's weights in the official ALTA layout (what `ALTA.pth['model']` holds)."""
    out = {}
    for ours, value in model.state_dict().items():
        official = next(re.sub(p, r, ours, count=1) for p, r in _TO_OFFICIAL if re.search(p, ours))
        if not official.startswith("bert_encoder.cls.predictions.decoder"):
            assert map_official_key(official) == ours, (ours, official)
        out[official] = value.detach().clone()
    out["bert_encoder.cls.predictions.decoder.bias"] = out["bert_encoder.cls.predictions.bias"].clone()
    out["missing_token"] = out["missing_token"].half()  # stored in float16 by the reference
    return out


def training_checkpoint(weights: dict[str, torch.Tensor], **extra_args) -> dict:
    """A checkpoint as `util/misc.py` `save_model` writes it: real AdamW and GradScaler states, an argparse args."""
    params = [torch.nn.Parameter(v.float().clone()) for v in list(weights.values())[:4]]
    optimizer = torch.optim.AdamW(params, lr=5.625e-5, betas=(0.9, 0.95), weight_decay=0.05)
    sum((p**2).sum() for p in params).backward()
    optimizer.step()
    parser = argparse.ArgumentParser()
    for name, default in [
        ("--batch_size", 24),
        ("--epochs", 100),
        ("--max_epochs", 30),
        ("--blr", 1.5e-4),
        ("--mask_ratio", 0.75),
        ("--weight_decay", 0.05),
        ("--warmup_epochs", 10),
        ("--model", "alta"),
    ]:
        parser.add_argument(name, default=default, type=type(default))
    parser.add_argument("--norm_pix_loss", action="store_true")
    args = parser.parse_args(["--norm_pix_loss"])
    args.lr, args.distributed, args.dist_backend = 5.625e-5, True, "nccl"
    args.output_dir = pathlib.PurePosixPath("output_dir/pretrain_alta")  # MAE-style scripts may keep paths here
    for key, value in extra_args.items():
        setattr(args, key, value)
    return {
        "model": weights,
        "optimizer": optimizer.state_dict(),
        "epoch": 29,
        "name": "best_auroc",
        "scaler": torch.amp.GradScaler("cpu").state_dict(),
        "args": args,
    }


def write_text_folder(folder: Path, hidden: int, layers: int, heads: int) -> tuple[Path, int]:
    """A CXR-BERT-like folder of another size: config.json and a small WordPiece vocabulary of our own."""
    folder.mkdir(parents=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","]
    words += [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    words += ["no", "effusion", "pleural", "edema", "heart", "normal", "size"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    config = {
        "model_type": "bert",
        "vocab_size": len(words),
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": 2 * hidden,
        "max_position_embeddings": 64,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "projection_size": 24,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder, len(words)


@pytest.fixture(scope="module")
def second_size(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A randomly initialised ALTA of other sizes than the golden one (48-wide ViT with 3 heads of 16, 3 blocks;
    32-wide decoder with 2 heads; 32-wide 3-layer BERT with 2 heads), written in the official layout."""
    root = tmp_path_factory.mktemp("second-size")
    text_dir, vocab = write_text_folder(root / "text", hidden=32, layers=3, heads=2)
    config = AltaConfig(
        vision_config=dict(
            hidden_size=48,
            num_hidden_layers=3,
            num_attention_heads=3,
            intermediate_size=96,
            image_size=32,
            patch_size=8,
            decoder_hidden_size=32,
            decoder_num_hidden_layers=1,
            decoder_num_attention_heads=2,
            decoder_intermediate_size=64,
            reconstruction_image_size=64,
            reconstruction_patch_size=16,
        ),
        text_config=dict(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        projection_dim=24,
    )
    torch.manual_seed(0)
    model = AltaForPreTraining(config).eval()
    with torch.no_grad():  # every value distinct from its init, adapters and tokens included
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
        model.alta.vision_model.embeddings.missing_token.zero_()  # the reference stores it in float16: zeros round-trip
    weights = official_state_dict(model)
    torch.save({"model": weights}, root / "bare.pth")
    torch.save(training_checkpoint(weights), root / "training.pth")
    return {"root": root, "text_dir": text_dir, "model": model, "heads": {"vision_heads": 3, "decoder_heads": 2}}


def _converted_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_inverse_layout_matches_the_golden_checkpoint(parity_dir: Path, tmp_path: Path) -> None:
    """The test's official-layout writer reproduces ALTA_tiny.pth exactly from its converted model."""
    report = convert(
        parity_dir / "ALTA_tiny.pth", parity_dir / "BiomedVLP-CXR-BERT-specialized", tmp_path / "out", 4, 4
    )
    assert report.kind == "alta"
    golden = torch.load(parity_dir / "ALTA_tiny.pth", map_location="cpu", weights_only=True)["model"]
    ours = official_state_dict(AltaForPreTraining.from_pretrained(tmp_path / "out"))
    assert set(ours) == set(golden)
    for key, value in golden.items():
        torch.testing.assert_close(ours[key].to(value.dtype), value, atol=0, rtol=0, msg=key)


def test_training_checkpoint_converts_like_the_bare_golden(
    parity_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    golden = torch.load(parity_dir / "ALTA_tiny.pth", map_location="cpu", weights_only=True)
    torch.save(training_checkpoint(golden["model"]), tmp_path / "ALTA_train.pth")
    text = str(parity_dir / "BiomedVLP-CXR-BERT-specialized")
    flags = ["--vision-num-attention-heads", "4", "--decoder-num-attention-heads", "4"]
    with caplog.at_level(logging.INFO, logger="alta.convert"):
        for name, path in (("bare", parity_dir / "ALTA_tiny.pth"), ("train", tmp_path / "ALTA_train.pth")):
            argv = ["--checkpoint", str(path), "--text-model", text, "--output", str(tmp_path / name), *flags]
            assert main(argv) == 0
    bare, train = _converted_weights(tmp_path / "bare"), _converted_weights(tmp_path / "train")
    assert bare.keys() == train.keys()
    for key in bare:
        torch.testing.assert_close(train[key], bare[key], atol=0, rtol=0, msg=key)

    report = json.loads((tmp_path / "train" / "conversion_report.json").read_text())
    source = report["source"]
    assert source["format"] == "training" and source["weights_key"] == "model"
    assert source["other_keys"] == ["args", "epoch", "name", "optimizer", "scaler"]
    assert source["epoch"] == 29 and source["name"] == "best_auroc"
    args = source["args"]
    assert args["batch_size"] == 24 and args["blr"] == 1.5e-4 and args["norm_pix_loss"] is True
    assert args["output_dir"] == "output_dir/pretrain_alta"
    assert source["optimizer"]["param_groups"] == 1 and source["optimizer"]["state_entries"] == 4
    assert source["optimizer"]["hyperparameters"][0]["betas"] == [0.9, 0.95]
    assert source["scaler"]["scale"] == 65536.0
    assert report["attention_heads"]["vision"] == {
        "value": 4,
        "origin": "--vision-num-attention-heads",
        "default": False,
    }
    assert report["attention_heads"]["text"]["origin"] == "text model config.json"
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("converted")]
    assert len(summary) == 2 and "\n" not in summary[1]
    assert "training checkpoint, epoch 29, name 'best_auroc'" in summary[1]
    assert "batch_size=24" in summary[1] and "vision 4 (--vision-num-attention-heads)" in summary[1]
    # the allowlist was scoped to the load: nothing stays allowed afterwards
    allowed = set(torch.serialization.get_safe_globals())
    assert not allowed & set(TRAINING_CHECKPOINT_GLOBALS)


def test_second_size_converts_exactly_in_both_formats(second_size: dict) -> None:
    root, model = second_size["root"], second_size["model"]
    expected = model.state_dict()
    for name in ("bare", "training"):
        report = convert(root / f"{name}.pth", second_size["text_dir"], root / f"out-{name}", **second_size["heads"])
        assert report.unused == [] and report.initialised == []
        converted = AltaForPreTraining.from_pretrained(root / f"out-{name}")
        vision = converted.config.vision_config
        assert (vision.hidden_size, vision.num_attention_heads, vision.num_hidden_layers) == (48, 3, 3)
        assert (vision.decoder_hidden_size, vision.decoder_num_attention_heads) == (32, 2)
        assert converted.config.text_config.num_attention_heads == 2
        state = converted.state_dict()
        for key, value in expected.items():
            torch.testing.assert_close(state[key], value, atol=0, rtol=0, msg=key)
    bare, train = _converted_weights(root / "out-bare"), _converted_weights(root / "out-training")
    assert bare.keys() == train.keys() and all(torch.equal(bare[k], train[k]) for k in bare)


def test_heads_that_cannot_be_inferred_name_every_flag(second_size: dict, tmp_path: Path) -> None:
    root = second_size["root"]
    with pytest.raises(ValueError) as err:
        convert(root / "bare.pth", second_size["text_dir"], tmp_path / "a")
    message = str(err.value)
    assert "--vision-num-attention-heads" in message and "--decoder-num-attention-heads" in message
    assert "vision width 48" in message and "decoder width 32" in message
    # one count given, the other still missing: the message asks for that one
    with pytest.raises(ValueError, match=r"decoder width 32 .*Pass --decoder-num-attention-heads with"):
        convert(root / "bare.pth", second_size["text_dir"], tmp_path / "b", vision_heads=3)
    with pytest.raises(ValueError, match=r"--vision-num-attention-heads 5 does not divide the vision width 48"):
        convert(root / "bare.pth", second_size["text_dir"], tmp_path / "c", vision_heads=5, decoder_heads=2)
    assert not (tmp_path / "a").exists()


def test_default_heads_are_reported_and_logged(
    parity_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The golden's 64-wide ViT has 4 heads; without the flag the default (1 head of 64) is used and said so."""
    with caplog.at_level(logging.WARNING, logger="alta.convert"):
        report = convert(
            parity_dir / "ALTA_tiny.pth", parity_dir / "BiomedVLP-CXR-BERT-specialized", tmp_path, decoder_heads=4
        )
    heads = json.loads((tmp_path / "conversion_report.json").read_text())["attention_heads"]
    assert heads["vision"] == {"value": 1, "origin": "width 64 / default head width 64", "default": True}
    assert heads["decoder"]["default"] is False
    assert report.attention_heads["vision"].default
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "vision attention heads: 1 is a DEFAULT" in warning and "--vision-num-attention-heads" in warning


class _Payload:
    """Unpickling this calls `func(arg)`: what a malicious checkpoint hides."""

    def __init__(self, func, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("where", ["args", "optimizer"])
def test_payloads_in_training_checkpoints_never_run(parity_dir: Path, tmp_path: Path, where: str) -> None:
    marker = tmp_path / "payload-ran"
    weights = torch.load(parity_dir / "ALTA_tiny.pth", map_location="cpu", weights_only=True)["model"]
    if where == "args":
        checkpoint = training_checkpoint(weights, note=_Payload(os.system, f"touch {marker}"))
        expected = os.system.__module__ + ".system"
    else:
        checkpoint = training_checkpoint(weights)
        checkpoint["optimizer"]["param_groups"][0]["lr"] = _Payload(builtins.exec, f"open({str(marker)!r}, 'w')")
        expected = "builtins.exec"
    path = tmp_path / f"poisoned-{where}.pth"
    torch.save(checkpoint, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        read_checkpoint(path)
    assert str(path) in str(err.value) and expected in str(err.value)
    text = str(parity_dir / "BiomedVLP-CXR-BERT-specialized")
    argv = ["--checkpoint", str(path), "--text-model", text, "--output", str(tmp_path / "out")]
    assert main([*argv, "--vision-num-attention-heads", "4", "--decoder-num-attention-heads", "4"]) == 1
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    # and the allowlist did not leak out of the refused load
    assert not set(torch.serialization.get_safe_globals()) & set(TRAINING_CHECKPOINT_GLOBALS)
