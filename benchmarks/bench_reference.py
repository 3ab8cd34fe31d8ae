"""This package against the reference implementation itself (DopamineLcy/ALTA), paired, at full size.

Both run in long-lived worker processes (`_reference_workers.py`): the reference's own files, unchanged, in a
separate virtual environment with its pins (transformers 4.31.0, timm 0.6.13, torch 2.13.0), and this package in the
current interpreter. Every case alternates the two workers round by round (the order reversed every other round),
and the ratios are taken round by round: on a shared machine a ratio of two calls made under the same load is far
steadier than either time.

Both sides get the same inputs (checked by checksum) and the same sizes: the reference's own `alta()` construction
(ViT-B/16, 768x4 MAE decoder) with a full-size CXR-BERT (BERT-base) of random weights, against the `alta-base`
preset; random weights, fp32, eval mode for inference and train mode (dropout 0.25 in the text tower) for training.

Cases (time ratio = package / reference, per round; below 1 the package is faster):
- `train`: one training step, batch 4 studies x 4 views, all four losses, forward + backward + AdamW (the
  reference's trainable set, weight-decay groups and loss scaler; the package's `freeze_backbone()` and
  `training.build.build_optimizer`), logit-scale clamp. Reports of realistic lengths by default (72/91/109/128 tokens,
  mean 100, padded to 128; `--report-lengths full` for 128 each; `--report-lengths grouped` for the batch a
  length-grouped sampler makes from such a corpus: 99/100/100/101, which the reference pads to 128 and the package's
  collator to the longest), the MLM copy masks half the words as the
  reference's dataset does. Also prints the voluntary context switches per step of each worker.
- `train-contended`: the same with one busy process (a Python loop) competing for the cores.
- `image`: image embedding, batches 16 and 8 (`forward_img_feature` / `get_image_features`).
- `text`: text embedding, 8 reports of 128 tokens (`forward_txt_feature_single` / `get_text_features`).
- `prompts`: the 489 CheXpert 5x200 prompts to class embeddings: the reference's `process_text` and per-class loop,
  against `inference.zero_shot.ZeroShotClassifier.compute_class_embeddings`.
- `zeroshot`: CheXpert 5x200 zero-shot on `--zeroshot-images` images in batches of 16: the reference's loop
  (prompts re-encoded for every image batch) against the package's (prompts once). Both are extrapolated linearly to
  1,000 images: the reference as its one-off tokenisation plus 63 batches at the measured time per batch, the
  package as its one-off prompt encoding plus 1,000 images at the measured time per image.

Run it with a checkout of the reference code (never committed here):

    python benchmarks/bench_reference.py --reference-dir PATH/TO/ALTA                 # 5 rounds, ~35 min on 2 cores
    python benchmarks/bench_reference.py --reference-dir PATH/TO/ALTA --quick         # 1 round of each case
    python benchmarks/bench_reference.py --reference-dir PATH/TO/ALTA --cases train image --rounds 9

The first run builds the reference's environment under `--venv` (from PyPI; about 1 GB) and writes random
full-size CXR-BERT weights into the work folder next to it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, Path(__file__).resolve().parent):  # the package, and the worker module beside this file
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

WORKER = Path(__file__).resolve().parent / "_reference_workers.py"
DEFAULT_CACHE = Path.home() / ".cache" / "alta-bench"
DEFAULT_TOKENIZER = REPO_ROOT.parent / "shared" / "parity" / "BiomedVLP-CXR-BERT-specialized"
# The reference's environment: its code needs transformers >= 4.31 (`warn_if_padding_and_no_attention_mask`), and
# timm 0.6.12 does not import on Python 3.11 (0.6.13 differs only in maxxvit.py); see the parity goldens' notes.
REFERENCE_REQUIREMENTS = (
    "torch==2.13.0",
    "torchvision==0.28.0",
    "transformers==4.31.0",
    "tokenizers==0.13.3",
    "timm==0.6.13",
    "einops==0.6.0",
    "numpy==1.26.4",
    "nltk==3.10.4",
    "safetensors",
)
CASES = ("train", "train-contended", "image", "text", "prompts", "zeroshot")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
ZEROSHOT_TARGET_IMAGES = 1000


# -- pure helpers (tested in tests/test_bench_reference.py) -----------------------------------------------------------


def ratio_summary(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float]:
    """Per-round ratios `numerator[r] / denominator[r]`: median, min, max and count."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"need the same number of rounds on both sides; got {len(numerator)} and {len(denominator)}")
    ratios = [n / d for n, d in zip(numerator, denominator)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "rounds": len(ratios)}


