"""A saved ALTA folder loads as Hub custom code where this package is not importable (fresh interpreter)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from configuration import load_preset
from modeling_alta import AltaForPreTraining, AltaModel
from training.convert_original_checkpoint import convert

from ..isolation import run_isolated


CHILD = """
import json, sys, torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, AutoModelForZeroShotImageClassification
folder, inputs_path, out_path = sys.argv[1:4] if len(sys.argv) > 3 else FOLDER_ARGS
inputs = load_file(inputs_path)
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
assert type(config).__module__.startswith("transformers_modules"), type(config).__module__
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__name__ == "AltaModel", type(model)
zs = AutoModelForZeroShotImageClassification.from_pretrained(folder, trust_remote_code=True)
assert type(zs).__name__ == "AltaModel"
pre = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
assert type(pre).__name__ == "AltaForPreTraining"
with torch.no_grad():
    out = {
        "image": model.get_image_features(inputs["pixels"]).pooler_output,
        "study": model.get_image_features(inputs["study"]).pooler_output,
        "text": model.get_text_features(inputs["ids"], inputs["mask"]).pooler_output,
        "pre_image": pre.alta.get_image_features(inputs["pixels"]).pooler_output,
    }
save_file(out, out_path)
print("ok")
"""


def _run_child(folder: Path, tmp_path: Path, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inputs_path, out_path = tmp_path / "inputs.safetensors", tmp_path / "out.safetensors"
    save_file({k: v.contiguous() for k, v in inputs.items()}, str(inputs_path))
    code = CHILD.replace("FOLDER_ARGS", repr([str(folder), str(inputs_path), str(out_path)]))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stdout = run_isolated(code, cwd=elsewhere, env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert "ok" in stdout
    return load_file(str(out_path))


def _inputs(image_size: int, vocab: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    ids = torch.randint(5, vocab, (3, 12))
    return {
        "pixels": torch.randn(2, 3, image_size, image_size),
        "study": torch.randn(2, 4, 3, image_size, image_size),
        "ids": ids,
        "mask": torch.ones_like(ids),
    }


def _expected(model: AltaModel, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {
            "image": model.get_image_features(inputs["pixels"]).pooler_output,
            "study": model.get_image_features(inputs["study"]).pooler_output,
            "text": model.get_text_features(inputs["ids"], inputs["mask"]).pooler_output,
        }


def test_saved_model_loads_as_remote_code(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = AltaForPreTraining(load_preset("alta-tiny")).eval()
    # Non-trivial adapters so that a code path that skipped them would be caught.
    with torch.no_grad():
        for adapter in model.alta_adapters():
            adapter.up_proj.weight.normal_(std=0.05)
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    assert {"modeling_alta.py", "configuration_alta.py"} <= {p.name for p in folder.glob("*.py")}
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForZeroShotImageClassification"] == "modeling_alta.AltaModel"
    inputs = _inputs(224, 421)
    got = _run_child(folder, tmp_path, inputs)
    expected = _expected(model.alta, inputs)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-6, rtol=1e-6, msg=key)
    torch.testing.assert_close(got["pre_image"], expected["image"], atol=1e-6, rtol=1e-6)


def test_converted_folder_loads_as_remote_code(tmp_path: Path, parity_dir: Path) -> None:
    meta = json.loads((parity_dir / "meta.json").read_text())["vision_config"]
    folder = tmp_path / "converted"
    convert(
        parity_dir / "ALTA_tiny.pth",
        parity_dir / "BiomedVLP-CXR-BERT-specialized",
        folder,
        vision_heads=meta["num_heads"],
        decoder_heads=meta["decoder_num_heads"],
    )
    model = AltaModel.from_pretrained(folder).eval()
    inputs = _inputs(224, 421)
    golden = load_file(str(parity_dir / "img_feature.safetensors"))
    inputs["pixels"] = golden["x"].float()
    got = _run_child(folder, tmp_path, inputs)
    for key, value in _expected(model, inputs).items():
        torch.testing.assert_close(got[key], value, atol=1e-6, rtol=1e-6, msg=key)
    torch.testing.assert_close(
        torch.nn.functional.normalize(got["image"], dim=-1), golden["img_feature"], atol=1e-5, rtol=1e-5
    )
