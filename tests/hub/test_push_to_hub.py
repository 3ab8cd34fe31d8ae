"""Hub publishing against a real local HTTP server (tests/hub/fake_hub.py): the full model (safetensors + code +
processor + card) and an adapter-only repository are pushed, the arriving files are checked, and both load back
from what the server received, the full model as remote code in an interpreter where this repository is hidden."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load as load_safetensors

from modeling_alta import AltaModel as PackageAltaModel
from modeling_alta.adapters_alta import AltaAdapterMixin
from tests.hub.alta_classes import TINY_PROBE
from tests.hub.fake_hub import FakeHub, run_python
from tests.isolation import run_isolated


MIXIN_SHIPPED = issubclass(PackageAltaModel, AltaAdapterMixin)
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "finding", "pleural", "effusion", "left", "right"]


@pytest.fixture
def hub(tmp_path):
    with FakeHub(tmp_path / "hub") as server:
        yield server


def test_export_pushes_model_code_processor_and_card_and_loads_back_as_remote_code(hub, tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    out = run_python(
        f"""
import torch
from transformers import BertTokenizer
from modeling_alta import AltaModel
from modeling_alta.image_processing_alta import AltaImageProcessor
from modeling_alta.processing_alta import AltaProcessor
from tests.hub.alta_classes import features, make_model
from training.export import export_model
model = make_model(cls=AltaModel)
torch.save(features(model), {str(tmp_path / "expected.pt")!r})
tokenizer = BertTokenizer(vocab={str(tmp_path / "vocab.txt")!r})
processor = AltaProcessor(image_processor=AltaImageProcessor(), tokenizer=tokenizer)
result = export_model(
    model, processor, {str(tmp_path / "export")!r}, push_to_hub=True, repo_id="fake-user/alta-tiny",
    metrics={{"chexpert5x200/acc": 0.5, "rsna/auroc": 0.75}}, base_model="fake-user/alta-base",
    datasets=["mimic-cxr"], adapter_method="alta",
)
print("COMMIT", result.commit_url)
""",
        env=hub.env(),
        cwd=tmp_path,
    )
    assert "COMMIT " + hub.url + "/fake-user/alta-tiny/commit/" in out, out

    files = hub.files("fake-user/alta-tiny")
    code = {"configuration_alta.py", "modeling_alta.py", "processing_alta.py", "image_processing_alta.py"}
    code |= {"cxr_io_alta.py"} | ({"adapters_alta.py"} if MIXIN_SHIPPED else set())
    expected = {".gitattributes", "README.md", "config.json", "model.safetensors", "eval_results.json"} | code
    assert expected <= set(files), sorted(files)
    assert {"tokenizer.json", "tokenizer_config.json", "processor_config.json"} <= set(files), sorted(files)
    config = json.loads(files["config.json"])
    assert config["model_type"] == "alta"
    assert config["auto_map"]["AutoModel"] == "modeling_alta.AltaModel"
    assert config["auto_map"]["AutoModelForZeroShotImageClassification"] == "modeling_alta.AltaModel"
    assert len(load_safetensors(files["model.safetensors"])) > 100
    card = files["README.md"].decode()
    for needle in (
        "library_name: transformers",
        "pipeline_tag: zero-shot-image-classification",
        "license: cc-by-nc-4.0",
        "base_model: fake-user/alta-base",
        "- mimic-cxr",
        "- chexpert5x200/acc",
        "| rsna/auroc | 0.7500 |",
        "not a medical device",
        "Trainable parameters:",
    ):
        assert needle in card, needle
    assert json.loads(files["eval_results.json"]) == {"chexpert5x200/acc": 0.5, "rsna/auroc": 0.75}
    assert hub.unhandled == []

    # Load back from the server, as a user without this package: AutoModel + trust_remote_code.
    loaded = run_isolated(
        f"""
