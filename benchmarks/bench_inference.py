"""Inference speed and memory of ALTA's towers against transformers' ViTModel and BertModel of the same sizes.

Random weights at the `alta-base` size (ViT-B/16 at 224 with adapters; BERT-base with adapters). For each dtype
(fp32, and bf16 through `torch.autocast`) it measures:

- image embedding throughput (`AltaModel.get_image_features` on `[B, 3, 224, 224]`, one frontal per image) for
  batch 1, 8 and 32, against `ViTModel(add_pooling_layer=False)` with the same sizes;
- text embedding throughput (`get_text_features` on `[B, 128]` tokens, padded reports) against `BertModel`;
- the memory each call adds at its peak;
- FLOPs per image of the vision tower (`torch.utils.flop_counter`), the machine's measured dense GEMM rate, the
  arithmetic limit (GEMM rate / FLOPs per image) and the fraction of it that the tower achieves.

Peers run in alternating rounds of the same process, best round reported (see `_common.py`). Plain Python:

    python benchmarks/bench_inference.py                 # full size (several minutes on a 2-core CPU)
    python benchmarks/bench_inference.py --quick         # tiny config, one round, seconds (CI)
    python benchmarks/bench_inference.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse

import torch

# `_common` puts the repository root on sys.path for the first-party imports that follow it.
from _common import (
    add_common_arguments,
    autocast,
    base_config,
    count_flops,
    interleaved_times,
    machine_lines,
    markdown_table,
    measure_peak,
    paired_median,
    setup,
)

from modeling_alta.modeling_alta import AltaModel


def build_models(config, device: torch.device) -> dict[str, torch.nn.Module]:
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel

    vision, text = config.vision_config, config.text_config
    vit_config = ViTConfig(
        hidden_size=vision.hidden_size,
        num_hidden_layers=vision.num_hidden_layers,
        num_attention_heads=vision.num_attention_heads,
        intermediate_size=vision.intermediate_size,
        hidden_act=vision.hidden_act,
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        num_channels=vision.num_channels,
        layer_norm_eps=vision.layer_norm_eps,
        qkv_bias=vision.qkv_bias,
    )
    bert_config = BertConfig(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        intermediate_size=text.intermediate_size,
        hidden_act=text.hidden_act,
        max_position_embeddings=text.max_position_embeddings,
        type_vocab_size=text.type_vocab_size,
        layer_norm_eps=text.layer_norm_eps,
    )
    models = {
        "alta": AltaModel(config),
        "vit": ViTModel(vit_config, add_pooling_layer=False),
        "bert": BertModel(bert_config, add_pooling_layer=False),
    }
    return {name: model.to(device).eval() for name, model in models.items()}


def text_inputs(batch: int, length: int, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Reports padded to `length` (as `AltaProcessor` does), real lengths spread over [length/4, length]."""
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(5, vocab, (batch, length), generator=gen)
    lengths = torch.linspace(length // 4, length, batch).round().long()
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = ids * mask
    return ids.to(device), mask.to(device)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32], help="image batches (1 8 32)")
    parser.add_argument("--text-batch-sizes", type=int, nargs="+", default=[8, 32], help="text batches (8 32)")
    parser.add_argument("--text-length", type=int, default=128, help="tokens per report (default: %(default)s)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], help="fp32 and/or bf16 (autocast)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per case (default: %(default)s)")
    parser.add_argument("--gemm-size", type=int, default=None, help="square GEMM for the rate (default: by device)")
    args = parser.parse_args(argv)
    device = setup(args)
    if args.quick:
        args.batch_sizes, args.text_batch_sizes, args.rounds = [1, 2], [2], 1
    gemm_size = args.gemm_size or (256 if args.quick else 8192 if device.type == "cuda" else 2048)

    config = base_config(args.quick)
    models = build_models(config, device)
    alta, vit, bert = models["alta"], models["vit"], models["bert"]
    vision = config.vision_config
    image_size = vision.image_size
    results: dict[str, float] = {}

    print("# bench_inference " + ("(--quick, alta-tiny)" if args.quick else "(alta-base)"))
    print("\n".join(machine_lines(device)))
    params = {name: sum(p.numel() for p in m.parameters()) / 1e6 for name, m in models.items()}
    print(
        f"- parameters (M): ALTA {params['alta']:.1f} (both towers and heads), ViTModel {params['vit']:.1f}, "
        f"BertModel {params['bert']:.1f}; {args.rounds} alternating rounds per case: throughput from the best round, "
        f"ratios as the median of the per-round ratios; GEMM {gemm_size}^3 timed in the same rounds"
    )

    # 1. FLOPs per image and the machine's GEMM rate.
    one = torch.randn(1, 3, image_size, image_size, device=device)
    with torch.inference_mode():
        flops = {
            "alta": count_flops(lambda: alta.get_image_features(one).pooler_output),
            "vit": count_flops(lambda: vit(one)),
        }
    torch_dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    gen = torch.Generator().manual_seed(0)
    gemm_inputs = {
        dt: [torch.randn(gemm_size, gemm_size, generator=gen).to(device, torch_dtypes[dt]) for _ in range(2)]
        for dt in args.dtypes
    }
    gemm_flops = 2 * gemm_size**3
    rates = {dt: 0.0 for dt in args.dtypes}  # best GEMM FLOP/s seen, over every round
    fractions: dict[str, list[float]] = {dt: [] for dt in args.dtypes}

    # 2. Image embedding throughput.
    image_rows = []
    for dtype in args.dtypes:
        for batch in args.batch_sizes:
            x = torch.randn(batch, 3, image_size, image_size, device=device)

            def run_alta(x=x, dtype=dtype):
                with torch.inference_mode(), autocast(device, dtype):
                    return alta.get_image_features(x).pooler_output

            def run_vit(x=x, dtype=dtype):
                with torch.inference_mode(), autocast(device, dtype):
                    return vit(pixel_values=x).last_hidden_state

            a, b = gemm_inputs[dtype]
            times = interleaved_times(
                {"alta": run_alta, "vit": run_vit, "gemm": lambda a=a, b=b: a @ b}, device, args.rounds
            )
            mem = {"alta": measure_peak(run_alta, device), "vit": measure_peak(run_vit, device)}
            speed = {k: batch / min(v) for k, v in times.items() if k != "gemm"}
            rates[dtype] = max(rates[dtype], gemm_flops / min(times["gemm"]))
            ratio = paired_median(times["vit"], times["alta"])
            # the fraction of the GEMM rate measured in the same round
            achieved = paired_median(
                [batch * flops["alta"] * g for g in times["gemm"]], [gemm_flops * t for t in times["alta"]]
            )
            fractions[dtype].append(achieved)
            results[f"image_{dtype}_b{batch}_alta"] = speed["alta"]
            results[f"image_{dtype}_b{batch}_ratio"] = ratio
            image_rows.append(
                [
                    dtype,
                    batch,
                    speed["alta"],
                    speed["vit"],
                    f"{ratio:.3f}",
                    f"{100 * achieved:.0f}%",
                    mem["alta"],
                    mem["vit"],
                ]
            )
    print("\n## Image embedding (one frontal per image)\n")
    print(
        markdown_table(
            [
                "dtype",
                "batch",
                "ALTA images/s",
                "ViTModel images/s",
                "ALTA / ViT",
                "ALTA % of GEMM rate",
                "ALTA peak MiB",
                "ViT peak MiB",
            ],
            image_rows,
        )
    )

    # 3. Text embedding throughput.
    text_rows = []
    vocab = config.text_config.vocab_size
    for dtype in args.dtypes:
        for batch in args.text_batch_sizes:
            ids, mask = text_inputs(batch, args.text_length, vocab, device)

            def run_alta_text(ids=ids, mask=mask, dtype=dtype):
                with torch.inference_mode(), autocast(device, dtype):
                    return alta.get_text_features(ids, mask).pooler_output

            def run_bert(ids=ids, mask=mask, dtype=dtype):
                with torch.inference_mode(), autocast(device, dtype):
                    return bert(input_ids=ids, attention_mask=mask).last_hidden_state

            times = interleaved_times({"alta": run_alta_text, "bert": run_bert}, device, args.rounds)
            mem = {"alta": measure_peak(run_alta_text, device), "bert": measure_peak(run_bert, device)}
            speed = {k: batch / min(v) for k, v in times.items()}
            ratio = paired_median(times["bert"], times["alta"])
            results[f"text_{dtype}_b{batch}_alta"] = speed["alta"]
            results[f"text_{dtype}_b{batch}_ratio"] = ratio
            text_rows.append(
                [
                    dtype,
                    batch,
                    speed["alta"],
                    speed["bert"],
                    f"{ratio:.3f}",
                    mem["alta"],
                    mem["bert"],
                ]
            )
    print(f"\n## Text embedding ({args.text_length} tokens per report, padded)\n")
    print(
        markdown_table(
            [
                "dtype",
                "batch",
                "ALTA reports/s",
                "BertModel reports/s",
                "ALTA / BERT",
                "ALTA peak MiB",
                "BERT peak MiB",
            ],
            text_rows,
        )
    )

    # 4. The arithmetic limit.
    limit_rows = []
    for dtype in args.dtypes:
        best_alta = max(results[f"image_{dtype}_b{b}_alta"] for b in args.batch_sizes)
        limit = rates[dtype] / flops["alta"]
        fraction = max(fractions[dtype])
        results[f"gemm_{dtype}_gflops"] = rates[dtype] / 1e9
        results[f"image_{dtype}_fraction_of_limit"] = fraction
        limit_rows.append([dtype, rates[dtype] / 1e9, limit, best_alta, f"{100 * fraction:.0f}%"])
    results["alta_gflops_per_image"] = flops["alta"] / 1e9
    results["vit_gflops_per_image"] = flops["vit"] / 1e9
    print("\n## Arithmetic limit of the vision tower\n")
    print(
        f"FLOPs per image (flop_counter, 2 per multiply-add): ALTA {flops['alta'] / 1e9:.2f} G, "
        f"ViTModel {flops['vit'] / 1e9:.2f} G (adapters and heads add {100 * (flops['alta'] / flops['vit'] - 1):.1f}%)."
    )
    print()
    print(
        markdown_table(
            [
                "dtype",
                "best GEMM GFLOP/s",
                "limit images/s",
                "ALTA best images/s",
                "achieved fraction (best batch, same-round GEMM)",
            ],
            limit_rows,
        )
    )
    return results


if __name__ == "__main__":
    main()