def realistic_report_lengths(batch: int, length: int, shortest: int) -> list[int]:
    """`batch` report lengths spread evenly from `shortest` to `length` tokens (72..128: mean 100, as measured)."""
    if batch == 1:
        return [length]
    return [round(shortest + (length - shortest) * i / (batch - 1)) for i in range(batch)]


def extrapolate_reference(once_seconds: float, batch_seconds: Sequence[float], images: int, batch: int) -> float:
    """The reference's loop at `images` images: its one-off tokenisation plus one text pass per image batch."""
    batches = -(-images // batch)
    return once_seconds + batches * statistics.mean(batch_seconds)


def extrapolate_package(
    once_seconds: float, batch_seconds: Sequence[float], measured_images: int, images: int
) -> float:
    """The package at `images` images: its one-off prompt encoding plus the measured time per image."""
    return once_seconds + sum(batch_seconds) * images / measured_images


def cpu_description(cpuinfo: str) -> tuple[str, dict[str, bool]]:
    """The CPU model name and which of `CPU_FLAGS` it has, from the text of /proc/cpuinfo."""
    model, flags = platform.processor() or platform.machine(), set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    return model, {flag: flag in flags for flag in CPU_FLAGS}


def check_reference_dir(path: Path) -> None:
    """Raise `FileNotFoundError` naming what a reference checkout lacks."""
    from _reference_workers import REFERENCE_FILES

    if not path.is_dir():
        raise FileNotFoundError(f"--reference-dir {path} is not a folder; pass a checkout of DopamineLcy/ALTA")
    missing = [name for name in REFERENCE_FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--reference-dir {path} lacks {', '.join(missing)}; pass a checkout of DopamineLcy/ALTA (its root folder)"
        )


def benchmark_vocabulary(base_vocab: Sequence[str], words: Sequence[str], size: int) -> list[str]:
    """A vocabulary of exactly `size` entries: `base_vocab`, then the `words` it lacks (so that prompts tokenise to
    about one token a word, as with CXR-BERT's own vocabulary), then `[unusedN]` fillers."""
    vocab = list(dict.fromkeys(base_vocab))
    known = set(vocab)
    for word in words:
        if word not in known:
            vocab.append(word)
            known.add(word)
    if len(vocab) > size:
        raise ValueError(f"the benchmark vocabulary needs {len(vocab)} entries but the model has {size}")
    vocab += [f"[unused{i}]" for i in range(size - len(vocab))]
    return vocab


# -- the machine ------------------------------------------------------------------------------------------------------


def machine_lines(threads: int) -> list[str]:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    model, flags = cpu_description(cpuinfo)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- cpu: {model}, {cores} cores available; {threads} threads per worker",
        "- cpu flags: " + ", ".join(f"{name} {'yes' if has else 'no'}" for name, has in flags.items()),
        f"- OMP_WAIT_POLICY in the environment: {os.environ.get('OMP_WAIT_POLICY', 'unset')}, GOMP_SPINCOUNT: "
        f"{os.environ.get('GOMP_SPINCOUNT', 'unset')}",
    ]
    return lines


def load_line(when: str) -> str:
    if not hasattr(os, "getloadavg"):
        return f"- load average {when}: n/a"
    return f"- load average {when} (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


# -- the reference's environment and work folder ----------------------------------------------------------------------


