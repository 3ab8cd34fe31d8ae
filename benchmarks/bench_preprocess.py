"""Throughput of AltaImageProcessor's evaluation transform on the real 1024x1024 NIH PNGs.

Measures images/s with one and two worker processes, for two cases: from the PNG file (decode included) and from an
already decoded PIL image (resize, crop, gray, normalise only). Plain Python, no test framework:

    python benchmarks/bench_preprocess.py            # full run (about half a minute on 2 cores)
    python benchmarks/bench_preprocess.py --quick    # a few seconds, for CI smoke runs
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from modeling_alta.image_processing_alta import AltaImageProcessor  # noqa: E402


DEFAULT_IMAGES = REPO_ROOT.parent / "shared" / "real_cxr" / "nih"
_PROCESSOR: AltaImageProcessor | None = None
_INPUTS: list = []


def _load_pil(paths: list[str]) -> list:
    from PIL import Image

    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.copy())
    return images


def _init_worker(paths: list[str], decoded: bool) -> None:
    # Each worker holds its own inputs, so only an index crosses the process boundary (no pixel pickling).
    global _PROCESSOR, _INPUTS
    _PROCESSOR = AltaImageProcessor()
    _INPUTS = _load_pil(paths) if decoded else list(paths)


def _process(index: int) -> int:
    # One image per call, as a Dataset transform / DataLoader worker would do it.
    assert _PROCESSOR is not None
    return int(_PROCESSOR(_INPUTS[index % len(_INPUTS)])["pixel_values"].shape[0])


def measure(paths: list[str], count: int, workers: int, decoded: bool) -> float:
    """Images per second for `count` images (cycling over `paths`) on `workers` processes (1 = this process)."""
    if workers == 1:
        _init_worker(paths, decoded)
        _process(0)  # warm-up
        start = time.perf_counter()
        done = sum(_process(index) for index in range(count))
        return done / (time.perf_counter() - start)
    context = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(paths, decoded)) as pool:
        pool.map(_process, range(workers), chunksize=1)  # start the workers before timing
        start = time.perf_counter()
        done = sum(pool.map(_process, range(count), chunksize=4))
        return done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of PNGs (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=4, help="passes over the folder (default: %(default)s)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default: 1 2)")
    parser.add_argument("--quick", action="store_true", help="one pass over 8 images")
    args = parser.parse_args(argv)

    paths = sorted(args.images.glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"no PNG files in {args.images}")
    if args.quick:
        paths, args.repeats = paths[:8], 1
    files = [str(path) for path in paths]
    count = len(files) * args.repeats
    size = _load_pil(files[:1])[0].size

    print(f"{len(paths)} PNGs ({size[0]}x{size[1]}), {args.repeats} pass(es), {os.cpu_count()} CPUs")
    print(f"{'input':<22}{'workers':>8}{'images/s':>12}")
    results = {}
    for label, decoded in (("PNG file (decode)", False), ("decoded PIL image", True)):
        for workers in args.workers:
            rate = measure(files, count, workers, decoded)
            results[f"{label} x{workers}"] = rate
            print(f"{label:<22}{workers:>8}{rate:>12.1f}")
    return results


if __name__ == "__main__":
    main()
