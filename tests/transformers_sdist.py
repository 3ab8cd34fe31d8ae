"""transformers' own model tests, imported from the source distribution of the installed transformers release.

`ModelTesterMixin` (tests/test_modeling_common.py) and `ConfigTester` (tests/test_configuration_common.py) live in
the transformers repository, not in the wheel; the PyPI source distribution of each release ships them. This module
fetches that sdist once (`pip download --no-deps --no-binary :all: transformers==<installed version>`), unpacks its
`tests/` folder into a cache shared by later runs, and imports it as a package under its own name (so it cannot
shadow this repository's `tests` package). Nothing of it is copied into the repository.

The sdist carries the top-level `tests/*.py` files only. Three modules they import are absent from it; where that is
the case, stand-ins written here take their place:

- `exporters/test_export.py`: `ExportTesterMixin`, the base class of `ModelTesterMixin`, holding the `torch.export`
  tests. The stand-in is an empty mixin, so those tests are *not* run (they are not in the sdist to run).
- `generation/test_utils.py`: `GenerationTesterMixin`, only used in an `issubclass` check by
  `test_generation_tester_mixin_inheritance` (our models do not generate). The stand-in is an empty mixin.
- `utils/test_configuration_utils.py`: `config_common_kwargs`, a non-default value for every argument of
  `PreTrainedConfig.__init__`, used by `ConfigTester.check_config_arguments_init`. The stand-in builds such values
  from the installed `PreTrainedConfig` (and fails loudly if an argument appears that it has no value for).

Cache: `$ALTA_TRANSFORMERS_TESTS_CACHE`, else `$XDG_CACHE_HOME/alta-tests` (default `~/.cache/alta-tests`). A version
folder is complete once its `READY` file exists; it is assembled in a temporary folder and renamed into place, so an
interrupted fetch never leaves a half-written cache behind.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import transformers


PACKAGE = "hf_upstream_tests"
READY = "READY"

_STAND_INS = {
    "exporters/test_export.py": '''"""Stand-in (alta): the sdist lacks tests/exporters; its torch.export tests are not run."""


class ExportTesterMixin:
    pass
''',
    "generation/test_utils.py": '''"""Stand-in (alta): the sdist lacks tests/generation; ALTA models do not generate."""


class GenerationTesterMixin:
    pass
''',
    "utils/test_configuration_utils.py": '''"""Stand-in (alta): the sdist lacks tests/utils. A non-default value for each `PreTrainedConfig` argument."""

import inspect

from transformers import PreTrainedConfig

_VALUES = {
    "architectures": ["AltaModel"],
    "output_hidden_states": True,
    "output_attentions": True,
    "return_dict": False,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "id2label": {0: "label"},
    "label2id": {"label": 0},
    "problem_type": "regression",
}
# Set by the library itself, or changing what kind of model the config describes.
_EXEMPT = {"self", "kwargs", "transformers_version", "is_encoder_decoder"}
_missing = [
    name for name in inspect.signature(PreTrainedConfig.__init__).parameters if name not in _EXEMPT | set(_VALUES)
]
if _missing:
    raise RuntimeError(f"PreTrainedConfig has new arguments {_missing}: give them non-default values in {__file__}")
config_common_kwargs = dict(_VALUES)
''',
}


class SdistUnavailable(RuntimeError):
    """The transformers source distribution could not be fetched or unpacked."""


def cache_root() -> Path:
    explicit = os.environ.get("ALTA_TRANSFORMERS_TESTS_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "alta-tests"


def _download_sdist(version: str, into: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        f"transformers=={version}",
        "-d",
        str(into),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SdistUnavailable(f"`{' '.join(command)}` did not complete: {err}") from err
    archives = sorted(into.glob("transformers-*.tar.gz"))
    if done.returncode != 0 or not archives:
        raise SdistUnavailable(
            f"`{' '.join(command)}` failed (exit {done.returncode}); PyPI must be reachable to run transformers' "
            f"model tests.\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return archives[0]


def _unpack_tests(archive: Path, package_dir: Path) -> list[str]:
    """Extract the archive's top-level `tests/*.py` into `package_dir`; add stand-ins for what it lacks."""
    package_dir.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            # Exactly <root>/tests/<file>.py: nothing outside tests/, no links, no paths that climb out.
            if len(parts) < 3 or parts[1] != "tests" or not member.isfile() or ".." in parts:
                continue
            relative = Path(*parts[2:])
            if relative.suffix != ".py":
                continue
            target = package_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is None:
                continue
            target.write_bytes(source.read())
    if not (package_dir / "test_modeling_common.py").is_file():
        raise SdistUnavailable(f"{archive.name} holds no tests/test_modeling_common.py")
    stand_ins = []
    for relative, text in _STAND_INS.items():
        target = package_dir / relative
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            stand_ins.append(relative)
    for folder in [package_dir, *(p for p in package_dir.rglob("*") if p.is_dir())]:
        init = folder / "__init__.py"
        if not init.exists():
            init.write_text("")
    return stand_ins


def ensure_upstream_tests(version: str | None = None) -> Path:
    """The cache folder holding the importable `hf_upstream_tests` package for `version` (default: installed)."""
    version = version or transformers.__version__
    final = cache_root() / f"transformers-{version}"
    if (final / READY).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".transformers-{version}-", dir=final.parent))
    try:
        archive = _download_sdist(version, work / "download")
        assembled = work / "assembled"
        stand_ins = _unpack_tests(archive, assembled / PACKAGE)
        (assembled / READY).write_text(
            f"transformers {version} tests from {archive.name}; stand-ins: {', '.join(stand_ins) or 'none'}\n"
        )
        if final.exists():  # an incomplete folder from an older layout: replace it
            shutil.rmtree(final)
        try:
            os.replace(assembled, final)
        except OSError:
            if not (final / READY).is_file():  # not a concurrent run that finished first
                raise
    except (OSError, tarfile.TarError) as err:
        raise SdistUnavailable(f"could not unpack the transformers {version} sdist into {final}: {err}") from err
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def import_upstream(module: str, version: str | None = None) -> ModuleType:
    """Import `hf_upstream_tests.<module>` (e.g. `test_modeling_common`) from the cached sdist."""
    root = str(ensure_upstream_tests(version))
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(f"{PACKAGE}.{module}")


def stand_ins_in_use(version: str | None = None) -> str:
    """The READY line: which sdist the tests came from and which stand-ins were written."""
    return (ensure_upstream_tests(version) / READY).read_text().strip()
