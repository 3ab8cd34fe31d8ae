"""The benchmark registry: every `alta-evaluate` task is one `Protocol`, declared in its benchmark module.

Adding a benchmark means writing one module that defines `PROTOCOLS = (Protocol(...), ...)` and adding its name to
`PROTOCOL_MODULES` below. The command line (`alta-evaluate`), its `--help` and the README table are built from these
declarations, so a task's arguments, input files, required columns and metrics are stated in one place.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


#: The benchmark modules, in the order `alta-evaluate --help` lists their tasks: one line per module.
PROTOCOL_MODULES: tuple[str, ...] = (
    "evaluation.chexpert_5x200",
    "evaluation.rsna",
    "evaluation.chexpert_8x200",
    "evaluation.demo",
)


@dataclass(frozen=True)
class InputFile:
    """One input file of a task: the command-line flag that names it, its format, and the columns it must have."""

    flag: str
    description: str
    columns: tuple[str, ...] = ()
    required: bool = True


@dataclass(frozen=True)
class Protocol:
    """An `alta-evaluate` task.

    Attributes:
        name: the subcommand, e.g. `"chexpert5x200-zeroshot"`.
        summary: one line for `alta-evaluate --help`.
        inputs: the input files (flag, format, required columns), listed in `alta-evaluate TASK --help`.
        metrics: the keys of the results JSON that hold the benchmark's numbers.
        run: `run(model, processor, args, common) -> results dict`; `args` are the parsed arguments and `common` the
            keyword arguments every task takes (`output_dir`, `processor`, `batch_size`, `plots`).
        add_arguments: adds the task's own options (beyond its input files, `--data-root` and the common ones).
        data_root_help: what `--data-root` means for this task; `None` if the task has no image paths to resolve.
        notes: extra paragraphs for `--help` (protocol details a user must know).
    """

    name: str
    summary: str
    inputs: tuple[InputFile, ...]
    metrics: tuple[str, ...]
    run: Callable[[Any, argparse.Namespace, dict[str, Any]], dict[str, Any]]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    data_root_help: str | None = "folder the image paths in the input files are relative to"
    notes: str = ""

    def description(self) -> str:
        """The `alta-evaluate TASK --help` text: input files with their columns, then the metrics."""
        lines = [self.summary, "", "input files:"]
        for item in self.inputs:
            cols = f" (columns: {', '.join(item.columns)})" if item.columns else ""
            optional = "" if item.required else " [optional]"
            lines.append(f"  {item.flag}{optional}: {item.description}{cols}")
        lines += ["", f"metrics: {', '.join(self.metrics)}"]
        if self.notes:
            lines += ["", self.notes]
        return "\n".join(lines)


def protocols() -> dict[str, Protocol]:
    """All registered tasks by name, in `PROTOCOL_MODULES` order."""
    found: dict[str, Protocol] = {}
    for module_name in PROTOCOL_MODULES:
        module = importlib.import_module(module_name)
        declared = getattr(module, "PROTOCOLS", None)
        if not declared:
            raise RuntimeError(f"{module_name} is listed in PROTOCOL_MODULES but defines no PROTOCOLS")
        for protocol in declared:
            if protocol.name in found:
                raise RuntimeError(f"task {protocol.name!r} is registered twice ({module_name})")
            found[protocol.name] = protocol
    return found


def get_protocol(name: str) -> Protocol:
    """The task called `name`; the error lists the registered ones."""
    registered = protocols()
    if name not in registered:
        raise ValueError(f"unknown task {name!r}; choose one of {list(registered)}")
    return registered[name]


def markdown_table() -> str:
    """The task table of the README: task, input files and columns, metrics."""
    rows = ["| task | input files (columns) | metrics |", "|---|---|---|"]
    for protocol in protocols().values():
        files = "; ".join(
            f"`{i.flag}` {i.description}" + (f" ({', '.join(f'`{c}`' for c in i.columns)})" if i.columns else "")
            for i in protocol.inputs
        )
        rows.append(f"| `{protocol.name}` | {files} | {', '.join(protocol.metrics)} |")
    return "\n".join(rows)


__all__ = ["PROTOCOL_MODULES", "InputFile", "Protocol", "get_protocol", "markdown_table", "protocols"]
