"""Files that appear complete or not at all: temp file, fsync, rename; folders published by one rename.

Used wherever a file marks work as done (a checkpoint's `trainer_state.json`, the exported `model/` folder, a
benchmark's results, a cached tensor): a crash or a full disk leaves the previous version (or nothing) in place,
never a truncated file that a later run trusts. Temp names are unique per process and call, so concurrent writers of
the same file never rename each other's temp file; the last rename wins and every reader sees one whole version.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def fsync_directory(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in `path` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically: a unique temp file in the same folder, fsync, rename over `path`.

    On any error (e.g. `OSError(ENOSPC)`, disk full) the temp file is removed, `path` keeps its previous content (or
    stays absent) and the error propagates with the file named.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, 0o644)  # mkstemp creates 0600; these are ordinary output files
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and not err.filename:
            raise OSError(err.errno, f"could not write {path}: {err.strerror or err}", str(path)) from err
        raise
    fsync_directory(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """`atomic_write_bytes` for text."""
    return atomic_write_bytes(path, text.encode(encoding))


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under `root` (before publishing it with a rename)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(folder)


@contextlib.contextmanager
def staged_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name next to `final` and publish it with a rename when the block ends.

    Yields the staging folder, named `final.name` inside a hidden sibling folder (so code that names things after
    its folder, such as a model card title, sees the final name). If the block raises, the staging folder is
    removed and `final` is left as it was. On success every file is fsynced, an existing `final` is moved aside,
    the staged folder renamed into place, and the old one removed: at every moment `final` is absent or complete.
    Leftover staging folders of killed processes (`.{name}.staging-*`) are removed first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging_root = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))
    staged = staging_root / final.name
    staged.mkdir()
    try:
        yield staged
        fsync_tree(staged)
        old = None
        if final.exists():
            old = staging_root / f"{final.name}.previous"
            os.replace(final, old)
        try:
            os.replace(staged, final)
        except BaseException:
            if old is not None:
                os.replace(old, final)
            raise
        fsync_directory(final.parent)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)


__all__ = ["atomic_write_bytes", "atomic_write_text", "fsync_directory", "fsync_tree", "staged_directory"]
