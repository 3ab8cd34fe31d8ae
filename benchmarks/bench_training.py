"""Speed and memory of an ALTA pre-training step, where its time goes, and how the local loss scales with batch.

A step is `AltaForPreTraining` at the `alta-base` size with random weights and the ALTA trainable set
(`freeze_backbone()`): four views per study (the last slot missing in half of the studies), mask ratio 0.75,
128-token reports with a 15% MLM copy, all four losses, backward, AdamW step, logit-scale clamp.

1. **Step**: the model's own `forward(..., return_loss=True)` + backward + optimizer: studies/s and peak memory.
2. **Breakdown**: the same computation with the autograd graph cut at the component boundaries (each component's
   inputs are detached leaves; backward runs component by component in reverse, passing the gradients on), so every
   row is that component's forward *and* backward time. The cut path reproduces the model's four losses (checked in
   eval mode, same mask noise, before timing) and its total is printed next to the uncut step.
3. **Local loss scaling**: `alta_local_loss` forward + backward at the pre-training shapes (196 image tokens = 4 views
   x 49 kept patches, 127 words, 128-d) for growing batch, against a reference-style loop over texts.

    python benchmarks/bench_training.py                    # base size, batch 8 (a few minutes on a 2-core CPU)
    python benchmarks/bench_training.py --batch-size 4     # lighter
    python benchmarks/bench_training.py --quick            # tiny config, seconds (CI)
    python benchmarks/bench_training.py --preset alta-demo --batch-size 24 --text-length 80   # the demo's step
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
import torch.nn.functional as F

# `_common` puts the repository root on sys.path for the first-party imports that follow it.
from _common import (
    add_common_arguments,
    base_config,
    interleaved_best,
    machine_lines,
    markdown_table,
    measure_peak,
    now,
    setup,
    synchronize,
)

from modeling_alta.modeling_alta import (
    AltaForPreTraining,
    alta_contrastive_loss,
    alta_local_loss,
    alta_mlm_loss,
    alta_reconstruction_loss,
    text_cap_lens,
)


def make_batch(config, batch: int, length: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A synthetic pre-training batch with the collator's keys and shapes."""
    gen = torch.Generator().manual_seed(seed)
    vision = config.vision_config
    size, big = vision.image_size, vision.reconstruction_image_size
    pixel_values = torch.randn(batch, 4, 3, size, size, generator=gen)
    view_mask = torch.ones(batch, 4, dtype=torch.bool)
    view_mask[::2, 3] = False  # half the studies lack a prior lateral
    pixel_values[~view_mask] = 0
    vocab = config.text_config.vocab_size
    lengths = torch.randint(length // 3, length + 1, (batch,), generator=gen)
    attention_mask = (torch.arange(length)[None] < lengths[:, None]).long()
    input_ids = torch.randint(5, vocab, (batch, length), generator=gen) * attention_mask
    input_ids[:, 0] = 2
    chosen = (torch.rand(batch, length, generator=gen) < 0.15) & attention_mask.bool()
    chosen[:, 0] = False
    mlm_input_ids = torch.where(chosen, torch.full_like(input_ids, 4), input_ids)
    mlm_labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    data = {
        "pixel_values": pixel_values,
        "reconstruction_pixel_values": torch.randn(batch, 3, big, big, generator=gen),
        "view_mask": view_mask,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mlm_input_ids": mlm_input_ids,
        "mlm_labels": mlm_labels,
    }
    return {k: v.to(device) for k, v in data.items()}


class Stopwatch:
    """Accumulates synchronised wall time per named component."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    def run(self, name: str, fn, *args, **kwargs):
        synchronize(self.device)
        start = now()
        out = fn(*args, **kwargs)
        synchronize(self.device)
        self.seconds[name] += now() - start
        return out


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().requires_grad_(True)


def _backward(watch: Stopwatch, name: str, outputs: list[torch.Tensor], leaves: list[torch.Tensor]) -> None:
    """Back-propagate `outputs` with the gradients accumulated on their downstream `leaves`."""
    pairs = [(o, leaf.grad) for o, leaf in zip(outputs, leaves) if leaf.grad is not None and o.requires_grad]
    if pairs:
        watch.run(name, torch.autograd.backward, [o for o, _ in pairs], [g for _, g in pairs])


def component_step(model: AltaForPreTraining, batch: dict, watch: Stopwatch, mask_noise=None) -> dict:
    """One training forward + backward with the graph cut at component boundaries; returns the four losses.

    Mirrors `AltaForPreTraining.forward` by calling its submodules directly.
    """
    config, alta = model.config, model.alta
    vision = config.vision_config
    b = batch["input_ids"].shape[0]

    # forward, component by component
    pixel_values, view_mask = watch.run(
        "study prep (448->224 resize)",
        model._prepare_study,
        batch["pixel_values"],
        batch["reconstruction_pixel_values"],
        batch["view_mask"],
    )

    def vision_tower():
        out = alta.vision_model(
            pixel_values, view_mask=view_mask, mask_ratio=vision.mask_ratio, mask_noise=mask_noise, study_pooling="all"
        )
        latent = torch.cat([out.slot_embeds[:, :1], out.last_hidden_state[:, 0, 1:]], dim=1)
        return out, latent

    vision_out, latent = watch.run("vision tower (4 views, masked)", vision_tower)
    pooled, patches, latent_in = _leaf(vision_out.pooler_output), _leaf(vision_out.patch_embeds), _leaf(latent)

    def image_heads():
        return (
            F.normalize(alta.vision_projection(pooled), dim=-1),
            model.bert_embed(pooled),
            alta.vision_local_projection(patches),
        )

    image_embeds, conditioning, image_local = watch.run("heads, projections, bert_embed", image_heads)
    cond_in = _leaf(conditioning)

    def text_tower():
        ids = torch.cat([batch["input_ids"], batch["mlm_input_ids"]])
        mask = torch.cat([batch["attention_mask"], batch["attention_mask"]])
        cond = torch.cat([torch.zeros_like(cond_in), cond_in])
        return alta.text_model(ids, mask, None, conditioning=cond).last_hidden_state

    hidden = watch.run("text tower (report + MLM copy)", text_tower)
    hidden_in = _leaf(hidden)

    def text_heads():
        report = hidden_in[:b]
        return F.normalize(alta.text_projection(report[:, 0]), dim=-1), alta.text_local_projection(report[:, 1:])

    text_embeds, text_local = watch.run("heads, projections, bert_embed", text_heads)
    leaves = {n: _leaf(t) for n, t in (("img", image_embeds), ("txt", text_embeds))}
    img_local_in, txt_local_in = _leaf(image_local), _leaf(text_local)

    def decoder_loss():
        pred = model.decoder(latent_in, vision_out.ids_restore)
        return alta_reconstruction_loss(
            pred.float(),
            batch["reconstruction_pixel_values"].float(),
            vision_out.mask.float(),
            vision.reconstruction_patch_size,
            vision.norm_pix_loss,
        )

    def mlm_loss():
        return alta_mlm_loss(model.mlm_head(hidden_in[b:]), batch["mlm_labels"])

    def contrastive_loss():
        return alta_contrastive_loss(leaves["img"].float(), leaves["txt"].float(), alta.logit_scale.exp())

    def local_loss():
        cap_lens = text_cap_lens(batch["attention_mask"])
        scales = torch.stack(alta.local_scales())
        return alta_local_loss(
            img_local_in.float(), txt_local_in.float(), cap_lens, *scales, chunk_size=config.local_loss_chunk_size
        )

    losses = {
        "reconstruction": ("MAE decoder + reconstruction loss", decoder_loss),
        "mlm": ("MLM head + loss", mlm_loss),
        "contrastive": ("contrastive loss", contrastive_loss),
        "local": ("local loss", local_loss),
    }
    values = {key: watch.run(name, fn) for key, (name, fn) in losses.items()}

    # backward, in reverse order, each part with the gradients its consumers left on its outputs
    for key, (name, _) in losses.items():
        watch.run(name, values[key].backward)
    _backward(watch, "heads, projections, bert_embed", [text_embeds, text_local], [leaves["txt"], txt_local_in])
    _backward(watch, "text tower (report + MLM copy)", [hidden], [hidden_in])
    _backward(
        watch,
        "heads, projections, bert_embed",
        [image_embeds, conditioning, image_local],
        [leaves["img"], cond_in, img_local_in],
    )
    _backward(
        watch,
        "vision tower (4 views, masked)",
        [vision_out.pooler_output, vision_out.patch_embeds, latent],
        [pooled, patches, latent_in],
    )
    return {k: float(v.detach()) for k, v in values.items()}


def local_loss_loop(image_local, text_local, cap_lens, s1, s2, s3) -> torch.Tensor:
    """The reference's formulation, one text at a time (a Python loop over the batch), for comparison only."""
    columns = []
    for i in range(text_local.shape[0]):
        words = text_local[i, : int(cap_lens[i])]  # [n, P]
        attn = (image_local @ words.t()).softmax(dim=-1)  # [B, N, n]
        beta = (s1 * attn.transpose(1, 2)).softmax(dim=-1)  # [B, n, N]
        context = beta @ image_local  # [B, n, P]
        cosine = F.cosine_similarity(context, words[None].expand_as(context), dim=-1, eps=1e-8)
        columns.append(s3 * torch.logsumexp(s2 * cosine, dim=-1))
    sim = torch.stack(columns, dim=1)
    labels = torch.arange(sim.shape[0], device=sim.device)
    return (F.cross_entropy(sim, labels) + F.cross_entropy(sim.t(), labels)) / 2


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument(
        "--preset",
        default=None,
        help="a configuration/presets name instead of alta-base (e.g. alta-demo, the demo's size)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="studies per step (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up (default: 2, best)")
    parser.add_argument("--text-length", type=int, default=128)
    parser.add_argument(
        "--local-batch-sizes", type=int, nargs="+", default=[4, 8, 16, 32, 64], help="local-loss batches"
    )
    args = parser.parse_args(argv)
    device = setup(args)
    if args.quick:
        args.batch_size, args.steps, args.local_batch_sizes, args.text_length = 2, 1, [2, 4], 32

    if args.preset and not args.quick:
        from configuration import load_preset

        config = load_preset(args.preset)
    else:
        config = base_config(args.quick)
    model = AltaForPreTraining(config).to(device)
    counts = model.freeze_backbone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05)
    batch = make_batch(config, args.batch_size, args.text_length, device, args.seed)
    results: dict[str, float] = {}

    print("# bench_training " + ("(--quick, alta-tiny)" if args.quick else f"({args.preset or 'alta-base'})"))
    print("\n".join(machine_lines(device)))
    print(
        f"- batch {args.batch_size} studies x 4 views, reports of {args.text_length} tokens, mask ratio "
        f"{config.vision_config.mask_ratio}; trainable {counts['trainable']:,} / {counts['total']:,} parameters; "
        f"{args.steps} timed step(s) after 1 warm-up, best reported"
    )

    # 0. The cut graph computes the model's losses (eval mode: no dropout; the same mask noise).
    noise = torch.rand(args.batch_size * 4, config.vision_config.num_patches, device=device)
    model.eval()
    with torch.no_grad():
        reference = model(**batch, mask_noise=noise)
    cut = component_step(model, batch, Stopwatch(device), mask_noise=noise)
    model.zero_grad(set_to_none=True)
    for key in cut:
        expected = float(getattr(reference, f"{key}_loss"))
        if abs(cut[key] - expected) > 1e-4 * max(1.0, abs(expected)):
            raise RuntimeError(f"the cut graph's {key} loss {cut[key]} differs from the model's {expected}")
    model.train()

    # 1. The model's own training step.
    def optimizer_step():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.clamp_logit_scales()

    def full_step():
        model(**batch).loss.backward()
        optimizer_step()

    step_seconds = interleaved_best({"step": full_step}, device, args.steps)["step"]
    peak = measure_peak(full_step, device)
    results["studies_per_s"] = args.batch_size / step_seconds
    results["step_s"] = step_seconds
    results["step_peak_mib"] = peak
    print("\n## Training step\n")
    print(
        markdown_table(
            ["batch", "step s", "studies/s", "peak MiB (step)"],
            [[args.batch_size, step_seconds, args.batch_size / step_seconds, peak]],
        )
    )

    # 2. Per component (forward + backward), best of the timed steps.
    best: dict[str, float] = {}
    embed_seconds = []
    embeddings = model.alta.vision_model.embeddings
    starts: list[float] = []

    def embed_start(*_) -> None:
        synchronize(device)
        starts.append(now())

    def embed_end(*_) -> None:
        synchronize(device)
        embed_seconds.append(now() - starts[-1])

    pre = embeddings.register_forward_pre_hook(embed_start)
    post = embeddings.register_forward_hook(embed_end)
    for step in range(args.steps + 1):
        watch = Stopwatch(device)
        component_step(model, batch, watch)
        watch.run("optimizer (AdamW) + clamp", optimizer_step)
        if step == 0:
            continue  # warm-up
        total = sum(watch.seconds.values())
        if not best or total < sum(best.values()):
            best = dict(watch.seconds)
    pre.remove()
    post.remove()
    total = sum(best.values())
    towers = best["vision tower (4 views, masked)"] + best["text tower (report + MLM copy)"]
    optimizer_s = best["optimizer (AdamW) + clamp"]
    overhead = total - towers - optimizer_s
    rows = []
    for name, seconds in sorted(best.items(), key=lambda kv: -kv[1]):
        rows.append([name, 1000 * seconds, f"{100 * seconds / total:.1f}%"])
        results[f"component_ms:{name}"] = 1000 * seconds
    rows.append(["(of the vision tower: patch embedding + masking, forward)", 1000 * min(embed_seconds), ""])
    rows.append(["**sum of components**", 1000 * total, "100%"])
    rows.append(["(the uncut step above)", 1000 * step_seconds, ""])
    results["non_tower_share"] = overhead / total
    results["non_tower_share_with_optimizer"] = (overhead + optimizer_s) / total
    print("\n## Where the step goes (forward + backward per component)\n")
    print(markdown_table(["component", "ms", "share"], rows))
    print(
        f"\nNon-tower overhead (prep, heads, decoder, the four losses): {100 * overhead / total:.1f}% of the step; "
        f"{100 * (overhead + optimizer_s) / total:.1f}% counting the optimizer."
    )

    # 3. Local loss: forward + backward against batch size.
    proj = config.projection_dim
    n_img = 4 * int(config.vision_config.num_patches * (1 - config.vision_config.mask_ratio))
    n_words = args.text_length - 1
    scales = torch.full((3,), 14.2857, device=device)
    local_rows = []
    for size in args.local_batch_sizes:
        gen = torch.Generator().manual_seed(size)
        image_local = torch.randn(size, n_img, proj, generator=gen).to(device).requires_grad_(True)
        text_local = torch.randn(size, n_words, proj, generator=gen).to(device).requires_grad_(True)
        cap_lens = torch.randint(n_words // 3, n_words + 1, (size,), generator=gen).to(device)

        def vectorised(image_local=image_local, text_local=text_local, cap_lens=cap_lens):
            alta_local_loss(
                image_local, text_local, cap_lens, *scales, chunk_size=config.local_loss_chunk_size
            ).backward()

        def loop(image_local=image_local, text_local=text_local, cap_lens=cap_lens):
            local_loss_loop(image_local, text_local, cap_lens, *scales).backward()

        timed = interleaved_best({"vec": vectorised, "loop": loop}, device, max(2, args.steps))
        mem = measure_peak(vectorised, device)
        chunks = -(-size // config.local_loss_chunk_size)
        results[f"local_ms_b{size}"] = 1000 * timed["vec"]
        local_rows.append(
            [
                size,
                1000 * timed["vec"],
                1e6 * timed["vec"] / size**2,
                chunks,
                mem,
                1000 * timed["loop"],
                f"{timed['loop'] / timed['vec']:.1f}x",
            ]
        )
    print(f"\n## Local loss, forward + backward ({n_img} image tokens, {n_words} words, {proj}-d)\n")
    print(
        markdown_table(
            [
                "batch",
                "ms",
                "us per image-text pair",
                "python iterations (text chunks)",
                "peak MiB",
                "loop over texts ms",
                "speed-up",
            ],
            local_rows,
        )
    )
    return results


if __name__ == "__main__":
    main()
