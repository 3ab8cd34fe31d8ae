"""`pipeline("zero-shot-image-classification", model=FOLDER, trust_remote_code=True)` on every kind of ALTA folder.

Folders: `alta-convert` output, `save_pretrained` of an `AltaForPreTraining` with its processor, and the `model/`
folder of `training/align.py`. Each carries the ALTA pipelines (`pipeline_alta.py`, `custom_pipelines` in its config),
which transformers picks before its built-in task. Inputs: an image path, a PIL image, and a DICOM decoded to PIL.
Scores must equal `softmax(model(**tokenizer(template.format(label)), pixel_values).logits_per_image)` computed
directly, for the given `candidate_labels` and `hypothesis_template`: the drop-in contract.

`test_alta_pipelines_in_a_clean_interpreter` then runs both pipelines where this repository cannot be imported, on
PNG, JPEG, DICOM paths, pydicom datasets and studies, alone and batched, with labels, a named ensemble and a dict
ensemble, against the same direct computation done here with the repository's classes. (Loading the processor parts
from a `save_pretrained` folder of an `AltaModel` in a fresh interpreter is tested in
tests/processing/test_processing_alta.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image


LABELS = ["pleural effusion", "cardiomegaly", "no finding"]


@pytest.fixture(scope="module")
def folders(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from transformers import BertTokenizer

    from configuration import load_preset
    from modeling_alta import AltaForPreTraining, AltaImageProcessor, AltaProcessor
    from training.align import main as align_main
    from training.convert_original_checkpoint import main as convert_main

    from ..training.synthetic import write_dataset

    root = tmp_path_factory.mktemp("folders")
    text_model = parity_dir / "BiomedVLP-CXR-BERT-specialized"
    convert_main(["--checkpoint", str(parity_dir / "ALTA_tiny.pth"), "--text-model", str(text_model),
                  "--output", str(root / "converted"), "--vision-num-attention-heads", "4",
                  "--decoder-num-attention-heads", "4"])  # fmt: skip

    torch.manual_seed(0)
    model = AltaForPreTraining(load_preset("alta-tiny")).eval()
    model.save_pretrained(root / "saved")
    AltaProcessor(AltaImageProcessor(), BertTokenizer.from_pretrained(text_model)).save_pretrained(root / "saved")

    small = json.dumps({"vision_config": {"image_size": 32, "reconstruction_image_size": 64}})
    result = align_main([
        "--preset", "alta-tiny", "--tokenizer_name_or_path", str(text_model), "--config_overrides", small,
        "--dataset_path", str(write_dataset(root / "studies", n=4)), "--output_dir", str(root / "align"),
        "--per_device_train_batch_size", "2", "--max_length", "32", "--max_steps", "1", "--report_to", "none",
        "--cpu",
    ])  # fmt: skip
    return {"converted": root / "converted", "saved": root / "saved", "align": Path(result["model_dir"])}


@pytest.fixture(scope="module")
def inputs(real_cxr_dir: Path) -> dict:
    return {
        "path": str(sorted((real_cxr_dir / "nih").glob("*.png"))[0]),
        "pil": Image.open(sorted((real_cxr_dir / "kermany" / "PNEUMONIA").glob("*.jpeg"))[0]),
        "dicom": real_cxr_dir / "dicom" / "siim_pneumothorax_sample.dcm",
    }


def _expected(folder: Path, image: Image.Image, template: str) -> dict[str, float]:
    """The pipeline's scores computed by hand with the repository classes."""
    from transformers.image_utils import load_image

    from modeling_alta import AltaModel, AltaProcessor

    model = AltaModel.from_pretrained(folder).eval()
    processor = AltaProcessor.from_pretrained(folder)
    pixels = processor.image_processor(images=[load_image(image)], return_tensors="pt")["pixel_values"]
    text = processor.tokenizer([template.format(label) for label in LABELS], padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**text, pixel_values=pixels).logits_per_image.softmax(dim=-1)[0]
    return dict(zip(LABELS, probs.tolist()))


