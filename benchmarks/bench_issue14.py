"""The speed changes of issue 14, each paired against the behaviour it replaced, in alternating rounds.

`alta-base` sizes, random weights. Every case times the old and the new way of doing the same work in the same
process, one after the other, reversing the order every round, and reports the median over rounds of new/old.
The default timer is the process's CPU time with one torch thread (`--threads 1 --timer process`), which leaves out
the time spent waiting for a core, so ratios hold on a shared machine.

1. **Prompts**: the 489 CheXpert 5x200 prompts (`process_text` cleanup, at most 128 tokens) embedded once: padded to
   128 in input order (before) against `embed_texts` (sorted by length, each chunk padded to its longest).
2. **Training text padding**: the text tower with its MLM copy (forward + backward, training mode) on a batch padded
   to 128 against the same batch padded to its longest report, for length-grouped batches of a corpus whose report
   lengths are drawn from `--mean-length` +- `--std-length` tokens (clipped to 8..128); the padding of random and
   length-grouped batches is printed too.
3. **MLM head**: `mlm_head` + cross-entropy (forward + backward) on every position against the masked ones only.
4. **Dropout**: the text tower (forward + backward, training mode, dropout 0.25) with `F.dropout` masks and SDPA's
   own attention dropout (before) against `alta_dropout`'s byte draws and eager attention.
5. **bf16 inference**: image features (batch 16) and text features (batch 8 x 128), fp32 against bf16 autocast.
6. **torch.compile** of the image tower for inference (batch 8): compile time, steady time, largest difference.

    python benchmarks/bench_issue14.py --threads 1 --timer process --rounds 5
    python benchmarks/bench_issue14.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

# `_common` puts the repository root on sys.path for the first-party imports that follow it.
from _common import (
    REPO_ROOT,
    add_common_arguments,
    base_config,
    interleaved_times,
    machine_lines,
    markdown_table,
    setup,
)

import modeling_alta.modeling_alta as modeling
from inference.embedding import embed_texts
from modeling_alta.modeling_alta import AltaForPreTraining, alta_mlm_loss
from modeling_alta.processing_alta import encode_texts
from processing.prompts import chexpert_5x200_prompts
from training.data import GlobalBatchSampler


DEFAULT_TOKENIZER = REPO_ROOT.parent / "shared" / "parity" / "BiomedVLP-CXR-BERT-specialized"


def paired(fns: dict, device, rounds: int) -> tuple[dict[str, float], float]:
    """Median seconds of each of two functions and the median per-round ratio second/first."""
    times = interleaved_times(fns, device, rounds)
    (a, ta), (b, tb) = times.items()
    return {a: statistics.median(ta), b: statistics.median(tb)}, statistics.median(y / x for x, y in zip(ta, tb))


def text_batch(config, lengths: list[int], width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Reports of `lengths` tokens padded to `width`, with the MLM copy (half of the words masked)."""
    gen = torch.Generator().manual_seed(seed)
    count = len(lengths)
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(5, config.text_config.vocab_size, (count, width), generator=gen) * mask
    ids[:, 0] = 2
    picked = (torch.rand(count, width, generator=gen) < 0.5) & mask.bool()
    picked[:, 0] = False
    labels = torch.where(picked, ids, torch.full_like(ids, -100))
    return {"ids": ids, "mask": mask, "mlm_ids": torch.where(picked, torch.full_like(ids, 4), ids), "labels": labels}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4, help="studies per training batch (default: 4)")
    parser.add_argument("--mean-length", type=float, default=99.5, help="mean report length in tokens")
    parser.add_argument("--std-length", type=float, default=25.0)
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER), help="folder with vocab.txt")
    parser.add_argument(
        "--sections",
        nargs="+",
        default=None,
        help="prompts padding mlm dropout bf16 compile (default: all; --quick leaves out compile, minutes of work)",
    )
    args = parser.parse_args(argv)
    device = setup(args)
    if args.quick:
        args.rounds = 1
    if args.sections is None:
        args.sections = ["prompts", "padding", "mlm", "dropout", "bf16", *([] if args.quick else ["compile"])]
    from transformers import BertTokenizer

    config = base_config(args.quick)
    tokenizer = BertTokenizer.from_pretrained(args.tokenizer)
    torch.manual_seed(0)
    model = AltaForPreTraining(config).to(device)
    model.freeze_backbone()
    alta = model.alta
    text = alta.text_model
    results: dict[str, float] = {}
    rows = []

    print("# bench_issue14 " + ("(--quick, alta-tiny)" if args.quick else "(alta-base)"))
    print("\n".join(machine_lines(device)))
    print(f"- {args.rounds} rounds, medians; ratio = new / before, median over rounds\n")

    if "prompts" in args.sections:
        prompts = [p for ps in chexpert_5x200_prompts().values() for p in ps]
        if args.quick:
            prompts = prompts[:24]
        alta.eval()

        @torch.no_grad()
        def before():
            out = []
            for start in range(0, len(prompts), 256):
                enc = encode_texts(tokenizer, prompts[start : start + 256], 128, clean_text=True, allow_empty=True,
                                   return_tensors="pt")  # fmt: skip
                out.append(alta.get_text_features(**enc).pooler_output)
            return torch.cat(out)

        def after():
            return embed_texts(alta, tokenizer, prompts, 256, normalize=False, max_length=128, clean_text=True,
                               progress=False)  # fmt: skip

        diff = (before() - after()).abs().max().item()
        lengths = [len(x) for x in encode_texts(tokenizer, prompts, 128, padding=False, clean_text=True,
                                                allow_empty=True)["input_ids"]]  # fmt: skip
        seconds, ratio = paired({"before": before, "after": after}, device, args.rounds)
        rows.append([f"{len(prompts)} prompts embedded (mean {statistics.mean(lengths):.1f} tokens)",
                     seconds["before"], seconds["after"], ratio, f"max |diff| {diff:.1e}"])  # fmt: skip
        results["prompts_ratio"] = ratio

    if "padding" in args.sections or "mlm" in args.sections or "dropout" in args.sections:
        gen = torch.Generator().manual_seed(1)
        corpus = (torch.randn(4096, generator=gen) * args.std_length + args.mean_length).round().clamp(8, 128)
        corpus = [int(x) for x in corpus]
        b = args.batch_size
        grouped = GlobalBatchSampler(len(corpus), b, 1, 0, seed=0, lengths=corpus)
        plain = GlobalBatchSampler(len(corpus), b, 1, 0, seed=0)
        pad_grouped = statistics.mean(max(corpus[i] for i in batch) for batch in grouped)
        pad_plain = statistics.mean(max(corpus[i] for i in batch) for batch in plain)
        tokens = statistics.mean(corpus)
        print(
            f"- report lengths: mean {tokens:.1f} tokens; padded length per batch of {b}: 128 (before), "
            f"{pad_plain:.1f} (random batches padded to their longest), {pad_grouped:.1f} (--group_by_length)\n"
        )
        # a typical length-grouped batch: lengths around the mean, padded to their longest
        lengths = sorted(corpus[:b])
        batch_lengths = [min(128, int(round(pad_grouped))) - i for i in range(b)]
        full = text_batch(config, batch_lengths, 128)
        conditioning = torch.zeros(2 * b, config.text_config.hidden_size)

        def tower(batch, width):
            ids = torch.cat([batch["ids"], batch["mlm_ids"]])[:, :width]
            mask = torch.cat([batch["mask"], batch["mask"]])[:, :width]
            return text(ids, mask, conditioning=conditioning).last_hidden_state

        if "padding" in args.sections:
            text.train()
            width = max(batch_lengths)
            seconds, ratio = paired(
                {
                    "before": lambda: tower(full, 128).sum().backward(),
                    "after": lambda: tower(full, width).sum().backward(),
                },
                device,
                args.rounds,
            )
            rows.append([f"text tower + MLM copy fwd+bwd, batch {b}: 128 -> {width} tokens", seconds["before"],
                         seconds["after"], ratio, ""])  # fmt: skip
            results["padding_ratio"] = ratio
            del lengths

        if "mlm" in args.sections:
            text.eval()
            with torch.no_grad():
                hidden = tower(full, 128)[b:]
            hidden.requires_grad_(True)
            labels = full["labels"]
            masked = labels != -100

            def head_full():
                alta_mlm_loss(model.mlm_head(hidden), labels).backward()

            def head_masked():
                alta_mlm_loss(model.mlm_head(hidden[masked]), labels[masked]).backward()

            seconds, ratio = paired({"full": head_full, "masked": head_masked}, device, args.rounds)
            rows.append([f"MLM head + loss fwd+bwd, {int(masked.sum())} of {masked.numel()} positions masked",
                         seconds["full"], seconds["masked"], ratio, ""])  # fmt: skip
            results["mlm_ratio"] = ratio

        if "dropout" in args.sections:
            text.train()
            new_threshold = modeling._byte_threshold

            def old_dropout():
                modeling._byte_threshold = lambda p: None  # F.dropout everywhere, SDPA's own attention dropout
                try:
                    tower(full, 128).sum().backward()
                finally:
                    modeling._byte_threshold = new_threshold

            def new_dropout():
                tower(full, 128).sum().backward()

            seconds, ratio = paired({"before": old_dropout, "after": new_dropout}, device, args.rounds)
            rows.append([f"text tower + MLM copy fwd+bwd, dropout {config.text_config.hidden_dropout_prob}",
                         seconds["before"], seconds["after"], ratio, ""])  # fmt: skip
            results["dropout_ratio"] = ratio

    if "bf16" in args.sections:
        alta.eval()
        images = torch.randn(16 if not args.quick else 2, 3, config.vision_config.image_size,
                             config.vision_config.image_size)  # fmt: skip
        texts = text_batch(config, [100, 128, 90, 60, 128, 110, 70, 128], 128)

        def run(fn, bf16):
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                return fn()

        image_fn = lambda: alta.get_image_features(images).pooler_output  # noqa: E731
        text_fn = lambda: alta.get_text_features(texts["ids"], texts["mask"]).pooler_output  # noqa: E731
        for name, fn in (("image features, batch 16", image_fn), ("text features, batch 8 x 128", text_fn)):
            seconds, ratio = paired(
                {"fp32": lambda fn=fn: run(fn, False), "bf16": lambda fn=fn: run(fn, True)}, device, args.rounds
            )
            cos = F.cosine_similarity(run(fn, False).float(), run(fn, True).float(), dim=-1).min().item()
            rows.append([f"{name}: fp32 -> bf16 autocast", seconds["fp32"], seconds["bf16"], ratio,
                         f"speed-up {1 / ratio:.2f}x; min cosine {cos:.4f}"])  # fmt: skip
            results[f"bf16_{name.split()[0]}_speedup"] = 1 / ratio

    if "compile" in args.sections:
        alta.eval()
        vision = alta.vision_model
        images = torch.randn(8 if not args.quick else 2, 3, config.vision_config.image_size,
                             config.vision_config.image_size)  # fmt: skip
        try:
            compiled = torch.compile(vision)
            start = time.perf_counter()
            with torch.inference_mode():
                out_c = compiled(images).pooler_output
            compile_s = time.perf_counter() - start
            with torch.inference_mode():
                out_e = vision(images).pooler_output
            diff = (out_c - out_e).abs().max().item()

            def eager():
                with torch.inference_mode():
                    vision(images)

            def comp():
                with torch.inference_mode():
                    compiled(images)

            seconds, ratio = paired({"eager": eager, "compiled": comp}, device, args.rounds)
            rows.append([f"image tower inference batch {images.shape[0]}: eager -> torch.compile", seconds["eager"],
                         seconds["compiled"], ratio, f"compile {compile_s:.0f} s wall; max |diff| {diff:.1e}"])  # fmt: skip
            results["compile_ratio"] = ratio
        except Exception as err:  # the inductor needs a C++ compiler; report, do not fail the other sections
            rows.append(["image tower: torch.compile", float("nan"), float("nan"), float("nan"), f"failed: {err}"])

    print(markdown_table(["case", "before s", "after s", "after / before", "note"], rows))
    return results


if __name__ == "__main__":
    main()
