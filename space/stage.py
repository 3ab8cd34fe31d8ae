"""Assemble a deployable Hugging Face Space from this folder: the app, its README and requirements, and the
repository packages it imports (a Space has no checkout of the repository), optionally with a model folder.

    python space/stage.py build/space --model outputs/demo/aligned/model    # the demo model travels with the Space
    python space/stage.py build/space                                       # set ALTA_MODEL to a Hub id on the Space
    hf upload <owner>/<space-name> build/space --repo-type space

The app finds packages and a bundled `model/` next to itself (see `app.py`).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
SPACE_FILES = ("app.py", "alta_space.py", "README.md", "requirements.txt")
# What the app imports from the repository (checked by tests/space/test_stage.py in a clean interpreter).
PACKAGES = ("modeling_alta", "inference", "processing", "evaluation", "configuration")
MODEL_DIR = "model"
MARKER = ".alta-space"  # marks a folder this script wrote, so re-staging may replace it


def stage(output: str | Path, model: str | Path | None = None) -> Path:
    """Write the Space into `output` (replaced if it exists); copy `model` (a model folder) to `output/model`."""
    out = Path(output)
    resolved = out.resolve()
    protected = {REPO_ROOT.resolve(), HERE.resolve(), *(REPO_ROOT.resolve() / p for p in PACKAGES)}
    if resolved in protected or resolved in REPO_ROOT.resolve().parents:
        raise ValueError(f"refusing to stage into {out}: choose a folder of its own (e.g. build/space)")
    if model is not None and not (Path(model) / "config.json").is_file():
        raise FileNotFoundError(f"{model} is not a model folder: config.json is missing")
    if out.exists():
        if any(out.iterdir()) and not (out / MARKER).is_file():
            raise FileExistsError(f"{out} exists and was not written by stage.py ({MARKER} missing); not replacing it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in SPACE_FILES:
        shutil.copy2(HERE / name, out / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, out / package, ignore=ignore)
    if model is not None:
        shutil.copytree(model, out / MODEL_DIR, ignore=shutil.ignore_patterns("alta_adapter", "peft_adapter"))
    (out / MARKER).write_text("written by space/stage.py\n")
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="the Space folder to write (replaced)")
    parser.add_argument("--model", default=None, help="a model folder to bundle as model/ (default: none)")
    args = parser.parse_args(argv)
    out = stage(args.output, args.model)
    print(f"staged the Space in {out}")
    return out


if __name__ == "__main__":
    main()
