"""Run every benchmark script in turn, each in its own process, and print their tables.

    python benchmarks/run_all.py            # full size (a quarter of an hour or more on a 2-core CPU)
    python benchmarks/run_all.py --quick    # tiny configs, well under a minute (what the test runs)

Extra arguments after the script's own flags go to every benchmark (e.g. `--device cuda`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


HERE = Path(__file__).resolve().parent
SCRIPTS = ("bench_inference.py", "bench_training.py", "bench_zeroshot.py", "bench_preprocess.py", "bench_embed.py")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    failures = []
    for script in SCRIPTS:
        extra = ["--quick"] if "--quick" in argv else []
        if script != "bench_preprocess.py":
            extra = argv
        print(f"\n<!-- {script} {' '.join(extra)} -->\n", flush=True)
        done = subprocess.run([sys.executable, str(HERE / script), *extra], check=False)
        if done.returncode:
            failures.append(script)
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