def ensure_venv(venv: Path, python: str) -> Path:
    """The reference's virtual environment, built on first use; its python."""
    marker = venv / "alta-bench-requirements.txt"
    wanted = "\n".join(REFERENCE_REQUIREMENTS) + "\n"
    interpreter = venv / "bin" / "python"
    if marker.is_file() and marker.read_text() == wanted and interpreter.exists():
        return interpreter
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / f"{venv.name}-build.log"
    print(f"building the reference's environment in {venv} (log: {log}) ...", flush=True)
    with open(log, "w") as out:
        steps = [
            [python, "-m", "venv", str(venv)],
            [str(interpreter), "-m", "pip", "install", *REFERENCE_REQUIREMENTS],
        ]
        for step in steps:
            out.write("$ " + " ".join(step) + "\n")
            out.flush()
            try:
                done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT)
            except OSError as err:
                raise SystemExit(f"building the reference's environment failed at: {' '.join(step)}: {err}") from err
            if done.returncode != 0:
                out.close()
                tail = "\n".join(log.read_text().splitlines()[-40:])
                raise SystemExit(
                    f"building the reference's environment failed (exit {done.returncode}) at: {' '.join(step)}\n"
                    f"--- last lines of {log} ---\n{tail}"
                )
    from processing.atomic import atomic_write_text

    atomic_write_text(marker, wanted)
    return interpreter


def prepare_workspace(workspace: Path, tokenizer_dir: Path, text_config, prompts: Sequence[str]) -> Path:
    """The folder the reference runs in: `BiomedVLP-CXR-BERT-specialized/` with a full-size config (sizes from the
    package's preset), the tokenizer files of `tokenizer_dir` and a vocabulary of the model's size. The weights are
    written by the reference worker on first use."""
    from _reference_workers import TEXT_FOLDER

    from modeling_alta.processing_alta import process_text
    from processing.atomic import atomic_write_text

    files = ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
    missing = [name for name in files if not (tokenizer_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--tokenizer {tokenizer_dir} lacks {', '.join(missing)}; pass a CXR-BERT-style folder (the parity "
            "goldens' BiomedVLP-CXR-BERT-specialized has them)"
        )
    folder = workspace / TEXT_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((tokenizer_dir / "config.json").read_text())
    for key in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
    ):
        config[key] = getattr(text_config, key)
    config["projection_size"] = getattr(text_config, "projection_size", config.get("projection_size", 128))
    base = (tokenizer_dir / "vocab.txt").read_text().splitlines()
    words = [w for p in prompts for w in re.findall(r"\w+", process_text(p).lower())]
    vocab = "\n".join(benchmark_vocabulary(base, words, config["vocab_size"])) + "\n"
    wanted = {"config.json": json.dumps(config, indent=2) + "\n", "vocab.txt": vocab}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        wanted[name] = (tokenizer_dir / name).read_text()
    for name, text in wanted.items():
        path = folder / name
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)
            # A config or vocabulary change makes the saved random weights stale.
            (folder / "pytorch_model.bin").unlink(missing_ok=True)
    return workspace


# -- workers ----------------------------------------------------------------------------------------------------------


class Worker:
    """One worker process; `call` sends a command and waits for its answer."""

    def __init__(self, name: str, command: list[str], log: Path, env: dict[str, str]) -> None:
        self.name, self.log = name, log
        self._log_file = open(log, "w")
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log_file, text=True, env=env
        )
        self.info = self._receive("start-up")

    def _receive(self, what: str) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self._fail(what, f"the worker exited with code {self.proc.returncode}")
        answer = json.loads(line)
        if not answer.get("ok"):
            self._fail(what, answer.get("error", "no error message"))
        return answer

    def _fail(self, what: str, message: str) -> None:
        self._log_file.flush()
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(
            f"the {self.name} worker failed at {what}:\n{message}\n--- last lines of {self.log} ---\n{tail}"
        )

    def call(self, cmd: str, **kwargs) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        return self._receive(cmd)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("quit")
            except SystemExit:
                pass
            self.proc.wait(timeout=60)
        self._log_file.close()


