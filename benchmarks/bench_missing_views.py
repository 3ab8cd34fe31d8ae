"""Study embedding with missing views: each missing frame encoded once per slot against every frame encoded.

A study holds up to four frames (frontal, lateral, prior frontal, prior lateral). In inference without patch masking
a missing view's frame depends on its slot alone, so the vision tower encodes it once per slot and copies the result
(`AltaVisionTransformer.share_missing_frames`, on by default); the peer is the same model with the shortcut off,
which encodes every frame as training does. Random weights at the `alta-base` size (`--quick`: `alta-tiny`), studies
whose views are missing at the rates given (the demo data's by default: a lateral missing in 25 % of studies, the
priors in 50 %), `get_image_features` on `[B, 4, 3, H, W]`, alternating rounds in one process, the paired median
ratio reported. Both paths give the same embeddings (checked here, and by the test suite).

    python benchmarks/bench_missing_views.py                          # alta-base, batch 8, 2 threads
    python benchmarks/bench_missing_views.py --prior-rate 1.0 --lateral-missing-rate 0   # nothing missing: the cost
    python benchmarks/bench_missing_views.py --quick                  # tiny config, one round (CI)
"""

from __future__ import annotations

import argparse

import torch

# `_common` puts the repository root on sys.path for the first-party imports that follow it.
from _common import (
    add_common_arguments,
    base_config,
    interleaved_times,
    machine_lines,
    markdown_table,
    paired_median,
    setup,
)

from modeling_alta.modeling_alta import AltaModel


def studies(batch: int, size: int, prior_rate: float, lateral_missing_rate: float, seed: int):
    """`(pixel_values [B, 4, 3, size, size], view_mask [B, 4])` with views missing at the given rates."""
    generator = torch.Generator().manual_seed(seed)
    draw = torch.rand(batch, 3, generator=generator)
    lateral = draw[:, 0] >= lateral_missing_rate
    prior = draw[:, 1] < prior_rate
    prior_lateral = prior & lateral & (draw[:, 2] >= lateral_missing_rate)
    view_mask = torch.stack([torch.ones(batch, dtype=torch.bool), lateral, prior, prior_lateral], dim=1)
    pixels = torch.randn(batch, 4, 3, size, size, generator=generator) * view_mask[..., None, None, None]
    return pixels, view_mask


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--prior-rate", type=float, default=0.5)
    parser.add_argument("--lateral-missing-rate", type=float, default=0.25)
    args = parser.parse_args(argv)
    device = setup(args)
    rounds = 1 if args.quick else args.rounds
    config = base_config(args.quick)
    model = AltaModel(config).eval().to(device)
    encoder = model.vision_model
    pixels, view_mask = studies(
        args.batch_size, config.vision_config.image_size, args.prior_rate, args.lateral_missing_rate, args.seed
    )
    pixels, view_mask = pixels.to(device), view_mask.to(device)

    def embed(share: bool):
        def call():
            encoder.share_missing_frames = share
            with torch.no_grad():
                return model.get_image_features(pixels, view_mask=view_mask).pooler_output

        return call

    shared, full = embed(True)(), embed(False)()
    difference = float((shared - full).abs().max())
    times = interleaved_times({"shared": embed(True), "full": embed(False)}, device, rounds)
    encoder.share_missing_frames = True
    present = int(view_mask.sum())
    missing_slots = int((~view_mask).any(dim=0).sum())
    speedup = paired_median(times["full"], times["shared"])
    print(
        f"## Study embedding with missing views ({'alta-tiny' if args.quick else 'alta-base'}, batch {args.batch_size})"
    )
    print()
    print("\n".join(machine_lines(device)))
    print()
    print(
        markdown_table(
            [
                "frames in the batch",
                "encoded (shared)",
                "studies/s, every frame",
                "studies/s, shared",
                "speed-up",
                "max abs difference",
            ],  # fmt: skip
            [
                [
                    pixels.shape[0] * pixels.shape[1],
                    present + missing_slots,
                    args.batch_size / min(times["full"]),
                    args.batch_size / min(times["shared"]),
                    speedup,
                    f"{difference:.1e}",
                ]
            ],  # fmt: skip
        )
    )
    print(f"\n(best of {rounds} alternating rounds; speed-up: paired median of the per-round time ratios)")


if __name__ == "__main__":
    main()
