"""`alta-evaluate`: the ALTA paper's benchmarks on your data in the reference's formats, and the demo.

Every task is declared once in its benchmark module (see `evaluation/registry.py`); `alta-evaluate --help` lists
them and `alta-evaluate TASK --help` gives each task's input files, their required columns and its metrics.

Image paths in the input files are joined to `--data-root` (the reference joins them to its `chexpert_root`/RSNA
root) and must stay inside it; absolute paths are refused unless `--allow-absolute-paths`. An image that cannot be
read is skipped, counted and listed in the results (`num_skipped`, `skipped_images`, each with its file and row);
the results JSON is written as soon as the numbers exist, before the figures. Progress bars show the time left. Every protocol follows alta_reference.md §8: one frontal per image through
the single-frontal path, cosine similarity, class embedding = normalised mean of the unnormalised prompt embeddings,
and the reference's tokenisation per task (CheXpert prompts and 5x200 reports through `process_text`, 128 and 256
tokens; RSNA prompts 10 tokens and 8x200 queries 20 tokens, raw; retrieval texts never truncated). Metrics go
through the local `evaluate` modules in `evaluation/metrics`.

Each run writes `<task>_results.json` into `--output-dir`, PNGs (`<task>_confusion_matrix.png`,
`<task>_retrieval.png`, `<task>_heatmap.png`) unless `--no-plots`, and with `--save-embeddings` the embeddings
(`<task>_embeddings.safetensors`) so that the numbers can be recomputed with `evaluation.protocols`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any


if __package__ in (None, ""):  # `python evaluation/cli.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.registry import Protocol, get_protocol, protocols


def _add_common_arguments(parser: argparse.ArgumentParser, protocol: Protocol) -> None:
    parser.add_argument(
        "--model", required=True, help="model folder (alta-convert, save_pretrained or align.py model/)"
    )
    for item in protocol.inputs:
        parser.add_argument(item.flag, required=item.required, default=None, help=item.description)
    if protocol.data_root_help is not None:
        parser.add_argument("--data-root", default=".", help=protocol.data_root_help)
        parser.add_argument(
            "--allow-absolute-paths",
            action="store_true",
            help="accept absolute image paths in the input files (by default every path must be relative and stay "
            "inside --data-root)",
        )
    parser.add_argument("--output-dir", default=None, help="results folder (default outputs/eval/<task>)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--no-plots", action="store_true", help="write no PNGs")
    parser.add_argument("--save-embeddings", action="store_true", help="also write <task>_embeddings.safetensors")


def build_parser() -> argparse.ArgumentParser:
    """`alta-evaluate` with one subcommand per registered task."""
    registered = protocols()
    parser = argparse.ArgumentParser(
        prog="alta-evaluate",
        description=__doc__.split("\n\n")[0],
        epilog="tasks:\n" + "\n".join(f"  {name:24s} {p.summary}" for name, p in registered.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    for name, protocol in registered.items():
        p = sub.add_parser(
            name,
            help=protocol.summary,
            description=protocol.description(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_common_arguments(p, protocol)
        if protocol.add_arguments is not None:
            protocol.add_arguments(p)
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the task described by parsed arguments (see `build_parser`)."""
    from inference.embedding import load_model_and_processor

    protocol = get_protocol(args.task)
    model, processor = load_model_and_processor(args.model, device=args.device)
    common = {
        "output_dir": args.output_dir or os.path.join("outputs", "eval", args.task),
        "processor": processor,
        "batch_size": args.batch_size,
        "plots": not args.no_plots,
    }
    return protocol.run(model, args, common)


def main(argv: list[str] | None = None) -> int:
    """`alta-evaluate TASK ...`: run one benchmark, print its results as JSON, write them to the output folder."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2, default=str))
    return 0


__all__ = ["build_parser", "main", "run"]


if __name__ == "__main__":
    sys.exit(main())