def paired_rounds(workers: dict[str, Worker], cmd: str, rounds: int, warmup: int = 1, **kwargs) -> dict[str, list]:
    """Each worker's answers over `rounds` alternating rounds (order reversed every other round), after `warmup`."""
    order = list(workers)
    for _ in range(warmup):
        for name in order:
            workers[name].call(cmd, **kwargs)
    answers: dict[str, list] = {name: [] for name in order}
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            answers[name].append(workers[name].call(cmd, **kwargs))
        print(
            f"  {cmd} {kwargs or ''} round {r + 1}/{rounds}: "
            + ", ".join(
                f"{n} {answers[n][-1]['seconds']:.2f} s (CPU {answers[n][-1]['cpu_seconds']:.2f})" for n in order
            ),
            flush=True,
        )
    return answers


class BusyProcess:
    """One process that keeps a core busy (a Python loop) while the block runs."""

    def __enter__(self) -> BusyProcess:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True:\n    pass"])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


# -- the run ----------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-dir", type=Path, required=True, help="a checkout of DopamineLcy/ALTA")
    parser.add_argument(
        "--venv",
        type=Path,
        default=DEFAULT_CACHE / "reference-venv",
        help="the reference's virtual environment, built on first use (default: %(default)s)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_CACHE / "reference-work",
        help="where the reference runs: its text-model folder (random weights, ~0.5 GB) and the worker logs "
        "(default: %(default)s)",
    )
    parser.add_argument("--python", default=sys.executable, help="the interpreter the venv is made from")
    parser.add_argument(
        "--tokenizer", type=Path, default=DEFAULT_TOKENIZER, help="folder with CXR-BERT-style tokenizer files"
    )
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of train/image/text (default: 5)")
    parser.add_argument(
        "--long-rounds", type=int, default=1, help="timed rounds of prompts and zeroshot (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each worker (default: 2)")
    parser.add_argument("--quick", action="store_true", help="one timed round of each case, for a smoke run")
    parser.add_argument("--batch-size", type=int, default=4, help="studies per training step (default: 4)")
    parser.add_argument(
        "--report-lengths",
        choices=["realistic", "full", "grouped"],
        default="realistic",
        help="reports of the training batch: 72..128 tokens (mean 100), 128 each, or the batch `--group_by_length` "
        "forms around the mean of such a corpus (99..101: neighbours in a sorted window of many batches differ by "
        "about a token)",
    )
    parser.add_argument(
        "--zeroshot-images", type=int, default=16, help="images the zero-shot loops run on (default: 16)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = args.long_rounds = 1
    for name in ("rounds", "long_rounds", "threads", "batch_size", "zeroshot_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1; got {getattr(args, name)}")
    return args


def make_spec(args, config, tokenizer_ids: dict[str, int], preset: str = "alta-base") -> dict:
    """What both workers build: sizes (from `config`, the package's `preset`), seed, threads, token ids."""
    vision, text = config.vision_config, config.text_config
    length = 128
    if args.report_lengths == "realistic":
        lengths = realistic_report_lengths(args.batch_size, length, 72)
    elif args.report_lengths == "grouped":
        lengths = realistic_report_lengths(args.batch_size, 101, 99)
    else:
        lengths = [length] * args.batch_size
    return {
        "seed": args.seed,
        "threads": args.threads,
        "preset": preset,
        "batch": args.batch_size,
        "image_size": vision.image_size,
        "reconstruction_size": vision.reconstruction_image_size,
        "mask_ratio": vision.mask_ratio,
        "text_length": length,
        "report_lengths": lengths,
        "vocab_size": text.vocab_size,
        "first_word_id": max(tokenizer_ids.values()) + 1,
        **tokenizer_ids,
        "mlm_probability": 0.5,  # the reference's ALTADataset._random_mask default
        "learning_rate": 1e-4,
        "image_batches": [16, 8],
        "text_batch": 8,
        "zeroshot_batch": 16,
    }


def fmt_ratio(summary: dict[str, float]) -> str:
    if summary["rounds"] == 1:
        return f"{summary['median']:.3f} (1 round)"
    return f"**{summary['median']:.3f}** ({summary['min']:.3f}..{summary['max']:.3f}, {summary['rounds']} rounds)"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    reference_dir = args.reference_dir.expanduser().resolve()
    check_reference_dir(reference_dir)

    from configuration import load_preset
    from processing.prompts import chexpert_5x200_prompts, flatten_prompt_ensemble

    config = load_preset("alta-base")
    prompts, _, _ = flatten_prompt_ensemble(chexpert_5x200_prompts())
    interpreter = ensure_venv(args.venv.expanduser(), args.python)
    workspace = prepare_workspace(args.workdir.expanduser(), args.tokenizer, config.text_config, prompts)

    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(str(args.tokenizer))
    special = {"cls_id": "[CLS]", "sep_id": "[SEP]", "mask_id": "[MASK]", "pad_id": "[PAD]", "unk_id": "[UNK]"}
    tokenizer_ids = {key: tokenizer.convert_tokens_to_ids(token) for key, token in special.items()}
    spec = make_spec(args, config, tokenizer_ids)

    print("# bench_reference: this package against the reference implementation (paired, alternating workers)")
    print("\n".join(machine_lines(args.threads)))
    print(load_line("at start"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    reference_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}  # nothing of this repository there
    try:  # the package's entry points set their OpenMP defaults before torch loads; its worker runs as they do
        from training.threads import openmp_environment

        env.update(openmp_environment(env))
    except ImportError:  # a checkout that predates them
        pass
    common = ["--workspace", str(workspace), "--spec", json.dumps(spec)]
    workers: dict[str, Worker] = {}
    try:
        print("starting the workers (the reference's first start writes its random text weights) ...", flush=True)
        workers["reference"] = Worker(
            "reference",
            [str(interpreter), str(WORKER), "--side", "reference", "--reference-dir", str(reference_dir), *common],
            workspace / "reference-worker.log",
            reference_env,
        )
        workers["package"] = Worker(
            "package",
            [sys.executable, str(WORKER), "--side", "package", *common],
            workspace / "package-worker.log",
            env,
        )
        results = run_cases(args, spec, workers)
    finally:
        for worker in workers.values():
            worker.close()
    print(load_line("at end"))
    return results


def matmul_efficiency(workers: dict[str, Worker], train: dict[str, list], rounds: int) -> dict[str, dict]:
    """Each side's training step as a share of the machine's matmul rate, measured in the same run.

    FLOPs per step are counted once per side (`torch.utils.flop_counter`); the rate of a 2048-square fp32 GEMM is
    measured in paired rounds at the same thread count. Share = FLOPs / median step seconds / median GEMM rate:
    how close the step's remaining work runs to what the matmul kernels reach on this machine.
    """
    flops = {name: worker.call("flops")["flops"] for name, worker in workers.items()}
    rates = paired_rounds(workers, "matmul", rounds)
    out = {}
    for name in workers:
        rate = statistics.median(a["matmul_flops_per_second"] for a in rates[name])
        seconds = statistics.median(a["seconds"] for a in train[name])
        out[name] = {"flops": flops[name], "matmul_flops_per_second": rate, "share": flops[name] / seconds / rate}
        print(
            f"- {name}: {flops[name] / 1e9:.1f} GFLOP per step (counted), GEMM rate {rate / 1e9:.1f} GFLOP/s, "
            f"step at {out[name]['share']:.2f} of it"
        )
    return out


def run_cases(args, spec: dict, workers: dict[str, Worker]) -> dict:
    ref, pkg = workers["reference"].info, workers["package"].info
    if ref["checksums"] != pkg["checksums"]:
        raise SystemExit(f"the workers built different inputs: {ref['checksums']} vs {pkg['checksums']}")
    ref_prompts = [p for texts in ref["prompts"].values() for p in texts]
    pkg_prompts = [p for texts in pkg["prompts"].values() for p in texts]
    lengths = spec["report_lengths"]
    print(
        f"- reference: torch {ref['torch']}, transformers {ref.get('transformers')}, OMP_WAIT_POLICY "
        f"{ref.get('omp_wait_policy') or 'unset'}, GOMP_SPINCOUNT {ref.get('gomp_spincount') or 'unset'}; "
        f"parameters "
        f"{ref['parameters']['total']:,}, trainable {ref['parameters']['trainable']:,}; {len(ref_prompts)} prompts"
    )
    print(
        f"- package: torch {pkg['torch']}, transformers {pkg.get('transformers')}, OMP_WAIT_POLICY "
        f"{pkg.get('omp_wait_policy') or 'unset'}, GOMP_SPINCOUNT {pkg.get('gomp_spincount') or 'unset'}; "
        f"parameters "
        f"{pkg['parameters']['total']:,}, trainable {pkg['parameters']['trainable']:,}; {len(pkg_prompts)} prompts"
    )
    if sorted(ref_prompts) != sorted(pkg_prompts):
        print("- WARNING: the two prompt lists differ")
    print(
        f"- inputs identical on both sides (checksums); fp32; training batch {spec['batch']} studies x 4 views, "
        f"reports {'/'.join(map(str, lengths))} tokens (mean {statistics.mean(lengths):.1f}; the reference pads to "
        f"{spec['text_length']}, the package's collator to the longest, {max(lengths)}), MLM probability "
        f"{spec['mlm_probability']}, mask ratio {spec['mask_ratio']}; "
        f"{args.rounds} timed rounds (prompts, zero-shot: {args.long_rounds}) after 1 warm-up round"
    )

    rows, results = [], {}

    def add(label: str, answers: dict[str, list], key: str = "seconds") -> dict:
        r = [a[key] for a in answers["reference"]]
        p = [a[key] for a in answers["package"]]
        summary = ratio_summary(p, r)
        rows.append([label, statistics.median(r), statistics.median(p), fmt_ratio(summary), 1 / summary["median"]])
        results[label] = summary
        return summary

    switches = {}

    def step_counters(answers: dict[str, list]) -> dict[str, dict[str, float]]:
        keys = ("voluntary_switches", "involuntary_switches", "cpu_seconds", "seconds")
        return {n: {k: statistics.median(a[k] for a in v) for k in keys} for n, v in answers.items()}

    if "train" in args.cases:
        answers = paired_rounds(workers, "train", args.rounds)
        add(f"training step, batch {spec['batch']}", answers)
        add(f"(CPU time of that step, all threads, batch {spec['batch']})", answers, key="cpu_seconds")
        switches["no competing process"] = step_counters(answers)
        results["matmul_efficiency"] = matmul_efficiency(workers, answers, args.rounds)
    if "train-contended" in args.cases:
        with BusyProcess():
            answers = paired_rounds(workers, "train", args.rounds)
        add(f"training step, batch {spec['batch']}, one busy process competing", answers)
        switches["one busy process"] = step_counters(answers)
    if "image" in args.cases:
        for batch in spec["image_batches"]:
            add(f"image embedding, batch {batch}", paired_rounds(workers, "image", args.rounds, batch=batch))
    if "text" in args.cases:
        add(
            f"text embedding, {spec['text_batch']} x {spec['text_length']} tokens",
            paired_rounds(workers, "text", args.rounds),
        )
    prompt_note = ""
    if "prompts" in args.cases:
        answers = paired_rounds(workers, "prompts", args.long_rounds, warmup=0)
        add(f"{len(ref_prompts)} CheXpert prompts to class embeddings", answers)
        r, p = answers["reference"][0], answers["package"][0]
        prompt_note = (
            f"prompt tokens (with [CLS]/[SEP]): mean {r['prompt_tokens_mean']:.1f}; reference pads to "
            f"{r['padded_to']}, the package's tokenizer call pads to {p['padded_to']} (before any trimming inside)"
        )

    if rows:
        print("\n## Against the reference implementation (time ratio = package / reference, per round)\n")
        print("| case | reference s | package s | time ratio: median (range) | package speed-up |")
        print("|---|---|---|---|---|")
        for label, ref_s, pkg_s, ratio, speed in rows:
            print(f"| {label} | {ref_s:.3f} | {pkg_s:.3f} | {ratio} | {speed:.2f}x |")
    if switches:
        print(
            "\nPer training step, medians over rounds (all threads of each worker; CPU time well above the "
            "single-thread work means threads spin while they wait):\n"
        )
        print("| | voluntary switches ref / pkg | involuntary ref / pkg | CPU s ref / pkg | wall s ref / pkg |")
        print("|---|---|---|---|---|")
        for label, v in switches.items():
            r, p = v["reference"], v["package"]
            print(
                f"| {label} | {r['voluntary_switches']:,.0f} / {p['voluntary_switches']:,.0f} "
                f"| {r['involuntary_switches']:,.0f} / {p['involuntary_switches']:,.0f} "
                f"| {r['cpu_seconds']:.2f} / {p['cpu_seconds']:.2f} | {r['seconds']:.2f} / {p['seconds']:.2f} |"
            )
        results["per_step"] = switches
    if prompt_note:
        print(f"\n{prompt_note}")

    if "zeroshot" in args.cases:
        n = args.zeroshot_images
        kwargs = {"images": n, "batch": spec["zeroshot_batch"]}
        answers = paired_rounds(workers, "zeroshot", args.long_rounds, warmup=0, **kwargs)
        ref_total = [
            extrapolate_reference(
                a["once_seconds"], a["batch_seconds"], ZEROSHOT_TARGET_IMAGES, spec["zeroshot_batch"]
            )
            for a in answers["reference"]
        ]
        pkg_total = [
            extrapolate_package(a["once_seconds"], a["batch_seconds"], n, ZEROSHOT_TARGET_IMAGES)
            for a in answers["package"]
        ]
        summary = ratio_summary(ref_total, pkg_total)
        results["zeroshot_speedup"] = summary
        ref0, pkg0 = answers["reference"][0], answers["package"][0]
        print(f"\n## CheXpert 5x200 zero-shot: measured on {n} images, extrapolated linearly to 1,000\n")
        print("| | measured s | once s | per batch of 16 s | 1,000 images (extrapolated) |")
        print("|---|---|---|---|---|")
        print(
            f"| reference (prompts re-encoded per batch) | {statistics.median(a['seconds'] for a in answers['reference']):.1f} "
            f"| {ref0['once_seconds']:.2f} (tokenise) | {statistics.mean(ref0['batch_seconds']):.1f} "
            f"| {statistics.median(ref_total) / 60:.1f} min |"
        )
        print(
            f"| package (prompts once) | {statistics.median(a['seconds'] for a in answers['package']):.1f} "
            f"| {pkg0['once_seconds']:.1f} (prompts) | {statistics.mean(pkg0['batch_seconds']):.2f} "
            f"| {statistics.median(pkg_total) / 60:.1f} min |"
        )
        print(
            f"\nPackage speed-up at 1,000 images: **{summary['median']:.1f}x** "
            + (
                f"({summary['min']:.1f}..{summary['max']:.1f}, {summary['rounds']} rounds)"
                if summary["rounds"] > 1
                else "(1 round)"
            )
            + "; the reference as its "
            f"tokenisation + {-(-ZEROSHOT_TARGET_IMAGES // spec['zeroshot_batch'])} batches at the measured time "
            "per batch, the package as its prompt encoding + 1,000 x the measured time per image."
        )
    return results


if __name__ == "__main__":
    main()