@pytest.mark.parametrize("kind", ["converted", "saved", "align"])
def test_pipeline_on_every_folder_kind(folders, inputs, kind):
    from transformers import pipeline

    folder = folders[kind]
    config = json.loads((folder / "config.json").read_text())
    assert sorted(config["custom_pipelines"]) == ["image-feature-extraction", "zero-shot-image-classification"]
    assert (folder / "pipeline_alta.py").is_file() and (folder / "prompts_alta.py").is_file()
    clf = pipeline("zero-shot-image-classification", model=str(folder), trust_remote_code=True)
    assert type(clf).__name__ == "AltaZeroShotImageClassificationPipeline"
    assert type(clf.model).__name__ == "AltaModel" and type(clf.image_processor).__name__ == "AltaImageProcessor"
    dicom = clf.image_processor.load(inputs["dicom"])  # DICOM through the processor (VOI rule), then PIL in
    # the same pixels as the processor reading the DICOM path itself (L -> RGB -> L is lossless)
    direct = clf.image_processor(images=[inputs["dicom"]], return_tensors="pt")["pixel_values"]
    via_pil = clf.image_processor(images=[dicom.convert("RGB")], return_tensors="pt")["pixel_values"]
    assert torch.equal(direct, via_pil)
    for name, image in (("path", inputs["path"]), ("pil", inputs["pil"]), ("dicom", dicom)):
        for template in ("{}", "There is {}."):
            result = clf(image, candidate_labels=LABELS, hypothesis_template=template)
            scores = [r["score"] for r in result]
            assert scores == sorted(scores, reverse=True) and sorted(r["label"] for r in result) == sorted(LABELS)
            got = {r["label"]: r["score"] for r in result}
            pil = Image.open(image) if isinstance(image, str) else image
            expected = _expected(folder, pil, template)
            for label in LABELS:
                assert abs(got[label] - expected[label]) < 1e-5, (kind, name, template, got, expected)
    # the template reaches the model: other prompts, other scores
    plain = {r["label"]: r["score"] for r in clf(inputs["path"], candidate_labels=LABELS, hypothesis_template="{}")}
    templated = clf(inputs["path"], candidate_labels=LABELS, hypothesis_template="Findings of {} on this radiograph.")
    assert any(abs(plain[r["label"]] - r["score"]) > 1e-7 for r in templated)


_CHILD = """
import json, sys
import pydicom
from transformers import pipeline

folder, png, jpeg, dcm = sys.argv[1:5]
clf = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
embed = pipeline("image-feature-extraction", model=folder, trust_remote_code=True)
text_calls = []
original = clf.model.get_text_features
clf.model.get_text_features = lambda *a, **k: text_calls.append(1) or original(*a, **k)

dataset = pydicom.dcmread(dcm)
inputs = {"png": png, "jpeg": jpeg, "dicom": dcm, "dataset": dataset,
          "study": {"frontal": dcm, "lateral": png},
          "study_priors": {"frontal": dataset, "prior_frontal": jpeg, "prior_lateral": png}}
labels = ["pleural effusion", "cardiomegaly", "no finding"]

def scores(result):
    return {r["label"]: r["score"] for r in result}

out = {"types": [type(clf).__name__, type(embed).__name__, type(clf.model).__module__]}
out["single"] = {k: scores(clf(v, candidate_labels=labels, hypothesis_template="There is {}.")) for k, v in inputs.items()}
del text_calls[:]
batched = clf(list(inputs.values()), candidate_labels=labels, hypothesis_template="There is {}.", batch_size=4)
out["batched"], out["batched_text_calls"] = [scores(r) for r in batched], len(text_calls)
del text_calls[:]
out["chexpert"] = [scores(r) for r in clf([png, inputs["study"]], candidate_labels="chexpert5x200", batch_size=2)]
out["chexpert_text_calls"] = len(text_calls)
ensemble = {"effusion": ["small left pleural effusion", "large effusion"], "normal": ["no acute process"]}
out["dict"] = scores(clf(png, candidate_labels=ensemble))
out["features"] = [e[0] for e in embed([png, inputs["study_priors"]], batch_size=2)]
print(json.dumps(out))
"""


