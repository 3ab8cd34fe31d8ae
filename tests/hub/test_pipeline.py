"""`pipeline("zero-shot-image-classification", model=FOLDER, trust_remote_code=True)` on every kind of ALTA folder.

Folders: `alta-convert` output, `save_pretrained` of an `AltaForPreTraining` with its processor, and the `model/`
folder of `training/align.py`. Inputs: an image path, a PIL image, and a DICOM decoded through the processor
(transformers' `load_image` opens paths with PIL only, so a DICOM goes in as `image_processor.load(path)`).
Scores must equal `softmax(model(**tokenizer(template.format(label)), pixel_values).logits_per_image)` computed
directly, for the given `candidate_labels` and `hypothesis_template`. (Loading the processor parts from a
`save_pretrained` folder of an `AltaModel` in a fresh interpreter is tested in tests/processing/test_processing_alta.py.)
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
    clf = pipeline("zero-shot-image-classification", model=str(folder), trust_remote_code=True)
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
