"""Time of a zero-shot evaluation: 1,000 images against the full CheXpert 5x200 prompt grid (489 prompts).

The evaluation as `inference.zero_shot` runs it: tokenise the 489 prompts (`processing.prompts.chexpert_5x200_prompts`,
padded to 128 tokens as `AltaProcessor` does), embed them once and reduce them to five class embeddings, then embed
the images in batches and score them (`zero_shot_logits`, argmax). `AltaModel` at the `alta-base` size with random
weights; the images are random normalised tensors at 224 (decoding and resizing are measured by
`bench_preprocess.py`). The tokenizer is the vocabulary in the parity folder (`--tokenizer`); it splits words
differently from the full CXR-BERT vocabulary, which does not change the cost, since prompts are padded to 128.

    python benchmarks/bench_zeroshot.py                  # 1,000 images, fp32 and bf16 (several minutes on 2 cores)
    python benchmarks/bench_zeroshot.py --dtypes bf16    # one dtype
    python benchmarks/bench_zeroshot.py --quick          # tiny config, 16 images, 2 prompts per class (CI)
"""

from __future__ import annotations

import argparse

import torch

# `_common` puts the repository root on sys.path for the first-party imports that follow it.
from _common import REPO_ROOT, add_common_arguments, autocast, base_config, machine_lines, markdown_table, now, setup

from inference.zero_shot import encode_prompt_ensemble, zero_shot_logits
from modeling_alta.modeling_alta import AltaModel
from processing.prompts import chexpert_5x200_prompts


DEFAULT_TOKENIZER = REPO_ROOT.parent / "shared" / "parity" / "BiomedVLP-CXR-BERT-specialized"


def load_tokenizer(path):
    from transformers import BertTokenizer

    if not (path / "vocab.txt").is_file():
        raise FileNotFoundError(f"no vocab.txt in {path}; pass --tokenizer FOLDER_WITH_VOCAB_TXT")
    return BertTokenizer.from_pretrained(str(path))


def main(argv: list[str] | None = None) -> dict[str, float]:
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--images", type=int, default=1000, help="images to classify (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (default: %(default)s)")
    parser.add_argument("--text-batch-size", type=int, default=64, help="prompts per batch (default: %(default)s)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], help="fp32 and/or bf16 (autocast)")
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER, help="folder with vocab.txt")
    args = parser.parse_args(argv)
    device = setup(args)
    prompts_per_class = None
    if args.quick:
        args.images, args.batch_size, prompts_per_class = 16, 8, 2

    config = base_config(args.quick)
    model = AltaModel(config).to(device).eval()
    tokenizer = load_tokenizer(args.tokenizer)
    ensemble = chexpert_5x200_prompts(prompts_per_class)
    num_prompts = sum(len(v) for v in ensemble.values())
    size = config.vision_config.image_size
    # One batch of pixels, reused: the content does not change the cost.
    pixels = torch.randn(args.batch_size, 3, size, size, device=device)

    print("# bench_zeroshot " + ("(--quick, alta-tiny)" if args.quick else "(alta-base)"))
    print("\n".join(machine_lines(device)))
    print(
        f"- {args.images} images in batches of {args.batch_size}; {num_prompts} prompts ({len(ensemble)} classes) "
        f"in batches of {args.text_batch_size}, padded to 128 tokens; tokenizer {args.tokenizer.name}"
    )

    def encode_text(texts: list[str]) -> torch.Tensor:
        enc = tokenizer(texts, padding="max_length", max_length=128, truncation=True, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        features = model.get_text_features(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
        return features.pooler_output.float()

    results: dict[str, float] = {}
    rows = []
    for dtype in args.dtypes:
        # warm-up: one small text batch and one image batch
        with torch.inference_mode(), autocast(device, dtype):
            encode_text(ensemble[next(iter(ensemble))][:2])
            model.get_image_features(pixels)
        start = now()
        with torch.inference_mode(), autocast(device, dtype):
            names, class_embeds = encode_prompt_ensemble(ensemble, encode_text, batch_size=args.text_batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        text_seconds = now() - start
        start = now()
        predictions = []
        with torch.inference_mode(), autocast(device, dtype):
            for first in range(0, args.images, args.batch_size):
                n = min(args.batch_size, args.images - first)
                image_embeds = model.get_image_features(pixels[:n]).pooler_output.float()
                predictions.append(zero_shot_logits(image_embeds, class_embeds).argmax(dim=-1))
        predicted = torch.cat(predictions).cpu()
        image_seconds = now() - start
        if predicted.shape[0] != args.images or class_embeds.shape[0] != len(names):
            raise RuntimeError("zero-shot produced the wrong number of predictions")
        total = text_seconds + image_seconds
        results[f"{dtype}_total_s"] = total
        results[f"{dtype}_images_per_s"] = args.images / image_seconds
        rows.append([dtype, text_seconds, image_seconds, total, args.images / image_seconds])
    print(f"\n## Zero-shot CheXpert 5x200: {args.images} images, {num_prompts} prompts\n")
    print(
        markdown_table(
            ["dtype", "prompts s (once)", "images s", "total s", "images/s"],
            rows,
        )
    )
    return results


if __name__ == "__main__":
    main()
