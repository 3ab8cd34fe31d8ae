"""`space/stage.py` writes a Space that runs on its own: in a fresh interpreter whose working directory is the staged
folder, the app's whole flow (classify, retrieve, heatmap on the bundled model) imports every first-party module from
the staged copy, never from the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from space.stage import MARKER, stage


pytest.importorskip("gradio")  # the staged app imports it


FLOW = """
import json, sys
import app
from alta_space import AltaDemo
demo = AltaDemo.load(str(app.DEFAULT_MODEL), gallery_size=6)
frontal = demo.gallery.studies[0].frontal
demo.classify(frontal, ensemble="demo")
demo.classify(frontal, demo.gallery.studies[0].views["lateral"], ensemble="typed labels", labels_text="edema, effusion")
demo.retrieve_by_text("edema", "demo studies")
demo.retrieve_by_image(frontal, "demo reports")
demo.heatmap(frontal, "pleural effusion")
first_party = ("alta_space", "app", "modeling_alta", "inference", "processing", "evaluation", "configuration",
               "training", "space")
print(json.dumps({"default_model": str(app.DEFAULT_MODEL), "modules": {
    name: getattr(module, "__file__", None) for name, module in sys.modules.items()
    if name.split(".")[0] in first_party}}))
"""


def test_staged_space_runs_from_its_own_files(demo_model_dir: Path, tmp_path: Path) -> None:
    out = stage(tmp_path / "space", model=demo_model_dir)
    assert (out / "model" / "config.json").is_file() and (out / MARKER).is_file()
    assert (out / "README.md").read_text().startswith("---\ntitle: ")
    env = {**os.environ, "PYTHONPATH": "", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("ALTA_MODEL", None)
    done = subprocess.run([sys.executable, "-c", FLOW], cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(report["default_model"]).resolve() == (out / "model").resolve()
    files = {name: path for name, path in report["modules"].items() if path}
    assert {"app", "alta_space", "inference.zero_shot", "processing.demo_data", "evaluation.plots"} <= set(files)
    outside = {name: path for name, path in files.items() if out.resolve() not in Path(path).resolve().parents}
    assert not outside, f"imported from outside the staged Space: {outside}"
    assert not any(name.split(".")[0] == "training" for name in files)


def test_stage_refuses_to_overwrite_what_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not replacing"):
        stage(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="refusing"):
        stage(Path(__file__).resolve().parents[2])
    with pytest.raises(FileNotFoundError, match="config.json"):
        stage(tmp_path / "out", model=tmp_path)
    stage(tmp_path / "out")
    stage(tmp_path / "out")  # a folder it wrote is replaced
