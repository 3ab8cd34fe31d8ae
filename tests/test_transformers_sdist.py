"""The sdist unpacker behind the transformers model tests: only `tests/*.py`, nothing that climbs out, stand-ins
exactly for the modules the sdist lacks, and a cache folder that is complete or absent."""

from __future__ import annotations

import io
import runpy
import tarfile
from pathlib import Path

from transformers import PreTrainedConfig

from .transformers_sdist import PACKAGE, _unpack_tests


def _archive(path: Path, files: dict[str, str], link: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return path


def test_unpack_keeps_tests_only_and_adds_missing_stand_ins(tmp_path: Path) -> None:
    archive = _archive(
        tmp_path / "transformers-9.9.9.tar.gz",
        {
            "transformers-9.9.9/tests/test_modeling_common.py": "X = 1\n",
            "transformers-9.9.9/tests/generation/test_utils.py": "class GenerationTesterMixin: real = True\n",
            "transformers-9.9.9/tests/../escape.py": "BAD = 1\n",
            "transformers-9.9.9/src/transformers/__init__.py": "",
            "transformers-9.9.9/tests/data.json": "{}",
        },
        link="transformers-9.9.9/tests/link.py",
    )
    package = tmp_path / "out" / PACKAGE
    stand_ins = _unpack_tests(archive, package)
    files = sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file())
    assert files == [
        "__init__.py",
        "exporters/__init__.py",
        "exporters/test_export.py",
        "generation/__init__.py",
        "generation/test_utils.py",
        "test_modeling_common.py",
        "utils/__init__.py",
        "utils/test_configuration_utils.py",
    ]
    # the sdist's own module wins over the stand-in
    assert stand_ins == ["exporters/test_export.py", "utils/test_configuration_utils.py"]
    assert "real = True" in (package / "generation" / "test_utils.py").read_text()
    assert not (tmp_path / "out" / "escape.py").exists()
    # the config stand-in gives every PreTrainedConfig argument a non-default value
    kwargs = runpy.run_path(str(package / "utils" / "test_configuration_utils.py"))["config_common_kwargs"]
    defaults = PreTrainedConfig()
    assert all(getattr(defaults, key) != value for key, value in kwargs.items() if key != "dtype")
