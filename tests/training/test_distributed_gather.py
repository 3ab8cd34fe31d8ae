"""Two real CPU processes (gloo): a CLIP-style loss over gathered features equals one process on the whole batch."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from training.distributed import gather_with_grad, pad_to_global_max, world_info


WORLD_SIZE = 2
PER_RANK = 4
LR = 0.1


class ToyDualEncoder(nn.Module):
    """Image, text and word encoders (plain Linear) plus a learnable logit scale."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(8, 5)
        self.text = nn.Linear(6, 5)
        self.words = nn.Linear(6, 5)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, images, texts, words):
        return self.image(images), self.text(texts), self.words(words)


def make_model() -> ToyDualEncoder:
    torch.manual_seed(123)
    return ToyDualEncoder().double()


def make_batch():
    """The global batch: 8 samples; word sequences of per-sample length ``cap_lens`` (padded with zeros).

    Rank 0's samples are at most 3 words long and rank 1's up to 7, so the local padded lengths differ.
    """
    g = torch.Generator().manual_seed(7)
    n = WORLD_SIZE * PER_RANK
    images = torch.randn(n, 8, generator=g, dtype=torch.float64)
    texts = torch.randn(n, 6, generator=g, dtype=torch.float64)
    cap_lens = torch.tensor([3, 1, 2, 3, 7, 4, 5, 6])
    words = torch.zeros(n, int(cap_lens.max()), 6, dtype=torch.float64)
    for i, length in enumerate(cap_lens.tolist()):
        words[i, :length] = torch.randn(length, 6, generator=g, dtype=torch.float64)
    return images, texts, words, cap_lens


def clip_style_loss(image_f, text_f, word_f, cap_lens, logit_scale):
    """Global CLIP loss plus a word-level term (masked mean over each text's words) over the gathered batch."""
    image_f = F.normalize(image_f, dim=-1)
    text_f = F.normalize(text_f, dim=-1)
    scale = logit_scale.exp()
    labels = torch.arange(image_f.shape[0])
    logits = scale * image_f @ text_f.T
    global_loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    mask = (torch.arange(word_f.shape[1])[None, :] < cap_lens[:, None]).to(word_f.dtype)
    pooled = (word_f * mask[..., None]).sum(1) / cap_lens[:, None].to(word_f.dtype)
    word_logits = scale * image_f @ F.normalize(pooled, dim=-1).T
    local_loss = (F.cross_entropy(word_logits, labels) + F.cross_entropy(word_logits.T, labels)) / 2
    return global_loss + local_loss


def single_process_reference():
    model = make_model()
    images, texts, words, cap_lens = make_batch()
    loss = clip_style_loss(*model(images, texts, words), cap_lens, model.logit_scale)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
    return loss.detach(), grads, {name: p.detach().clone() for name, p in model.named_parameters()}


def _worker(rank: int, store: str, out_dir: str) -> None:
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=60)
    )
    try:
        info = world_info()
        model = nn.parallel.DistributedDataParallel(make_model())
        images, texts, words, cap_lens = make_batch()
        local = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        # Each rank pads its words only to its own longest text, as a collator would.
        local_words = words[local, : int(cap_lens[local].max())]
        image_f, text_f, word_f = model(images[local], texts[local], local_words)
        word_f = pad_to_global_max(word_f, dim=1)
        loss = clip_style_loss(
            gather_with_grad(image_f, name="image_f"),
            gather_with_grad(text_f, name="text_f"),
            gather_with_grad(word_f, name="word_f"),
            gather_with_grad(cap_lens[local], name="cap_lens"),
            model.module.logit_scale,
        )
        loss.backward()  # DDP averages the parameter gradients over the two ranks here
        grads = {name: p.grad.clone() for name, p in model.module.named_parameters()}
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        optimizer.step()
        updated = {name: p.detach().clone() for name, p in model.module.named_parameters()}

        # An uneven batch (no drop_last) is refused with the shapes, on every rank, instead of hanging.
        try:
            gather_with_grad(torch.zeros(3 + rank, 5), name="uneven")
            shape_error = None
        except ValueError as error:
            shape_error = str(error)
        torch.save(
            {
                "loss": loss.detach(),
                "grads": grads,
                "updated": updated,
                "info": (info.rank, info.world_size, info.local_rank, info.is_distributed),
                "local_len": local_words.shape[1],
                "shape_error": shape_error,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        # An orderly shutdown: a rank that tears gloo down while its peer is still in a collective gets SIGABRT.
        dist.barrier()
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("gather")
    mp.spawn(_worker, args=(str(out_dir / "store"), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD_SIZE)]


def test_two_processes_match_one_process(two_process_results):
    ref_loss, ref_grads, ref_updated = single_process_reference()
    assert [r["local_len"] for r in two_process_results] == [3, 7]  # the local padded lengths really differ
    for rank, result in enumerate(two_process_results):
        assert result["info"] == (rank, WORLD_SIZE, rank, True)
        torch.testing.assert_close(result["loss"], ref_loss, rtol=1e-12, atol=1e-12)
        for name, grad in ref_grads.items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-10, atol=1e-12, msg=f"grad {name}")
            torch.testing.assert_close(result["updated"][name], ref_updated[name], rtol=1e-10, atol=1e-12)


def test_uneven_shapes_raise_on_every_rank(two_process_results):
    for result in two_process_results:
        assert result["shape_error"] is not None
        assert "same shape on every rank" in result["shape_error"] and "[(3, 5), (4, 5)]" in result["shape_error"]


def test_single_process_is_identity():
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x
    assert pad_to_global_max(x, dim=1) is x
    assert world_info().world_size == 1 and world_info().is_main_process