def test_alta_pipelines_in_a_clean_interpreter(folders, inputs, real_cxr_dir, tmp_path):
    from inference.embedding import embed_images
    from inference.zero_shot import ZeroShotClassifier
    from modeling_alta import AltaModel, AltaProcessor

    from ..isolation import run_isolated

    folder = folders["converted"]
    png = inputs["path"]
    jpeg = str(sorted((real_cxr_dir / "kermany" / "NORMAL").glob("*.jpeg"))[0])
    dcm = str(inputs["dicom"])
    child = tmp_path / "child.py"
    child.write_text(_CHILD)
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules")}
    out = json.loads(
        run_isolated(f"import sys, runpy; sys.argv = ['child', {str(folder)!r}, {png!r}, {jpeg!r}, {dcm!r}]; "
                     f"runpy.run_path({str(child)!r}, run_name='__main__')", cwd=tmp_path, env=env).splitlines()[-1]
    )  # fmt: skip
    assert out["types"][:2] == ["AltaZeroShotImageClassificationPipeline", "AltaImageFeatureExtractionPipeline"]
    assert out["types"][2].startswith("transformers_modules.")  # remote code, not this repository

    # The direct computation, with this repository's classes: a pydicom dataset equals its file.
    model = AltaModel.from_pretrained(folder).eval()
    processor = AltaProcessor.from_pretrained(folder)
    same = {"png": png, "jpeg": jpeg, "dicom": dcm, "dataset": dcm, "study": {"frontal": dcm, "lateral": png},
            "study_priors": {"frontal": dcm, "prior_frontal": jpeg, "prior_lateral": png}}  # fmt: skip
    labels = ["pleural effusion", "cardiomegaly", "no finding"]
    text = processor.tokenizer([f"There is {label}." for label in labels], padding=True, return_tensors="pt")
    for position, (name, value) in enumerate(same.items()):
        pixels = processor.image_processor(images=[value], return_tensors="pt")
        with torch.no_grad():
            probs = model(**text, **pixels).logits_per_image.softmax(dim=-1)[0].tolist()
        for got in (out["single"][name], out["batched"][position]):
            assert sorted(got) == sorted(labels)
            for label, p in zip(labels, probs):
                assert abs(got[label] - p) < 1e-5, (name, label, got, probs)
    assert out["batched_text_calls"] == 1  # class embeddings once per call, not per image or batch

    # A named ensemble: the reference's prompts and tokenisation (ZeroShotClassifier), text tower run once per call.
    chexpert = ZeroShotClassifier(model, processor, "chexpert5x200")
    assert out["chexpert_text_calls"] == 2  # 489 prompts in batches of 256
    for got, value in zip(out["chexpert"], [png, same["study"]]):
        expected = chexpert.predict([value]).probabilities[0].tolist()
        for label, p in zip(chexpert.class_names, expected):
            assert abs(got[label] - p) < 1e-5, (label, got, expected)
    ensemble = {"effusion": ["small left pleural effusion", "large effusion"], "normal": ["no acute process"]}
    expected = ZeroShotClassifier(model, processor, ensemble, clean_text=False).predict([png]).probabilities[0]
    assert [out["dict"]["effusion"], out["dict"]["normal"]] == pytest.approx(expected.tolist(), abs=1e-5)

    features = (
        embed_images(model, processor, [png]).tolist()
        + embed_images(model, processor, [same["study_priors"]]).tolist()
    )
    torch.testing.assert_close(torch.tensor(out["features"]), torch.tensor(features), atol=1e-5, rtol=0)
