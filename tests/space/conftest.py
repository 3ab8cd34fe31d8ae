"""The web demo running for real: a model folder, the app launched on 127.0.0.1 in this process, and its URL."""

from __future__ import annotations

from pathlib import Path

import pytest


GALLERY_SIZE = 12


@pytest.fixture(scope="package")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained `alta-demo` model, or the model folder named by `ALTA_SPACE_MODEL` (e.g. the trained demo model,
    `outputs/demo/aligned/model`, for screenshots that show what a person sees): every check compares the app with
    direct calls on the same model, so any ALTA folder works."""
    import os

    if os.environ.get("ALTA_SPACE_MODEL"):
        return Path(os.environ["ALTA_SPACE_MODEL"]).resolve()
    from ..model_folders import demo_preset_model

    return demo_preset_model(tmp_path_factory.mktemp("demo-model"))


@pytest.fixture(scope="package")
def running_app(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """`(demo, url)`: `space/app.py`'s page served by Gradio's real server, headless, until the package's tests end."""
    from space.alta_space import AltaDemo
    from space.app import serve

    demo = AltaDemo.load(str(demo_model_dir), gallery_size=GALLERY_SIZE)
    app = serve(
        demo,
        examples_dir=tmp_path_factory.mktemp("examples"),
        server_name="127.0.0.1",
        prevent_thread_lock=True,
        quiet=True,
    )
    try:
        yield demo, app.local_url
    finally:
        app.close()


@pytest.fixture(scope="package")
def gallery_images(running_app, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PNG files of a few gallery views to upload: `frontal`, `lateral`, `prior_frontal` of one study (complete) and
    the frontal of another (`other`)."""
    demo, _ = running_app
    folder = tmp_path_factory.mktemp("uploads")
    complete = next(s for s in demo.gallery.studies if all(v is not None for v in s.views.values()))
    other = next(s for s in demo.gallery.studies if s.label != complete.label)
    files = {}
    for name, image in [*complete.views.items(), ("other", other.frontal)]:
        files[name] = folder / f"{name}.png"
        image.save(files[name])
    return files
