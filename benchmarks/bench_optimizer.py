"""`align.py`'s optimizer step: torch's AdamW as its for-loop (`--optim adamw_torch`), with `foreach`, and fused
(`--optim adamw_torch_fused`, the default), on the trainable parameters of `AltaForPreTraining` at a preset.

The three optimizers hold copies of the same parameters with the same gradients, built by `training.build`'s
`build_optimizer` (its groups: no decay on biases and 1-d tensors), and step in alternating rounds. The table gives
the median milliseconds per step, the ratio to the for-loop per round, and how far each one's parameters are from
the for-loop's after the timed steps (float rounding: the kernels order the same arithmetic differently).

    python benchmarks/bench_optimizer.py --preset alta-base --threads 2 --rounds 20
    python benchmarks/bench_optimizer.py --quick
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

# `_common` puts the repository root on sys.path for the first-party imports that follow it.
from _common import add_common_arguments, interleaved_times, machine_lines, markdown_table, paired_median, setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--preset", default="alta-base")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    if args.quick:
        args.preset, args.rounds = "alta-tiny", 2
    device = setup(args)

    from configuration import load_preset
    from modeling_alta import AltaForPreTraining
    from training.arguments import AlignArguments
    from training.build import build_optimizer

    model = AltaForPreTraining(load_preset(args.preset))
    model.freeze_backbone()
    trainable = [p for p in model.parameters() if p.requires_grad]
    gradients = [torch.randn_like(p) * 1e-3 for p in trainable]
    kinds = {"for-loop (adamw_torch)": ("adamw_torch", False), "foreach": ("adamw_torch", True),
             "fused (adamw_torch_fused)": ("adamw_torch_fused", None)}  # fmt: skip
    copies, steps = {}, {}
    for name, (optim, foreach) in kinds.items():
        twin = copy.deepcopy(model).to(device)
        optimizer, _ = build_optimizer(twin, AlignArguments(output_dir="unused", learning_rate=1e-4, optim=optim), 1)
        if foreach:
            for group in optimizer.param_groups:
                group["foreach"] = True
        for param, grad in zip((p for p in twin.parameters() if p.requires_grad), gradients):
            param.grad = grad.to(device)
        copies[name], steps[name] = twin, optimizer.step
    times = interleaved_times(steps, device, args.rounds)

    reference = [p.detach() for p in copies["for-loop (adamw_torch)"].parameters() if p.requires_grad]
    rows = []
    for name in kinds:
        params = [p.detach() for p in copies[name].parameters() if p.requires_grad]
        worst = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(params, reference))
        rows.append([name, statistics.median(times[name]) * 1e3,
                     paired_median(times[name], times["for-loop (adamw_torch)"]), worst])  # fmt: skip
    print(f"# bench_optimizer: AdamW step on the trainable parameters of AltaForPreTraining ({args.preset})")
    print("\n".join(machine_lines(device)))
    print(f"- {len(trainable)} trainable tensors, {sum(p.numel() for p in trainable):,} parameters; "
          f"{args.rounds} alternating rounds after 1 warm-up round, {args.rounds + 1} steps each")  # fmt: skip
    print("\n## AdamW step\n")
    headers = ["implementation", "ms per step (median)", "time / for-loop (paired)", "max rel. difference to for-loop"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
