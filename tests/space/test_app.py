"""The web demo over HTTP: `gradio_client` drives each tab of the running app, and every answer is checked against
the same computation done directly with the package's inference functions (not through the app's own helpers)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference.embedding import default_text_length, embed_images, embed_texts
from inference.heatmaps import model_view, word_patch_similarity
from inference.store import write_embedding_store
from inference.zero_shot import ZeroShotClassifier
from space.alta_space import GALLERY_SEED, RESEARCH_NOTICE, AltaDemo, generate_gallery_studies, parse_labels

from ..conftest import REPO_ROOT
from .conftest import GALLERY_SIZE


pytest.importorskip("gradio")
pytest.importorskip("gradio_client")


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def _file(path: Path | None):
    from gradio_client import handle_file

    return handle_file(str(path)) if path is not None else None


def _classifier(demo: AltaDemo, prompts) -> ZeroShotClassifier:
    return ZeroShotClassifier(
        demo.model, demo.processor, prompts, clean_text=False, max_length=default_text_length(demo.processor)
    )


def test_page_shows_the_notice_and_the_model(running_app) -> None:
    import urllib.request

    demo, url = running_app
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
    config = _client(url).view_api(print_info=False, return_format="dict")
    assert {"/classify", "/retrieve_image", "/retrieve_text", "/heatmap"} <= set(config["named_endpoints"])
    assert "not a medical device" in RESEARCH_NOTICE.lower()


def test_classify_image_and_study_match_direct_calls(running_app, gallery_images) -> None:
    demo, url = running_app
    client = _client(url)
    # one frontal, the demo prompt ensemble: the single-frontal path
    bars, table, summary, view = client.predict(
        _file(gallery_images["frontal"]), None, None, None, "demo", "", api_name="/classify"
    )
    from processing.demo_data import demo_class_prompts

    direct = _classifier(demo, demo_class_prompts()).predict([gallery_images["frontal"]])
    expected = {name: float(p) for name, p in zip(direct.class_names, direct.probabilities[0])}
    got = {row[0]: row[1] for row in bars["data"]}
    assert set(got) == set(expected)
    for name, prob in expected.items():
        assert got[name] == pytest.approx(prob, abs=1e-6)
    assert [row[1] for row in bars["data"]] == sorted(got.values(), reverse=True)
    cosines = {row[0]: row[2] for row in table["data"]}
    for name, cos in zip(direct.class_names, direct.logits[0].tolist()):
        assert cosines[name] == pytest.approx(cos, abs=5e-5)  # the table shows 4 decimals
    assert "single-frontal path" in summary and f"**{direct.labels[0]}**" in summary
    # the crop the model sees
    crop = model_view(demo.processor, gallery_images["frontal"])
    assert np.array_equal(np.asarray(Image.open(view).convert("L")), np.asarray(crop))

    # a study (frontal, lateral, prior frontal) with typed labels: the multiview/temporal path
    labels = "pleural effusion, cardiomegaly\nthe lungs are clear"
    bars, table, summary, _ = client.predict(
        _file(gallery_images["frontal"]),
        _file(gallery_images["lateral"]),
        _file(gallery_images["prior_frontal"]),
        None,
        "typed labels",
        labels,
        api_name="/classify",
    )
    study = {k: gallery_images[k] for k in ("frontal", "lateral", "prior_frontal")}
    direct = _classifier(demo, {label: [label] for label in parse_labels(labels)}).predict([study])
    got = {row[0]: row[1] for row in bars["data"]}
    assert list(got) and set(got) == {"pleural effusion", "cardiomegaly", "the lungs are clear"}
    for name, prob in zip(direct.class_names, direct.probabilities[0].tolist()):
        assert got[name] == pytest.approx(prob, abs=1e-6)
    assert "a study of 3 views (frontal, lateral, prior frontal" in summary
    # the study path is really taken: the image path scores differ
    alone = _classifier(demo, {label: [label] for label in parse_labels(labels)}).predict([gallery_images["frontal"]])
    assert not torch.allclose(alone.probabilities, direct.probabilities, atol=1e-4)


def test_classify_a_dicom_upload(running_app, gallery_images, tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    from ..processing.dicom_factory import write_dicom

    demo, url = running_app
    pixels = np.asarray(Image.open(gallery_images["other"]).convert("L"), dtype=np.uint16) * 16  # 12-bit
    dicom = write_dicom(tmp_path / "frontal.dcm", pixels, bits_stored=12)
    bars, _, summary, _ = _client(url).predict(_file(dicom), None, None, None, "demo", "", api_name="/classify")
    from processing.demo_data import demo_class_prompts

    direct = _classifier(demo, demo_class_prompts()).predict([dicom])
    got = {row[0]: row[1] for row in bars["data"]}
    for name, prob in zip(direct.class_names, direct.probabilities[0].tolist()):
        assert got[name] == pytest.approx(prob, abs=1e-6)


def test_classify_errors_reach_the_client(running_app, tmp_path: Path) -> None:
    from gradio_client.exceptions import AppError

    _, url = running_app
    client = _client(url)
    with pytest.raises(AppError, match="a frontal image is needed"):
        client.predict(None, None, None, None, "demo", "", api_name="/classify")
    not_an_image = tmp_path / "scan.png"
    not_an_image.write_bytes(b"not a PNG")
    with pytest.raises(AppError, match="not a recognised image file"):
        client.predict(_file(not_an_image), None, None, None, "demo", "", api_name="/classify")
    with pytest.raises(AppError, match="at least two labels"):
        client.predict(_file(not_an_image), None, None, None, "typed labels", "effusion", api_name="/classify")


def _direct_gallery(demo: AltaDemo):
    """The gallery rebuilt from the generator and embedded with the package functions."""
    size = int(demo.processor.image_processor.shortest_edge)
    studies = generate_gallery_studies(GALLERY_SIZE, GALLERY_SEED, size)
    return studies, {
        "demo reports": embed_texts(demo.model, demo.processor, [s.report for s in studies]),
        "demo frontal images": embed_images(demo.model, demo.processor, [s.frontal for s in studies]),
        "demo studies": embed_images(
            demo.model, demo.processor, [{k: v for k, v in s.views.items() if v is not None} for s in studies]
        ),
    }


def _top(query: torch.Tensor, gallery: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
    scores = (query @ gallery.T)[0]
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return order.tolist(), scores[order].tolist()


def test_retrieve_by_text_and_by_image_match_direct_calls(running_app, gallery_images) -> None:
    demo, url = running_app
    client = _client(url)
    studies, embeds = _direct_gallery(demo)
    text = "moderate cardiomegaly"
    table, images = client.predict(text, "demo studies", 4, api_name="/retrieve_text")
    order, scores = _top(embed_texts(demo.model, demo.processor, [text]), embeds["demo studies"], 4)
    assert [row[2] for row in table["data"]] == [studies[i].study_id for i in order]
    assert [row[1] for row in table["data"]] == pytest.approx(scores, abs=1e-5)
    assert [row[3] for row in table["data"]] == [studies[i].label for i in order]
    assert len(images) == 4 and images[0]["caption"].startswith(f"#1  {scores[0]:.3f}")
    hit = np.asarray(Image.open(images[0]["image"]).convert("L"))
    assert np.array_equal(hit, np.asarray(studies[order[0]].frontal))

    for gallery in ("demo reports", "demo frontal images"):
        table, _ = client.predict(_file(gallery_images["other"]), gallery, 3, api_name="/retrieve_image")
        query = embed_images(demo.model, demo.processor, [gallery_images["other"]])
        order, scores = _top(query, embeds[gallery], 3)
        assert [row[2] for row in table["data"]] == [studies[i].study_id for i in order]
        assert [row[1] for row in table["data"]] == pytest.approx(scores, abs=1e-5)
        if gallery == "demo reports":
            assert [row[4] for row in table["data"]] == [studies[i].report for i in order]


def test_retrieve_from_a_user_embedding_store(demo_model_dir: Path, tmp_path: Path) -> None:
    """A store given at start-up is offered as a gallery and searched like `inference.search` does."""
    reports = ["Small left pleural effusion.", "Mild cardiomegaly.", "No acute process.", "Bibasilar atelectasis."]
    demo = AltaDemo.load(str(demo_model_dir), gallery_size=6)
    embeds = embed_texts(demo.model, demo.processor, reports)
    write_embedding_store(tmp_path / "store", embeds, [f"r{i}" for i in range(4)])
    demo = AltaDemo(demo.model, demo.processor, gallery_size=6, stores={"archive": tmp_path / "store"})
    assert "store: archive" in demo.galleries
    hits = demo.retrieve_by_text("pleural effusion", "store: archive", k=10)  # k larger than the store
    order, scores = _top(embed_texts(demo.model, demo.processor, ["pleural effusion"]), embeds, 4)
    assert [h.id for h in hits] == [f"r{i}" for i in order]
    assert [h.score for h in hits] == pytest.approx(scores, abs=1e-5)
    write_embedding_store(tmp_path / "small", torch.randn(2, 7), ["a", "b"])
    with pytest.raises(ValueError, match="size-7 embeddings"):
        AltaDemo(demo.model, demo.processor, gallery_size=6, stores={"bad": tmp_path / "small"})


def test_heatmap_matches_the_direct_figure(running_app, gallery_images) -> None:
    from evaluation.plots import figure_to_image, similarity_heatmap_figure

    demo, url = running_app
    picture, stats = _client(url).predict(
        _file(gallery_images["frontal"]), "pleural effusion", "max", "±0.5", api_name="/heatmap"
    )
    sim = word_patch_similarity(demo.model, demo.processor, gallery_images["frontal"], "pleural effusion", "max")
    crop = model_view(demo.processor, gallery_images["frontal"])
    expected = figure_to_image(similarity_heatmap_figure(crop, sim, phrase="pleural effusion", vmax=0.5))
    assert np.array_equal(np.asarray(Image.open(picture).convert("RGB")), np.asarray(expected))
    assert f"min {sim.min():.3f}" in stats and f"max {sim.max():.3f}" in stats and "fixed at ±0.5" in stats


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_documented_command_serves_a_hub_model(
    demo_model_dir: Path, running_app, gallery_images, tmp_path
) -> None:
    """`python space/app.py --model owner/name` as a real process, the model fetched from a local fake Hub (remote
    code), answers as the in-process app on the same weights."""
    from ..hub.fake_hub import FakeHub, run_python

    demo, _ = running_app
    with FakeHub(tmp_path / "hub") as hub:
        run_python(
            "from huggingface_hub import HfApi\n"
            "api = HfApi()\n"
            "api.create_repo('fake-user/alta-demo')\n"
            f"api.upload_folder(folder_path={str(demo_model_dir)!r}, repo_id='fake-user/alta-demo')\n",
            env=hub.env(),
            cwd=tmp_path,
        )
        port = _free_port()
        env = {**os.environ, **hub.env(), "PYTHONPATH": "", "GRADIO_ANALYTICS_ENABLED": "False"}
        command = [sys.executable, str(REPO_ROOT / "space" / "app.py"), "--model", "fake-user/alta-demo"]
        command += ["--gallery-size", str(GALLERY_SIZE), "--port", str(port)]
        log = open(tmp_path / "app.log", "w")  # noqa: SIM115 - closed below, after the process
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/"
            deadline = time.monotonic() + 120
            while "Running on local URL" not in (tmp_path / "app.log").read_text():
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the app did not start:\n{(tmp_path / 'app.log').read_text()[-3000:]}")
                time.sleep(0.5)
            remote = _client(url).predict(
                _file(gallery_images["frontal"]), None, None, None, "demo", "", api_name="/classify"
            )
            local = _client(running_app[1]).predict(
                _file(gallery_images["frontal"]), None, None, None, "demo", "", api_name="/classify"
            )
        finally:
            process.terminate()
            process.wait(timeout=30)
            log.close()
    assert [row[0] for row in remote[0]["data"]] == [row[0] for row in local[0]["data"]]
    assert [row[1] for row in remote[0]["data"]] == pytest.approx([row[1] for row in local[0]["data"]], abs=1e-6)