import torch
import numpy as np
from PIL import Image
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained("fake-user/alta-tiny", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("fake-user/alta-tiny", trust_remote_code=True)
image = Image.fromarray((np.arange(300 * 280) % 251).astype("uint8").reshape(300, 280), mode="L")
inputs = processor(images=image, text=["pleural effusion", "no finding"], return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits_per_image
print("PROCESSOR", type(processor).__name__, tuple(inputs["pixel_values"].shape), tuple(logits.shape))
{TINY_PROBE}
expected = torch.load({str(tmp_path / "expected.pt")!r})
print("CLASS", type(model).__module__.split(".")[0], type(model).__name__)
print("EQUAL", torch.equal(probe(model), expected), processor.tokenizer.tokenize("pleural effusion"))
""",
        cwd=tmp_path,
        env=hub.env(),
    )
    assert "CLASS transformers_modules AltaModel" in loaded, loaded
    assert "EQUAL True ['pleural', 'effusion']" in loaded, loaded
    assert "PROCESSOR AltaProcessor (1, 3, 224, 224) (1, 2)" in loaded, loaded


def test_push_adapter_then_load_it_from_the_hub(hub, tmp_path):
    out = run_python(
        """
import json, torch
from modeling_alta import AltaForPreTraining as PackageAltaForPreTraining
from tests.hub.alta_classes import features, make_model, train_adapter_set
make_model(cls=PackageAltaForPreTraining).push_to_hub("fake-user/alta-tiny-base")
model = make_model()
train_adapter_set(model, 1)
commit = model.push_alta_adapter_to_hub("fake-user/alta-tiny-adapter", base_model_name_or_path="fake-user/alta-tiny-base")
print("COMMIT", commit)
torch.save(features(model), "expected.pt")
""",
        env=hub.env(),
        cwd=tmp_path,
    )
    assert "/fake-user/alta-tiny-adapter/commit/" in out, out
    files = hub.files("fake-user/alta-tiny-adapter")
    assert set(files) == {".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors"}
    config = json.loads(files["adapter_config.json"])
    assert config["base_model_name_or_path"] == "fake-user/alta-tiny-base" and config["adapter_format"] == "alta"
    assert sum(t.numel() for t in load_safetensors(files["adapter_model.safetensors"]).values()) == 327_977
    card = files["README.md"].decode()
    assert "base_model: fake-user/alta-tiny-base" in card and "Not a medical device" in card

    loaded = run_python(
        """
import torch
from tests.hub.alta_classes import AltaForPreTraining, features
expected = torch.load("expected.pt")
model = AltaForPreTraining.from_pretrained("fake-user/alta-tiny-base").eval()
model.load_alta_adapter("fake-user/alta-tiny-adapter", adapter_name="hub")
close = lambda a: torch.equal(a, expected)  # noqa: E731 - another process, the same math and the same bits
print("EXPLICIT", close(features(model)), model.list_alta_adapters(), (features(model) - expected).abs().max().item())
auto = AltaForPreTraining.from_pretrained("fake-user/alta-tiny-adapter").eval()  # base named in the adapter config
print("AUTO", close(features(auto)), (features(auto) - expected).abs().max().item())
""",
        env=hub.env(),
        cwd=tmp_path,
    )
    assert "EXPLICIT True ['hub']" in loaded, loaded
    assert "AUTO True" in loaded, loaded
    assert hub.unhandled == []


def test_adapter_only_export(tmp_path):
    from tests.hub.alta_classes import make_model
    from training.export import export_model

    model = make_model()
    model.freeze_backbone()
    result = export_model(model, None, tmp_path / "out", adapter_only=True, base_model="user/alta-base")
    assert result.files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Trainable parameters: 327,977 of 727,593 (45.08 %)" in card and "- alta" in card
    with pytest.raises(ValueError, match="needs a `repo_id`"):
        export_model(model, None, tmp_path / "x", push_to_hub=True)
    assert torch.is_tensor(next(model.parameters()))


@pytest.mark.skipif(not MIXIN_SHIPPED, reason="AltaPreTrainedModel does not inherit AltaAdapterMixin yet")
def test_remote_code_user_loads_an_adapter_from_the_hub(hub, tmp_path):
    """A user without this package: base and adapter both come from the Hub, the mixin ships as remote code."""
    run_python(
        f"""
import torch
from modeling_alta import AltaModel
from tests.hub.alta_classes import features, make_model, train_adapter_set
make_model(cls=AltaModel).push_to_hub("fake-user/base")
model = make_model(cls=AltaModel)
train_adapter_set(model, 1)
model.push_alta_adapter_to_hub("fake-user/adapter", base_model_name_or_path="fake-user/base")
torch.save(features(model), {str(tmp_path / "expected.pt")!r})
""",
        env=hub.env(),
        cwd=tmp_path,
    )
    assert "adapters_alta.py" in hub.files("fake-user/base")
    out = run_isolated(
        f"""
import torch
from transformers import AutoModel
{TINY_PROBE}
expected = torch.load({str(tmp_path / "expected.pt")!r})
model = AutoModel.from_pretrained("fake-user/base", trust_remote_code=True).eval()
model.load_alta_adapter("fake-user/adapter")
auto = AutoModel.from_pretrained("fake-user/adapter", trust_remote_code=True).eval()
print("REMOTE", torch.equal(probe(model), expected), torch.equal(probe(auto), expected), auto.list_alta_adapters())
""",
        cwd=tmp_path,
        env=hub.env(),
    )
    assert "REMOTE True True ['default']" in out, out
