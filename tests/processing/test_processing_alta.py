"""AltaProcessor: keys the model takes, text defaults, bad reports and studies, save/load and remote-code loading."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from transformers import BertTokenizer

from modeling_alta.image_processing_alta import AltaImageProcessor
from modeling_alta.processing_alta import AltaProcessor, encode_texts
from tests.isolation import run_isolated


@pytest.fixture(scope="module")
def processor(parity_dir):
    tokenizer = BertTokenizer.from_pretrained(parity_dir / "BiomedVLP-CXR-BERT-specialized")
    return AltaProcessor(image_processor=AltaImageProcessor(), tokenizer=tokenizer)


FRONTAL = np.full((260, 240), 120, dtype=np.uint8)


def test_outputs_are_what_the_model_takes(processor):
    out = processor(
        images=[{"frontal": FRONTAL, "lateral": FRONTAL}, [FRONTAL]],
        text=["No acute process.", "Mild cardiomegaly."],
        return_tensors="pt",
    )
    assert set(out) == {"pixel_values", "view_mask", "input_ids", "attention_mask", "token_type_ids"}
    assert out["pixel_values"].shape == (2, 4, 3, 224, 224)
    assert out["view_mask"].tolist() == [[True, True, False, False], [True, False, False, False]]
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert out[key].shape == (2, 128) and out[key].dtype == torch.long
    single = processor(images=FRONTAL, return_tensors="pt")
    assert set(single) == {"pixel_values"} and single["pixel_values"].shape == (1, 3, 224, 224)
    text_only = processor(text="Lungs clear.", return_tensors="pt")
    assert text_only["input_ids"].shape == (1, 128)
    assert processor.tokenizer.convert_ids_to_tokens(text_only["input_ids"][0, :5].tolist()) == [
        "[CLS]",
        "lungs",
        "clear",
        ".",
        "[SEP]",
    ]


def test_clean_text_matches_evaluation_tokenisation(processor, parity_dir):
    from safetensors.torch import load_file

    cases = json.loads((parity_dir / "process_text.json").read_text())["cases"]
    golden = load_file(str(parity_dir / "process_text.safetensors"))["input_ids"]
    usable = [i for i, case in enumerate(cases) if case["cleaned"]]
    out = processor(text=[cases[i]["input"] for i in usable], clean_text=True, return_tensors="pt")
    assert torch.equal(out["input_ids"], golden[usable])


def test_empty_reports_raise(processor):
    with pytest.raises(ValueError, match=r"report 1 is empty \('   '\)"):
        processor(text=["Lungs clear.", "   "])
    with pytest.raises(ValueError, match=r"report 0 is empty after process_text cleanup \(input 'A. B.'\)"):
        processor(text=["A. B."], clean_text=True)
    with pytest.raises(TypeError, match=r"report 0: expected a string; got NoneType"):
        processor(text=[None])
    with pytest.raises(ValueError, match="needs `images`, `text` or both"):
        processor()


def test_long_report_is_truncated_with_a_warning(processor, caplog):
    long_report = " ".join(["Small left pleural effusion."] * 60)
    with caplog.at_level(logging.WARNING, logger="modeling_alta.processing_alta"):
        out = processor(text=[long_report, "Lungs clear."], return_tensors="pt")
    assert out["input_ids"].shape == (2, 128)
    assert out["input_ids"][0, -1].item() == processor.tokenizer.sep_token_id
    assert out["attention_mask"][0].all()
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("report 0 has") and "truncated to max_length=128" in m for m in messages), messages
    assert not any(m.startswith("report 1") for m in messages)


def test_encode_texts_pads_instead_of_cutting_without_truncation(processor):
    tokenizer = processor.tokenizer
    long_text = " ".join(["effusion"] * 30)
    cut = encode_texts(tokenizer, ["edema", long_text], max_length=10, return_tensors="pt")
    assert cut["input_ids"].shape == (2, 10)
    whole = encode_texts(tokenizer, ["edema", long_text], max_length=10, truncation=False, return_tensors="pt")
    assert whole["input_ids"].shape[1] > 10 and whole["attention_mask"][1].all()
    short = encode_texts(tokenizer, ["edema"], max_length=10, truncation=False, return_tensors="pt")
    assert short["input_ids"].shape == (1, 10)
    # process_text cleanup drops one-word sentences, as the reference does; evaluation accepts the empty prompt
    cleaned = encode_texts(tokenizer, ["Cardiomegaly."], 8, clean_text=True, allow_empty=True, return_tensors="pt")
    assert int(cleaned["attention_mask"].sum()) == 2  # [CLS] [SEP]
    with pytest.raises(ValueError, match="study 7 is empty after process_text"):
        encode_texts(tokenizer, ["Cardiomegaly."], 8, clean_text=True, names=["study 7"])
    # The processor's text path is this function.
    assert processor(text=["edema", long_text], max_length=10)["input_ids"] == cut["input_ids"].tolist()


def test_bad_studies_raise_with_the_study_index(processor):
    with pytest.raises(ValueError, match=r"study 1: no frontal view"):
        processor(images=[{"frontal": FRONTAL}, {"lateral": FRONTAL}])
    with pytest.raises(ValueError, match=r"study 0: no frontal view"):
        processor(images=[[None, FRONTAL]])
    with pytest.raises(ValueError, match=r"study 0: 5 views given but a study has at most 4"):
        processor(images=[[FRONTAL] * 5])
    with pytest.raises(ValueError, match=r"study 0: unknown slot name\(s\) \['pa', 'ap'\]"):
        processor(images=[{"frontal": FRONTAL, "pa": FRONTAL, "ap": FRONTAL}])
    with pytest.raises(ValueError, match="mixes studies"):
        processor(images=[{"frontal": FRONTAL}, FRONTAL])
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['sizee'\]"):
        processor.image_processor(FRONTAL, sizee=3)


@pytest.fixture
def registered():
    """In-process registration, as `modeling_alta/__init__.py` is meant to do, so local loading needs no remote code."""
    from transformers import AutoImageProcessor, AutoProcessor

    from modeling_alta.configuration_alta import AltaConfig

    AutoImageProcessor.register(AltaConfig, image_processor_classes={"pil": AltaImageProcessor}, exist_ok=True)
    AutoProcessor.register(AltaConfig, AltaProcessor, exist_ok=True)


def test_save_and_load_round_trip(processor, tmp_path, registered):
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").is_file()
    assert json.loads((tmp_path / "processor_config.json").read_text())["auto_map"] == {
        "AutoProcessor": "processing_alta.AltaProcessor"
    }
    loaded = AltaProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded.image_processor, AltaImageProcessor)
    inputs = {"images": [{"frontal": FRONTAL, "prior_frontal": FRONTAL}], "text": ["Heart size normal."]}
    expected, got = processor(**inputs, return_tensors="pt"), loaded(**inputs, return_tensors="pt")
    assert set(expected) == set(got)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_auto_classes_load_in_a_fresh_interpreter_without_the_package(processor, tmp_path, parity_dir):
    folder = tmp_path / "saved"
    processor.save_pretrained(folder)
    image = parity_dir / "preprocess" / "img0_300x400.png"
    expected = processor(images=str(image), text="No acute process.", return_tensors="pt")
    np.save(tmp_path / "expected_pixels.npy", expected["pixel_values"].numpy())
    np.save(tmp_path / "expected_ids.npy", expected["input_ids"].numpy())
    code = f"""
    import numpy as np
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
    folder, image = {str(folder)!r}, {str(image)!r}
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    out = processor(images=image, text="No acute process.", return_tensors="pt")
    assert type(processor).__name__ == "AltaProcessor", type(processor)
    assert np.array_equal(out["pixel_values"].numpy(), np.load({str(tmp_path / "expected_pixels.npy")!r}))
    assert np.array_equal(out["input_ids"].numpy(), np.load({str(tmp_path / "expected_ids.npy")!r}))
    # what the zero-shot-image-classification pipeline loads: AutoImageProcessor and AutoTokenizer on the folder
    image_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    assert type(image_processor).__name__ == "AltaImageProcessor"
    pixel_values = image_processor(images=[image], return_tensors="pt")["pixel_values"]
    assert np.array_equal(pixel_values.numpy(), out["pixel_values"].numpy())
    assert tokenizer("No acute process.")["input_ids"] == out["input_ids"][0, :6].tolist()
    print("OK", type(processor.image_processor).__module__)
    """
    output = run_isolated(code, cwd=tmp_path, env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert output.startswith("OK transformers_modules"), output


@pytest.mark.parametrize("name", ["cxr_io_alta", "image_processing_alta", "processing_alta"])
def test_hub_files_import_only_what_users_have(name):
    """Absolute imports outside `try:` become hard requirements of the remote code (pydicom must stay optional)."""
    import sys
    from pathlib import Path

    from transformers.dynamic_module_utils import get_imports

    import modeling_alta

    path = Path(modeling_alta.__file__).parent / f"{name}.py"
    third_party = {module for module in get_imports(path) if module not in sys.stdlib_module_names}
    assert third_party <= {"numpy", "PIL", "transformers"}, third_party


def test_zero_shot_pipeline_uses_the_saved_processor_parts(processor, tmp_path, real_cxr_dir):
    """The pipeline loads AutoImageProcessor + AutoTokenizer (never AutoProcessor) from the model folder."""
    from configuration import load_preset
    from modeling_alta import AltaModel

    folder = tmp_path / "model"
    AltaModel(load_preset("alta-tiny")).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    image = sorted((real_cxr_dir / "nih").glob("*.png"))[0]
    code = f"""
    from transformers import pipeline
    clf = pipeline("zero-shot-image-classification", model={str(folder)!r}, trust_remote_code=True)
    assert type(clf.image_processor).__name__ == "AltaImageProcessor", type(clf.image_processor)
    result = clf({str(image)!r}, candidate_labels=["pleural effusion", "no finding"], hypothesis_template="{{}}")
    assert sorted(r["label"] for r in result) == ["no finding", "pleural effusion"], result
    assert abs(sum(r["score"] for r in result) - 1) < 1e-5, result
    print("OK")
    """
    output = run_isolated(code, cwd=tmp_path, env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert output.strip().endswith("OK"), output


def test_report_length_belongs_to_the_processor(processor, tmp_path):
    """The text length lives in the processor (saved in processor_config.json), not in the model config."""
    short = AltaProcessor(processor.image_processor, processor.tokenizer, max_length=32)
    assert len(short(text=["Lungs clear."])["input_ids"][0]) == 32
    assert len(short(text=["Lungs clear."], max_length=12)["input_ids"][0]) == 12  # a call still overrides it
    assert len(processor(text=["Lungs clear."])["input_ids"][0]) == 128  # the reference's length by default
    short.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["max_length"] == 32
    assert AltaProcessor.from_pretrained(tmp_path).max_length == 32
    with pytest.raises(ValueError, match=r"`max_length` must hold at least \[CLS\] and \[SEP\]"):
        AltaProcessor(processor.image_processor, processor.tokenizer, max_length=1)


def test_truncated_reports_are_counted_from_one_tokenisation(processor, monkeypatch):
    # The token count before truncation is read from the tokenizer's own encodings (the cut-off tokens it keeps),
    # not from a second tokenisation of every long report: the same counts as tokenising the texts whole.
    tokenizer = processor.tokenizer
    rng = np.random.default_rng(0)
    words = ["effusion", "pneumothorax,", "cardiomegaly.", "the", "xqzwv", "retrocardiac", "opacity", "is", "seen."]
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 200, size=60)]
    names = [f"study {i}" for i in range(len(texts))]
    whole = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    expected = [f"{name} ({n} tokens)" for name, n in zip(names, whole) if n > 40]
    assert 10 < len(expected) < 60 and max(whole) > 2 * 40  # some cut once, some into several overflow pieces
    calls = []
    call = type(tokenizer).__call__
    monkeypatch.setattr(type(tokenizer), "__call__", lambda self, *a, **k: calls.append(1) or call(self, *a, **k))
    for padding in ("longest", "max_length"):
        found: list[str] = []
        calls.clear()
        out = encode_texts(tokenizer, texts, max_length=40, padding=padding, names=names, truncated=found)
        assert len(calls) == 1 and found == expected
        assert out["input_ids"] == tokenizer(texts, padding=padding, max_length=40, truncation=True)["input_ids"]
    found = []
    encode_texts(tokenizer, texts, max_length=40, names=names, truncated=found, stride=0)  # other tokenizer options
    assert found == expected
