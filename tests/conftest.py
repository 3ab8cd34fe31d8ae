"""Shared fixtures: offline Hugging Face caches, the parity goldens, the real radiographs, tiny configs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


# Offline and isolated before anything imports huggingface_hub/transformers/datasets: tests never touch the network
# or the user's caches, and remote-code modules land in a throwaway folder.
_HF_TMP = tempfile.mkdtemp(prefix="alta-tests-hf-")
os.environ.setdefault("HF_HOME", _HF_TMP)
os.environ.setdefault("HF_MODULES_CACHE", os.path.join(_HF_TMP, "modules"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARITY_DIR = REPO_ROOT.parent / "shared" / "parity"
DEFAULT_REAL_CXR_DIR = REPO_ROOT.parent / "shared" / "real_cxr"


def parity_dir_or_skip() -> Path:
    """The golden folder: `ALTA_PARITY_DIR` if set (then a missing folder is an error), else ../shared/parity."""
    explicit = os.environ.get("ALTA_PARITY_DIR")
    if explicit:
        path = Path(explicit)
        if not path.is_dir():
            raise FileNotFoundError(f"ALTA_PARITY_DIR={explicit!r} is not a directory")
        return path
    if not DEFAULT_PARITY_DIR.is_dir():
        pytest.skip(f"parity goldens not found at {DEFAULT_PARITY_DIR}")
    return DEFAULT_PARITY_DIR


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return parity_dir_or_skip()


@pytest.fixture(scope="session")
def real_cxr_dir() -> Path:
    if not DEFAULT_REAL_CXR_DIR.is_dir():
        pytest.skip(f"real radiographs not found at {DEFAULT_REAL_CXR_DIR}")
    return DEFAULT_REAL_CXR_DIR


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same RNG state, whatever ran before it."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_config():
    from configuration import load_preset

    return load_preset("alta-tiny")
