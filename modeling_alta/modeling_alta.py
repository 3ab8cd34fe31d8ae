# Copyright 2026 The alta developers. Licensed under the Apache License, Version 2.0.
"""PyTorch ALTA: a masked-modeling ViT and a BERT text encoder, frozen, aligned through bottleneck adapters.

The file reads top to bottom: loss primitives, output dataclasses, adapters, the vision tower (embeddings with
view/time slots and a missing-view token, pre-LN blocks), the text tower (post-LN BERT layers), the masked-image
decoder and the heads, then the `PreTrainedModel` classes. It ships to the Hub as custom code, so it imports only
torch, transformers' stable public API and its sibling files.

Behaviour follows the reference implementation (github.com/DopamineLcy/ALTA, described in alta_reference.md); no
code is taken from it. Tensor layouts are stated in docstrings: `B` batch, `V` views (slots) per study, `N` patches
per frame, `L` tokens, `D` hidden size, `P` projection size.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, logging


try:  # transformers' attention registry: kernels other than eager (sdpa, flex, user-registered) dispatch through it
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
except ImportError:  # pragma: no cover - kept so that the Hub file still loads if the registry moves
    ALL_ATTENTION_FUNCTIONS = None

from .adapters_alta import AltaAdapterMixin
from .configuration_alta import (
    STUDY_SLOTS,
    AltaAdapterConfig,
    AltaConfig,
    AltaTextConfig,
    AltaVisionConfig,
    check_pretrained_source,
    not_found_anywhere,
)


logger = logging.get_logger(__name__)

# Written into every saved config so that the folder loads as custom code through each Auto class.
ALTA_AUTO_MAP = {
    "AutoConfig": "configuration_alta.AltaConfig",
    "AutoModel": "modeling_alta.AltaModel",
    "AutoModelForPreTraining": "modeling_alta.AltaForPreTraining",
    "AutoModelForZeroShotImageClassification": "modeling_alta.AltaModel",
}


# ---------------------------------------------------------------------------------------------------------------
# Loss primitives. Pure functions so that training code can call them on features gathered from every process.
# ---------------------------------------------------------------------------------------------------------------


def alta_contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    all_image_embeds: torch.Tensor | None = None,
    all_text_embeds: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) loss on L2-normalised embeddings.

    Args:
        image_embeds, text_embeds (`torch.Tensor` of shape `[n, P]`): this process's normalised pairs.
        logit_scale (`torch.Tensor`, scalar): the temperature *after* `exp` (s = exp(tau)).
        all_image_embeds, all_text_embeds (`torch.Tensor` of shape `[N, P]`, *optional*): the pairs of every process
            (gathered with gradient). When given, this process's rows are scored against all columns with labels
            `offset + arange(n)`; averaging the per-process losses then equals the loss over the global batch.
        offset (`int`): index of this process's first pair in the gathered tensors.

    Returns:
        `torch.Tensor`: scalar, `(CE(s V U^T, y) + CE(s U V^T, y)) / 2`.
    """
    all_image_embeds = image_embeds if all_image_embeds is None else all_image_embeds
    all_text_embeds = text_embeds if all_text_embeds is None else all_text_embeds
    labels = torch.arange(image_embeds.shape[0], device=image_embeds.device) + offset
    logits_per_image = logit_scale * image_embeds @ all_text_embeds.t()
    logits_per_text = logit_scale * text_embeds @ all_image_embeds.t()
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def text_cap_lens(attention_mask: torch.Tensor) -> torch.Tensor:
    """Number of words each text contributes to the local loss: the index of its first padding token minus one
    ([CLS] excluded, [SEP] included), or `L - 1` for a text without padding (the reference's rule, with its
    hard-coded 128 replaced by the sequence length `L`).

    Args:
        attention_mask (`torch.Tensor` of shape `[B, L]`).

    Returns:
        `torch.LongTensor` of shape `[B]`.
    """
    seq_len = attention_mask.shape[1]
    first_pad = (attention_mask == 0).to(torch.int32).argmax(dim=1)
    first_pad = torch.where(first_pad == 0, torch.full_like(first_pad, seq_len), first_pad)
    return (first_pad - 1).long()


def alta_local_similarity(
    image_local: torch.Tensor,
    text_local: torch.Tensor,
    cap_lens: torch.Tensor,
    scale_attention: torch.Tensor,
    scale_word: torch.Tensor,
    scale_text: torch.Tensor,
    chunk_size: int = 32,
) -> torch.Tensor:
    """Word-to-patch similarity of every image with every text (GLoRIA-style attention, "sum" aggregation).

    For text `i` with words `W_i` (`n_i` of them) and image `b` with patch contexts `C_b`: `A = C_b W_i^T`,
    `alpha = softmax_words(A)`, `beta = softmax_patches(s1 alpha^T)`, `c = beta C_b`, `r_k = cos(w_k, c_k)` and
    `S[b, i] = s3 * log sum_k exp(s2 r_k)`. Vectorised over images and a chunk of texts (no Python loop over
    samples); `chunk_size` bounds memory to about `B x chunk x N x L` floats.

    Args:
        image_local (`torch.Tensor` of shape `[B_img, N, P]`): projected patch tokens (not normalised).
        text_local (`torch.Tensor` of shape `[B_txt, T, P]`): projected word tokens from position 1 on (not
            normalised); word `k` of text `i` is valid when `k < cap_lens[i]`.
        cap_lens (`torch.Tensor` of shape `[B_txt]`): valid words per text. A text with 0 words gets a column of
            `-inf` and NaN gradients: :func:`alta_local_loss` leaves such texts out before calling this.
        scale_attention, scale_word, scale_text (`torch.Tensor`, scalars): `s1, s2, s3` after `exp`.

    Returns:
        `torch.Tensor` of shape `[B_img, B_txt]`.
    """
    rows = []
    num_words = text_local.shape[1]
    word_index = torch.arange(num_words, device=text_local.device)
    for start in range(0, text_local.shape[0], chunk_size):
        words = text_local[start : start + chunk_size]  # [t, T, P]
        valid = word_index[None, :] < cap_lens[start : start + chunk_size, None].to(word_index.device)  # [t, T]
        # attention of every patch over the words of every text: [B, t, N, T]
        scores = torch.einsum("bnp,itp->bint", image_local, words)
        scores = scores.masked_fill(~valid[None, :, None, :], float("-inf"))
        alpha = scores.softmax(dim=-1)
        beta = (scale_attention * alpha.transpose(-1, -2)).softmax(dim=-1)  # [B, t, T, N]
        context = torch.einsum("bitn,bnp->bitp", beta, image_local)  # [B, t, T, P]
        dot = (context * words[None]).sum(-1)
        norms = (context.norm(dim=-1) * words.norm(dim=-1)[None]).clamp(min=1e-8)
        cosine = dot / norms  # [B, t, T]
        logits = (scale_word * cosine).masked_fill(~valid[None], float("-inf"))
        rows.append(scale_text * torch.logsumexp(logits, dim=-1))  # [B, t]
    return torch.cat(rows, dim=1)


def alta_local_loss(
    image_local: torch.Tensor,
    text_local: torch.Tensor,
    cap_lens: torch.Tensor,
    scale_attention: torch.Tensor,
    scale_word: torch.Tensor,
    scale_text: torch.Tensor,
    all_image_local: torch.Tensor | None = None,
    all_text_local: torch.Tensor | None = None,
    all_cap_lens: torch.Tensor | None = None,
    offset: int = 0,
    chunk_size: int = 32,
) -> torch.Tensor:
    """Local (word-patch) contrastive loss: `(CE(S, y) + CE(S^T, y)) / 2` with `S` from
    :func:`alta_local_similarity`, rows indexing images.

    Across processes pass the gathered `all_*` tensors: this process's images are scored against all texts and its
    texts against all images, with labels `offset + arange(n)`.

    A text without words (`cap_lens == 0`: nothing but [CLS]) has no word-patch similarity (its word softmax is over
    an empty set). Its pair is left out of the local term: that text is no candidate, its image has no target, and
    the loss is the mean over the remaining pairs (a zero that keeps the graph when none remain). With all texts
    valid this is exactly the reference's loss.

    Args:
        image_local (`[n, N, P]`), text_local (`[n, T, P]`), cap_lens (`[n]`): this process's pairs.
        scale_attention, scale_word, scale_text: `s1, s2, s3` after `exp`.

    Returns:
        `torch.Tensor`: scalar.
    """
    scales = (scale_attention, scale_word, scale_text)
    # In one process the "gathered" tensors are this process's own (`gather_with_grad` returns them as they are):
    # the texts' rows are then the transpose of the images' rows, so the similarity is computed once, not twice.
    single = all_image_local is None or (
        all_image_local is image_local and all_text_local is text_local and all_cap_lens is cap_lens and offset == 0
    )
    if single:
        all_image_local, all_text_local, all_cap_lens, offset = image_local, text_local, cap_lens, 0
    keep = cap_lens > 0
    all_keep = all_cap_lens > 0
    if bool(all_keep.all()):
        labels = torch.arange(image_local.shape[0], device=image_local.device) + offset
        image_rows = alta_local_similarity(image_local, all_text_local, all_cap_lens, *scales, chunk_size)
        if single:
            return (F.cross_entropy(image_rows, labels) + F.cross_entropy(image_rows.t(), labels)) / 2
        text_rows = alta_local_similarity(all_image_local, text_local, cap_lens, *scales, chunk_size).t()
        return (F.cross_entropy(image_rows, labels) + F.cross_entropy(text_rows, labels)) / 2
    if not bool(keep.any()):
        # Nothing to score here, but every input stays in the graph (DDP expects the same parameters each step).
        return (image_local.sum() + text_local.sum()) * 0.0
    # Position of each kept pair among all kept pairs: the labels once the empty texts are left out.
    kept_index = torch.cumsum(all_keep.long(), dim=0) - 1
    labels = kept_index[offset + torch.arange(image_local.shape[0], device=all_keep.device)][keep]
    labels = labels.to(image_local.device)
    if single:
        sim = alta_local_similarity(image_local[keep], text_local[keep], cap_lens[keep], *scales, chunk_size)
        return (F.cross_entropy(sim, labels) + F.cross_entropy(sim.t(), labels)) / 2
    image_rows = alta_local_similarity(
        image_local[keep], all_text_local[all_keep], all_cap_lens[all_keep], *scales, chunk_size
    )
    text_rows = alta_local_similarity(
        all_image_local[all_keep], text_local[keep], cap_lens[keep], *scales, chunk_size
    ).t()
    return (F.cross_entropy(image_rows, labels) + F.cross_entropy(text_rows, labels)) / 2


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """`[B, C, H, W]` -> `[B, (H/p)(W/p), p*p*C]`, each patch flattened channel-last (`(row*p + col)*C + c`)."""
    batch, channels, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"Image size {(height, width)} is not divisible by the patch size {patch_size}.")
    h, w = height // patch_size, width // patch_size
    x = images.reshape(batch, channels, h, patch_size, w, patch_size)
    x = x.permute(0, 2, 4, 3, 5, 1)
    return x.reshape(batch, h * w, patch_size * patch_size * channels)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify` for a square grid: `[B, h*w, p*p*C]` -> `[B, C, h*p, w*p]`."""
    batch, num, _ = patches.shape
    side = int(math.isqrt(num))
    if side * side != num:
        raise ValueError(f"unpatchify needs a square grid; got {num} patches.")
    x = patches.reshape(batch, side, side, patch_size, patch_size, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(batch, channels, side * patch_size, side * patch_size)


def alta_reconstruction_loss(
    pred: torch.Tensor, target_images: torch.Tensor, mask: torch.Tensor, patch_size: int, norm_pix_loss: bool
) -> torch.Tensor:
    """Masked-image reconstruction loss (MAE): mean squared error per patch, averaged over removed patches.

    Args:
        pred (`[B, N, p*p*C]`): decoder output.
        target_images (`[B, C, H, W]`): the normalised image to reconstruct (the 448 frontal).
        mask (`[B, N]`): 1 for removed patches, 0 for kept ones.
        patch_size (`int`): `p`.
        norm_pix_loss (`bool`): normalise each target patch by its mean and unbiased variance (+1e-6).
    """
    target = patchify(target_images, patch_size)
    if pred.shape != target.shape:
        raise ValueError(
            f"Decoder output {tuple(pred.shape)} does not match the target patches {tuple(target.shape)}."
        )
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def alta_mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked-language-modeling cross-entropy over positions whose label is not -100.

    Args:
        logits (`[B, L, vocab]` or `[M, vocab]`), labels (`[B, L]` or `[M]`): every position, or only the masked
            ones (what `AltaForPreTraining` computes by default).

    Returns a zero that keeps the graph when no position is masked (the reference would return NaN).
    """
    flat_labels = labels.reshape(-1)
    if not bool((flat_labels != -100).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat_labels, ignore_index=-100)


def _sincos_1d(length: int, dim: int) -> torch.Tensor:
    """`[length, dim]` float64: `sin(p * w_k)` then `cos(p * w_k)` for `w_k = 10000^(-k / (dim/2))`.

    Computed with Python's `math` (scalar libm) rather than torch's vectorised kernels: those gave last-bit differences
    between processes on the same machine, so a model rebuilt from a config did not hash like the model it was saved
    from (seen as an intermittent adapter base-weight mismatch on `position_embedding`).
    """
    half = dim // 2
    omegas = [1.0 / 10000 ** (k / (dim / 2.0)) for k in range(half)]
    rows = [[math.sin(p * w) for w in omegas] + [math.cos(p * w) for w in omegas] for p in range(length)]
    return torch.tensor(rows, dtype=torch.float64).reshape(length, 2 * half)


@functools.lru_cache(maxsize=32)
def _sincos_2d(embed_dim: int, grid_height: int, grid_width: int, add_cls_token: bool) -> torch.Tensor:
    cols = _sincos_1d(grid_width, embed_dim // 2)  # [w, D/2]
    rows = _sincos_1d(grid_height, embed_dim // 2)  # [h, D/2]
    # Row-major grid: position r * w + c holds (column c's channels, row r's channels).
    emb = torch.cat([cols.repeat(grid_height, 1), rows.repeat_interleave(grid_width, dim=0)], dim=1)  # [h*w, D]
    if add_cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def get_2d_sincos_position_embedding(
    embed_dim: int, grid_height: int, grid_width: int, add_cls_token: bool = True
) -> torch.Tensor:
    """Fixed 2-D sin-cos positions as MAE defines them (the first half of the channels encodes the column, the
    second the row). Computed in float64, returned as float32 of shape `[1 + h*w, D]` (a zero row for CLS first).
    Bit-identical in every process (see `_sincos_1d`); a fresh tensor on each call.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"Sin-cos position embeddings need a hidden size divisible by 4; got {embed_dim}.")
    return _sincos_2d(int(embed_dim), int(grid_height), int(grid_width), bool(add_cls_token)).clone()


# ---------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class AltaVisionModelOutput(ModelOutput):
    """Output of the vision tower.

    Args:
        last_hidden_state (`[B, 1+N, D]` for single images, `[B, V, 1+n, D]` for studies): final-LN tokens (`n` kept
            patches per frame when masking).
        pooler_output (`[B, D]`): the frame embedding (single images) or the study's pooled slot embeddings; a
            frame embedding is its CLS token or, with `config.pooling="mean"`, the mean of its patch tokens.
        slot_embeds (`[B, V, D]`): frame embedding of every slot (see `pooler_output`).
        patch_embeds (`[B, V*n, D]` or `[B, N, D]`): patch tokens of every slot, in slot order.
        mask (`[B, N]`), ids_restore (`[B, N]`): masking of the current frontal (slot 0) when masking was applied.
        hidden_states (`tuple`): the embeddings and every layer's output, per frame (`[F, 1+n, D]`, `F = B` for
            single images, `B*V` for studies), when `output_hidden_states`.
        attentions (`tuple`): every layer's attention weights `[F, H, 1+n, 1+n]`, when `output_attentions`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    slot_embeds: torch.FloatTensor | None = None
    patch_embeds: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class AltaTextModelOutput(ModelOutput):
    """Output of the text tower.

    Args:
        last_hidden_state (`[B, L, D]`), pooler_output (`[B, D]`, the [CLS] state or the token mean, see
        `config.pooling`), hidden_states (`tuple` of `[B, L, D]`, with `output_hidden_states`), attentions (`tuple`
        of `[B, H, L, L]`, with `output_attentions`).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class AltaOutput(ModelOutput):
    """Output of [`AltaModel`].

    Args:
        loss (*optional*, returned with `return_loss=True`): the global contrastive loss.
        logits_per_image (`[B_img, B_txt]`): `exp(logit_scale) * cosine`.
        logits_per_text (`[B_txt, B_img]`): its transpose.
        text_embeds (`[B_txt, P]`), image_embeds (`[B_img, P]`): L2-normalised projections.
        text_model_output, vision_model_output: the tower outputs.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_model_output: AltaTextModelOutput | None = None
    vision_model_output: AltaVisionModelOutput | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(
            self[k] if k not in ("text_model_output", "vision_model_output") else getattr(self, k).to_tuple()
            for k in self.keys()
        )


@dataclass
class AltaForPreTrainingOutput(ModelOutput):
    """Output of [`AltaForPreTraining`].

    Args:
        loss: weighted sum of the four losses (with `return_loss=True`).
        contrastive_loss, local_loss: need every process's features; computed here with `return_loss=True` only.
        reconstruction_loss, mlm_loss: per-process losses, always computed when their weight is positive.
        mlm_num_tokens (`torch.LongTensor`, scalar): masked positions behind `mlm_loss` (to renormalise globally).
        image_embeds (`[B, P]`), text_embeds (`[B, P]`): L2-normalised global projections.
        image_local_embeds (`[B, V*n, P]`): projected kept patch tokens of every slot (not normalised).
        text_local_embeds (`[B, L-1, P]`): projected tokens from position 1 on (not normalised).
        cap_lens (`[B]`): valid words per text for the local loss.
        reconstruction_logits (`[B, N, p*p*C]`): decoder output for the current frontal.
        mask (`[B, N]`), ids_restore (`[B, N]`): masking of the current frontal.
        mlm_logits (`[M, vocab]`, or `[B, L, vocab]` with `return_full_mlm_logits=True`): MLM logits of the
            image-conditioned masked report, by default only at its `M` masked positions (`mlm_labels != -100`, in
            row-major order): the only ones the loss reads, and the vocabulary projection is the costly part.
        slot_embeds (`[B, V, D]`), patch_embeds (`[B, V*n, D]`): encoder outputs; image_conditioning (`[B, D_text]`).
        logit_scale, logit_scale_local (`[3]`): the temperatures after `exp`.
    """

    loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    local_loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    mlm_num_tokens: torch.LongTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_local_embeds: torch.FloatTensor | None = None
    text_local_embeds: torch.FloatTensor | None = None
    cap_lens: torch.LongTensor | None = None
    reconstruction_logits: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    slot_embeds: torch.FloatTensor | None = None
    patch_embeds: torch.FloatTensor | None = None
    image_conditioning: torch.FloatTensor | None = None
    logit_scale: torch.FloatTensor | None = None
    logit_scale_local: torch.FloatTensor | None = None


# ---------------------------------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------------------------------


class AltaBottleneckAdapter(nn.Module):
    """Bottleneck adapter `x -> up(act(down(x)))`, with an internal skip (`x + ...`) when `skip=True`.

    The attention adapters are serial with skip; the MLP adapters are parallel without skip (the block scales
    them). `enabled=False` turns the adapter off (the block then behaves as the frozen backbone).
    """

    _is_alta_adapter = True

    def __init__(self, hidden_size: int, config: AltaAdapterConfig, skip: bool) -> None:
        super().__init__()
        bottleneck = config.hidden_size_for(hidden_size)
        self.down_proj = nn.Linear(hidden_size, bottleneck)
        self.act = ACT2FN[config.act]
        self.up_proj = nn.Linear(bottleneck, hidden_size)
        # Marks read by `_init_weights`: it runs after __init__ (and on the meta device), so zeroing here is lost.
        self.down_proj._alta_init = "xavier"
        self.up_proj._alta_init = "zeros" if config.zero_init_up else "xavier"
        self.skip = skip
        self.enabled = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        delta = self.up_proj(self.act(self.down_proj(hidden_states)))
        return hidden_states + delta if self.skip else delta


def _adapter_for(config: AltaAdapterConfig | None, layer_index: int, place: str) -> AltaAdapterConfig | None:
    if config is None or place not in config.placement or not config.applies_to(layer_index):
        return None
    return config


# ---------------------------------------------------------------------------------------------------------------
# Vision tower
# ---------------------------------------------------------------------------------------------------------------


class AltaVisionEmbeddings(nn.Module):
    """Patch embedding, fixed sin-cos positions, CLS token, per-slot view and time embeddings, the missing-view
    token, and the per-frame random masking of MAE.

    Slots are ordered view-fastest: slot `s` has view kind `s % num_view_kinds` and time `s // num_view_kinds`
    (`STUDY_SLOTS`: frontal, lateral, prior_frontal, prior_lateral).
    """

    def __init__(self, config: AltaVisionConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.patch_size = config.patch_size
        self.grid = config.image_size // config.patch_size
        self.patch_embed = nn.Conv2d(config.num_channels, dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # Frozen parameters rather than buffers: they are part of the reference state dict and parameter count.
        self.position_embedding = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, dim), requires_grad=False)
        self.view_embedding = nn.Parameter(torch.zeros(1, config.num_view_kinds, dim))
        self.temporal_embedding = nn.Parameter(torch.zeros(1, config.num_times, dim))
        self.missing_token = nn.Parameter(torch.zeros(1, self.grid * self.grid, dim), requires_grad=False)

    def positions_for(self, grid_h: int, grid_w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """`[1, 1+h*w, D]` positions: the stored table at the training grid, exact sin-cos at any other grid."""
        if grid_h == self.grid and grid_w == self.grid:
            return self.position_embedding.to(dtype)
        table = get_2d_sincos_position_embedding(self.position_embedding.shape[-1], grid_h, grid_w)
        return table.to(device=device, dtype=dtype)[None]

    def missing_for(self, grid_h: int, grid_w: int, dtype: torch.dtype) -> torch.Tensor:
        token = self.missing_token
        if grid_h != self.grid or grid_w != self.grid:
            token = token.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
            token = F.interpolate(token.float(), size=(grid_h, grid_w), mode="bilinear", align_corners=False)
            token = token.flatten(2).transpose(1, 2)
        return token.to(dtype)

    def slot_embedding(self, slot_ids: torch.Tensor) -> torch.Tensor:
        """`[F, 1, D]` view + time embedding of each frame's slot."""
        views = slot_ids % self.config.num_view_kinds
        times = slot_ids // self.config.num_view_kinds
        return (self.view_embedding[0, views] + self.temporal_embedding[0, times])[:, None, :]

    def forward(
        self,
        frames: torch.Tensor,
        slot_ids: torch.Tensor,
        missing: torch.Tensor | None = None,
        mask_ratio: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Embed frames.

        Args:
            frames (`[F, C, H, W]`): frames of any size divisible by the patch size.
            slot_ids (`[F]`): slot of each frame.
            missing (`[F]` bool, *optional*): frames replaced by the missing-view token.
            mask_ratio (`float`): fraction of patches removed per frame (0 keeps all).
            noise (`[F, N]`, *optional*): masking noise (lowest values are kept); drawn uniformly when omitted.

        Returns:
            `(tokens [F, 1+n, D], mask [F, N] or None, ids_restore [F, N] or None)`.
        """
        height, width = frames.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"Image size {(height, width)} is not divisible by the patch size {self.patch_size}; resize or crop."
            )
        x = self.patch_embed(frames.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)  # [F, N, D]
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        if missing is not None:
            # No `missing.any()` shortcut: a branch on tensor values cannot be traced by torch.export (ONNX export
            # of the study tower), and `where` with an all-False mask returns `x` unchanged.
            token = self.missing_for(grid_h, grid_w, x.dtype).expand(x.shape[0], -1, -1)
            x = torch.where(missing[:, None, None], token, x)
        positions = self.positions_for(grid_h, grid_w, x.dtype, x.device)
        x = x + positions[:, 1:]
        mask = ids_restore = None
        if mask_ratio > 0:
            x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls = (self.cls_token + positions[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self.slot_embedding(slot_ids).to(x.dtype)
        return x, mask, ids_restore

    @staticmethod
    def random_masking(
        x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep `int(N * (1 - mask_ratio))` patches per frame, those with the lowest noise, in ascending-noise order.

        Returns `(kept [F, n, D], mask [F, N] with 1 = removed, ids_restore [F, N])`.
        """
        frames, num, dim = x.shape
        keep = int(num * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(frames, num, device=x.device)
        elif noise.shape != (frames, num):
            raise ValueError(
                f"`mask_noise` must have shape {(frames, num)} (frames, patches); got {tuple(noise.shape)}."
            )
        noise = noise.to(x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        kept = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, dim))
        mask = torch.ones(frames, num, device=x.device, dtype=x.dtype)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return kept, mask, ids_restore


def _byte_threshold(p: float) -> int | None:
    """`p * 256` when it is a whole number (0.25 -> 64): dropout can then draw one random byte per element."""
    scaled = p * 256
    return int(scaled) if 0 < scaled < 256 and scaled == int(scaled) else None


def alta_dropout(hidden_states: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout (`F.dropout` semantics: zero each element with probability `p`, scale the rest by `1 / (1 - p)`;
    the identity outside training) with cheaper mask draws where `p` is a multiple of 1/256, as ALTA's 0.25.

    `F.dropout` draws a Bernoulli variable per element; here one 32-bit draw of the global generator gives four
    uniform bytes, and an element is kept where its byte is `>= 256 p`: the same distribution, about 3x cheaper
    for forward and backward together (benchmarks/RESULTS.md §12). Other `p` use `F.dropout`. Seeded runs stay
    reproducible (the draws come from the global generator, whose state checkpoints save), but the masks differ
    from `F.dropout`'s.

    Args:
        hidden_states (`torch.Tensor` of any shape).
        p (`float`): drop probability.
        training (`bool`): apply it (else return the input).
    """
    if not training or p <= 0.0:
        return hidden_states
    threshold = _byte_threshold(p)
    if threshold is None:
        return F.dropout(hidden_states, p=p, training=True)
    count = hidden_states.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int32, device=hidden_states.device)
    random_bytes = words.random_(-(2**31), 2**31).view(torch.uint8)[:count].view(hidden_states.shape)
    # A float keep-and-scale factor: multiplying by it back-propagates faster than `torch.where` on CPU.
    scale = (random_bytes >= threshold).to(hidden_states.dtype).mul_(1.0 / (1.0 - p))
    return hidden_states * scale


class AltaDropout(nn.Dropout):
    """`nn.Dropout` with `alta_dropout`'s cheaper mask draws (same distribution, same train/eval behaviour)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(hidden_states)
        return alta_dropout(hidden_states, self.p, self.training)


def alta_eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out (`attn_implementation="eager"`): the one path that returns the attention weights.

    Same signature as transformers' attention functions, so it is the default of the attention registry.

    Args:
        query, key, value (`[B, H, L, d]`).
        attention_mask (`[B, 1, 1 or L, L]`, *optional*): bool (True = attend) or additive float.
        dropout (`float`): dropout on the attention weights (pass 0 in eval).
        scaling (`float`, *optional*): defaults to `d ** -0.5`.

    Returns:
        `(output [B, L, H, d], weights [B, H, L, L])`.
    """
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    weights = alta_dropout(weights, dropout, module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    # Used only where transformers' registry cannot be imported.
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def _attention_function(config: Any, output_attentions: bool, dropout: float = 0.0, device_type: str = "cpu"):
    """The attention kernel `config._attn_implementation` names (read at every call, so
    `model.set_attn_implementation(...)` takes effect at once): `"sdpa"` (the default) or `"eager"`, or any kernel
    registered with transformers' `AttentionInterface`. Only eager attention returns weights, so
    `output_attentions=True` computes eager attention, with a warning when another kernel was configured.

    With attention dropout (`dropout > 0`, training) on the CPU, SDPA leaves its fused kernel for its unfused one
    and draws a Bernoulli mask; eager attention with `alta_dropout`'s byte draws computes the same thing faster, so
    it is used there when `dropout` is a multiple of 1/256 (ALTA's 0.25). (On GPUs SDPA fuses dropout.)"""
    implementation = getattr(config, "_attn_implementation", None) or "sdpa"
    if implementation == "eager":
        return alta_eager_attention
    if implementation == "sdpa" and device_type == "cpu" and dropout > 0 and _byte_threshold(dropout) is not None:
        return alta_eager_attention
    if output_attentions:
        logger.warning_once(
            f"`output_attentions=True` needs the attention weights, which only eager attention computes: using it "
            f"instead of {implementation!r}. Load with `attn_implementation='eager'` to silence this warning."
        )
        return alta_eager_attention
    if ALL_ATTENTION_FUNCTIONS is None:
        if implementation != "sdpa":
            raise ValueError(f"attn_implementation={implementation!r} needs transformers' attention registry.")
        return _sdpa_attention
    return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, alta_eager_attention)


class AltaVisionAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm layout); the kernel follows
    `config._attn_implementation` (sdpa by default, eager on request)."""

    def __init__(
        self, config: AltaVisionConfig, hidden_size: int, num_heads: int, qkv_bias: bool = True, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.qkv = nn.Linear(hidden_size, hidden_size * 3, bias=qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.dropout = dropout

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`[F, L, D]` -> (`[F, L, D]`, weights `[F, H, L, L]` or None)."""
        batch, length, dim = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # unbind, not qkv[0], qkv[1], qkv[2]: its backward stacks the three gradients in one pass, where three
        # selects each zero-fill a qkv-sized gradient and then add the three up.
        query, key, value = qkv.unbind(0)
        dropout = self.dropout if self.training else 0.0
        attention = _attention_function(self.config, output_attentions, dropout, hidden_states.device.type)
        out, weights = attention(
            self,
            query,
            key,
            value,
            None,
            dropout=dropout,
            scaling=self.scaling,
        )
        return self.proj(out.reshape(batch, length, dim)), weights


class AltaVisionMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class AltaVisionLayer(GradientCheckpointingLayer):
    """Pre-LN ViT block with ALTA's adapters:
    `x <- x + A(Attn(LN1(x)))`, `h = LN2(x)`, `x <- x + MLP(h) + mlp_scale * B(h)`.

    A `GradientCheckpointingLayer`, so `model.gradient_checkpointing_enable()` checkpoints each block.
    """

    def __init__(
        self,
        config: AltaVisionConfig,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        layer_norm_eps: float,
        hidden_act: str = "gelu",
        qkv_bias: bool = True,
        attention_dropout: float = 0.0,
        adapter_config: AltaAdapterConfig | None = None,
        layer_index: int = 0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.attn = AltaVisionAttention(config, hidden_size, num_heads, qkv_bias, attention_dropout)
        self.norm2 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.mlp = AltaVisionMLP(hidden_size, intermediate_size, hidden_act)
        attn_cfg = _adapter_for(adapter_config, layer_index, "attn")
        mlp_cfg = _adapter_for(adapter_config, layer_index, "mlp")
        self.attn_adapter = AltaBottleneckAdapter(hidden_size, attn_cfg, skip=True) if attn_cfg else None
        self.mlp_adapter = AltaBottleneckAdapter(hidden_size, mlp_cfg, skip=False) if mlp_cfg else None
        self.mlp_scale = mlp_cfg.mlp_scale if mlp_cfg else 0.0

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn, weights = self.attn(self.norm1(hidden_states), output_attentions)
        if self.attn_adapter is not None and self.attn_adapter.enabled:
            attn = self.attn_adapter(attn)
        hidden_states = hidden_states + attn
        normed = self.norm2(hidden_states)
        out = self.mlp(normed)
        if self.mlp_adapter is not None and self.mlp_adapter.enabled:
            out = torch.add(out, self.mlp_adapter(normed), alpha=self.mlp_scale)  # one pass, no scaled copy
        return hidden_states + out, weights


def _run_layers(
    layers: nn.ModuleList,
    hidden_states: torch.Tensor,
    *args: Any,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, tuple | None, tuple | None]:
    """Apply `layers` in order; return `(out, states, attentions)`. `states` holds every layer's input and the last
    output when `output_hidden_states` (else None: keeping them would keep every layer's activations alive in
    inference; benchmarks/RESULTS.md); `attentions` each layer's weights when `output_attentions`. Gradient
    checkpointing happens inside the layers (`GradientCheckpointingLayer`)."""
    states = [hidden_states] if output_hidden_states else None
    attentions = [] if output_attentions else None
    for layer in layers:
        hidden_states, weights = layer(hidden_states, *args, output_attentions=output_attentions)
        if states is not None:
            states.append(hidden_states)
        if attentions is not None:
            attentions.append(weights)
    return (
        hidden_states,
        tuple(states) if states is not None else None,
        tuple(attentions) if attentions is not None else None,
    )


def _is_exporting() -> bool:
    """True while `torch.export` (e.g. `torch.onnx.export(dynamo=True)`) or `torch.jit.trace` records the model."""
    compiler = getattr(torch, "compiler", None)
    exporting = getattr(compiler, "is_exporting", None) or getattr(compiler, "is_compiling", None)
    return bool(torch.jit.is_tracing() or (exporting is not None and exporting()))


class AltaVisionTransformer(nn.Module):
    """ViT encoder over single images or studies of up to `num_slots` frames, each frame encoded separately."""

    def __init__(self, config: AltaVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = AltaVisionEmbeddings(config)
        adapter = config.adapter
        self.layers = nn.ModuleList(
            [
                AltaVisionLayer(
                    config,
                    config.hidden_size,
                    config.num_attention_heads,
                    config.intermediate_size,
                    config.layer_norm_eps,
                    config.hidden_act,
                    config.qkv_bias,
                    config.attention_dropout,
                    adapter,
                    i,
                )
                for i in range(config.num_hidden_layers)
            ]
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # Inference shortcut for studies with missing views (see `_encode_sharing_missing`); benchmarks switch it off
        # to measure it against the full path.
        self.share_missing_frames = True

    def _encode(
        self, tokens: torch.Tensor, output_hidden_states: bool, output_attentions: bool
    ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        hidden, states, attentions = _run_layers(
            self.layers, tokens, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )
        return self.norm(hidden), states, attentions

    def _can_share_missing(self, mask_ratio: float, output_hidden_states: bool, output_attentions: bool) -> bool:
        """Whether missing frames may be encoded once per slot: in inference without patch masking (no dropout, no
        random mask: a missing frame's tokens then depend on its slot alone), without per-frame hidden states or
        attentions, and outside tracing and export (the shortcut's shapes depend on the data)."""
        if not self.share_missing_frames or self.training or mask_ratio > 0:
            return False
        if output_hidden_states or output_attentions:
            return False
        return not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export())

    def _encode_sharing_missing(
        self, frames: torch.Tensor, slots: torch.Tensor, missing: torch.Tensor
    ) -> torch.Tensor:
        """Encode `frames` `[F, C, H, W]` computing each missing frame once per slot: `[F, 1+n, D]`, the same as
        encoding every frame (frames are encoded independently, and a missing frame's tokens are the missing-view
        token plus its slot's embeddings). Studies without priors skip half their frames."""
        present = (~missing).nonzero().flatten()
        missing_slots = torch.unique(slots[missing])  # sorted
        stand_ins = frames.new_zeros(missing_slots.shape[0], *frames.shape[1:])
        flags = torch.cat([missing.new_zeros(present.shape[0]), missing.new_ones(missing_slots.shape[0])])
        tokens, _, _ = self.embeddings(
            torch.cat([frames[present], stand_ins]), torch.cat([slots[present], missing_slots]), flags
        )
        encoded, _, _ = self._encode(tokens, False, False)
        hidden = encoded.new_empty(frames.shape[0], *encoded.shape[1:])
        hidden[present] = encoded[: present.shape[0]]
        hidden[missing] = encoded[present.shape[0] + torch.searchsorted(missing_slots, slots[missing])]
        return hidden

    def frame_embedding(self, hidden: torch.Tensor) -> torch.Tensor:
        """One embedding per frame from its encoded tokens `[..., 1+N, D]` -> `[..., D]` (`config.pooling`)."""
        if getattr(self.config, "pooling", "cls") == "mean":
            return hidden[..., 1:, :].mean(dim=-2)
        return hidden[..., 0, :]

    def _check_channels(self, pixel_values: torch.Tensor) -> None:
        channels = pixel_values.shape[-3]
        if channels != self.config.num_channels:
            raise ValueError(
                f"`pixel_values` {tuple(pixel_values.shape)} has {channels} channel(s) but the model takes "
                f"{self.config.num_channels} (config.num_channels); replicate grayscale radiographs to "
                f"{self.config.num_channels} channels, as AltaImageProcessor does."
            )

    @staticmethod
    def check_studies(view_mask: torch.Tensor, given: bool) -> None:
        """Refuse studies the processor cannot produce: no view at all, or no current frontal (slot 0).

        Args:
            view_mask (`[B, V]` bool): present slots.
            given (`bool`): the mask came from the caller (else from the frame-sum rule), for the message.
        """
        if _is_exporting():
            return  # a value check cannot be part of an exported graph; the caller of the exported model owns it
        # One host sync in the common case: a study without any view has no frontal either.
        if not bool((~view_mask[:, 0]).any()):
            return
        source = "`view_mask`" if given else "the missing-view rule (a frame that sums to exactly 0 is missing)"
        empty = (~view_mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"Study/studies {empty} of the batch have no view at all according to {source}.")
        no_frontal = (~view_mask[:, 0]).nonzero().flatten().tolist()
        if no_frontal:
            raise ValueError(
                f"Study/studies {no_frontal} of the batch have no current frontal view (slot 0, "
                f"{STUDY_SLOTS[0]!r}) according to {source}; every study needs one."
            )

    def forward(
        self,
        pixel_values: torch.Tensor,
        view_mask: torch.Tensor | None = None,
        mask_ratio: float = 0.0,
        mask_noise: torch.Tensor | None = None,
        study_pooling: str | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> AltaVisionModelOutput:
        """Encode single images `[B, C, H, W]` (current-frontal slot, no missing-view logic; the reference's
        evaluation path) or studies `[B, V, C, H, W]` (`V <= num_slots`, slot order frontal, lateral, prior frontal,
        prior lateral).

        For studies, a view is missing where `view_mask` is False or, without `view_mask`, where the frame sums to
        exactly zero (the reference rule). Missing frames go through the missing-view token. A study without any
        view, or without its current frontal, is refused. With `study_pooling="all"` (the default, as trained) the
        study is padded to `num_slots` frames and the CLS tokens of all slots are averaged; with `"present"` only
        present slots are averaged.

        `hidden_states` and `attentions` are per frame: `[B, 1+n, D]` / `[B, H, 1+n, 1+n]` for single images,
        `[B*V, 1+n, D]` / `[B*V, H, 1+n, 1+n]` for studies (frames in study-major, slot-minor order).
        """
        if pixel_values.dim() not in (4, 5):
            raise ValueError(
                "`pixel_values` must be (batch, views, channels, height, width) or (batch, channels, height, width); "
                f"got shape {tuple(pixel_values.shape)}."
            )
        self._check_channels(pixel_values)
        if pixel_values.dim() == 4:
            batch = pixel_values.shape[0]
            slots = torch.zeros(batch, dtype=torch.long, device=pixel_values.device)
            tokens, mask, ids_restore = self.embeddings(pixel_values, slots, None, mask_ratio, mask_noise)
            hidden, states, attentions = self._encode(tokens, output_hidden_states, output_attentions)
            return AltaVisionModelOutput(
                last_hidden_state=hidden,
                pooler_output=self.frame_embedding(hidden),
                slot_embeds=self.frame_embedding(hidden)[:, None],
                patch_embeds=hidden[:, 1:],
                mask=mask,
                ids_restore=ids_restore,
                hidden_states=states,
                attentions=attentions,
            )
        pooling = study_pooling or self.config.study_pooling
        batch, views = pixel_values.shape[:2]
        num_slots = self.config.num_slots
        if views > num_slots:
            raise ValueError(
                f"A study holds at most {num_slots} views ({', '.join(STUDY_SLOTS[:num_slots])}); got {views}."
            )
        given = view_mask is not None
        if view_mask is None:
            view_mask = pixel_values.flatten(2).sum(-1) != 0
        elif tuple(view_mask.shape) != (batch, views):
            raise ValueError(f"`view_mask` must have shape {(batch, views)}; got {tuple(view_mask.shape)}.")
        view_mask = view_mask.to(device=pixel_values.device, dtype=torch.bool)
        self.check_studies(view_mask, given)
        if pooling == "all" and views < num_slots:
            pad = pixel_values.new_zeros(batch, num_slots - views, *pixel_values.shape[2:])
            pixel_values = torch.cat([pixel_values, pad], dim=1)
            view_mask = torch.cat([view_mask, view_mask.new_zeros(batch, num_slots - views)], dim=1)
            views = num_slots
        frames = pixel_values.reshape(batch * views, *pixel_values.shape[2:])
        slots = torch.arange(views, device=frames.device).repeat(batch)
        noise = None
        if mask_noise is not None:
            noise = mask_noise.reshape(batch * views, -1)
        missing = ~view_mask.reshape(-1)
        mask = ids_restore = states = attentions = None
        if self._can_share_missing(mask_ratio, output_hidden_states, output_attentions):
            hidden = self._encode_sharing_missing(frames, slots, missing)
        else:
            tokens, mask, ids_restore = self.embeddings(frames, slots, missing, mask_ratio, noise)
            hidden, states, attentions = self._encode(tokens, output_hidden_states, output_attentions)
        hidden = hidden.reshape(batch, views, *hidden.shape[1:])
        slot_embeds = self.frame_embedding(hidden)
        if pooling == "all":
            pooled = slot_embeds.mean(dim=1)
        else:
            weights = view_mask.to(slot_embeds.dtype)[..., None]
            pooled = (slot_embeds * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        if mask is not None:
            mask = mask.reshape(batch, views, -1)[:, 0]
            ids_restore = ids_restore.reshape(batch, views, -1)[:, 0]
        return AltaVisionModelOutput(
            last_hidden_state=hidden,
            pooler_output=pooled,
            slot_embeds=slot_embeds,
            patch_embeds=hidden[:, :, 1:].reshape(batch, -1, hidden.shape[-1]),
            mask=mask,
            ids_restore=ids_restore,
            hidden_states=states,
            attentions=attentions,
        )


# ---------------------------------------------------------------------------------------------------------------
# Text tower (BERT parameter names, so CXR-BERT checkpoints load by key)
# ---------------------------------------------------------------------------------------------------------------


class AltaTextEmbeddings(nn.Module):
    """Word + absolute position + token-type embeddings, LayerNorm and dropout (BERT)."""

    def __init__(self, config: AltaTextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = AltaDropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"Text of {length} tokens exceeds max_position_embeddings={self.position_embeddings.num_embeddings}."
            )
        positions = torch.arange(length, device=input_ids.device)[None]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class AltaTextSelfAttention(nn.Module):
    """BERT self-attention; the kernel follows `config._attn_implementation` (sdpa by default, eager on request)."""

    def __init__(self, config: AltaTextConfig) -> None:
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = config.attention_probs_dropout_prob

    def forward(
        self, hidden_states: torch.Tensor, attn_mask: torch.Tensor | None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`[B, L, D]` with a `[B, 1, 1, L]` bool mask (True = attend) -> (`[B, L, D]`, `[B, H, L, L]` or None)."""
        batch, length, dim = hidden_states.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        dropout = self.dropout if self.training else 0.0
        attention = _attention_function(self.config, output_attentions, dropout, hidden_states.device.type)
        out, weights = attention(
            self,
            heads(self.query(hidden_states)),
            heads(self.key(hidden_states)),
            heads(self.value(hidden_states)),
            attn_mask,
            dropout=dropout,
            scaling=self.scaling,
        )
        return out.reshape(batch, length, dim), weights


class AltaTextSelfOutput(nn.Module):
    def __init__(self, config: AltaTextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = AltaDropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class AltaTextAttention(nn.Module):
    def __init__(self, config: AltaTextConfig) -> None:
        super().__init__()
        self.self = AltaTextSelfAttention(config)
        self.output = AltaTextSelfOutput(config)

    def forward(
        self, hidden_states: torch.Tensor, attn_mask: torch.Tensor | None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, weights = self.self(hidden_states, attn_mask, output_attentions)
        return self.output(out, hidden_states), weights


class AltaTextIntermediate(nn.Module):
    def __init__(self, config: AltaTextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class AltaTextOutput(AltaTextSelfOutput):
    def __init__(self, config: AltaTextConfig) -> None:
        super().__init__(config)
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)


class AltaTextLayer(GradientCheckpointingLayer):
    """Post-LN BERT layer with ALTA's adapters: `a = A(BertAttention(x))` (the attention sub-layer already holds its
    residual and LayerNorm), then `out = LN(FFN(a) + a) + mlp_scale * B(a)`: the MLP adapter is added after the
    output LayerNorm, as in the reference. A `GradientCheckpointingLayer`, so `model.gradient_checkpointing_enable()`
    checkpoints each layer.
    """

    def __init__(self, config: AltaTextConfig, layer_index: int = 0) -> None:
        super().__init__()
        self.attention = AltaTextAttention(config)
        self.intermediate = AltaTextIntermediate(config)
        self.output = AltaTextOutput(config)
        adapter = config.adapter
        attn_cfg = _adapter_for(adapter, layer_index, "attn")
        mlp_cfg = _adapter_for(adapter, layer_index, "mlp")
        self.attn_adapter = AltaBottleneckAdapter(config.hidden_size, attn_cfg, skip=True) if attn_cfg else None
        self.mlp_adapter = AltaBottleneckAdapter(config.hidden_size, mlp_cfg, skip=False) if mlp_cfg else None
        self.mlp_scale = mlp_cfg.mlp_scale if mlp_cfg else 0.0

    def forward(
        self, hidden_states: torch.Tensor, attn_mask: torch.Tensor | None = None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn, weights = self.attention(hidden_states, attn_mask, output_attentions)
        if self.attn_adapter is not None and self.attn_adapter.enabled:
            attn = self.attn_adapter(attn)
        out = self.output(self.intermediate(attn), attn)
        if self.mlp_adapter is not None and self.mlp_adapter.enabled:
            out = torch.add(out, self.mlp_adapter(attn), alpha=self.mlp_scale)
        return out, weights


class AltaTextEncoder(nn.Module):
    def __init__(self, config: AltaTextConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList([AltaTextLayer(config, i) for i in range(config.num_hidden_layers)])

    def forward(
        self,
        hidden_states: torch.Tensor,
        attn_mask: torch.Tensor | None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        return _run_layers(
            self.layer,
            hidden_states,
            attn_mask,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )


class AltaTextTransformer(nn.Module):
    """BERT encoder (no pooler) with ALTA adapters and an optional additive conditioning of the embeddings."""

    def __init__(self, config: AltaTextConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = AltaTextEmbeddings(config)
        self.encoder = AltaTextEncoder(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        conditioning: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> AltaTextModelOutput:
        """
        Args:
            input_ids (`[B, L]`), attention_mask (`[B, L]`, 1 = token), token_type_ids (`[B, L]`).
            conditioning (`[B, D]`, *optional*): added to every token embedding after the embedding LayerNorm and
                dropout (ALTA's image conditioning of the masked report).
            output_hidden_states, output_attentions (`bool`): also return every layer's states / weights.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"`input_ids` must be (batch, length); got shape {tuple(input_ids.shape)}.")
        hidden = self.embeddings(input_ids, token_type_ids)
        if conditioning is not None:
            hidden = hidden + conditioning[:, None, :].to(hidden.dtype)
        attn_mask = None
        if attention_mask is not None:
            attn_mask = attention_mask[:, None, None, :].to(torch.bool)
        hidden, states, attentions = self.encoder(hidden, attn_mask, output_hidden_states, output_attentions)
        return AltaTextModelOutput(
            last_hidden_state=hidden,
            pooler_output=self.pool(hidden, attention_mask),
            hidden_states=states,
            attentions=attentions,
        )

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Global text state `[B, D]` from token states `[B, L, D]`: `[CLS]`, or the mean over non-padding tokens
        (`config.pooling`)."""
        if getattr(self.config, "pooling", "cls") == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(dim=1)
        weights = attention_mask.to(hidden.dtype)[..., None]
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


# ---------------------------------------------------------------------------------------------------------------
# Heads and the masked-image decoder
# ---------------------------------------------------------------------------------------------------------------


class AltaProjectionHead(nn.Module):
    """`Linear(D -> P) -> GELU -> LayerNorm(P) -> Linear(P -> P)` (CXR-BERT's projection head, used for all four)."""

    def __init__(self, input_size: int, projection_size: int, layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        self.dense_to_hidden = nn.Linear(input_size, projection_size)
        self.transform_act_fn = ACT2FN["gelu"]
        self.LayerNorm = nn.LayerNorm(projection_size, eps=layer_norm_eps)
        self.dense_to_output = nn.Linear(projection_size, projection_size)
        self.dense_to_hidden._alta_init = "xavier"
        self.dense_to_output._alta_init = "xavier"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense_to_output(self.LayerNorm(self.transform_act_fn(self.dense_to_hidden(hidden_states))))


class AltaMLMHead(nn.Module):
    """BERT's MLM head: dense -> GELU -> LayerNorm, then a decoder tied to the word embeddings plus its own bias."""

    def __init__(self, config: AltaTextConfig) -> None:
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.act = ACT2FN[config.hidden_act]
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden = self.transform.LayerNorm(self.act(self.transform.dense(hidden_states)))
        return self.decoder(hidden) + self.bias


class AltaMaskedDecoder(nn.Module):
    """MAE decoder of the current frontal: embed the kept tokens, put mask tokens back in place, add fixed sin-cos
    positions, run plain ViT blocks (no adapters), predict each `p x p x C` patch of the reconstruction image.
    """

    def __init__(self, config: AltaVisionConfig) -> None:
        super().__init__()
        dim = config.decoder_hidden_size
        num = config.num_patches
        self.decoder_embed = nn.Linear(config.hidden_size, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position_embedding = nn.Parameter(torch.zeros(1, num + 1, dim), requires_grad=False)
        self.layers = nn.ModuleList(
            [
                AltaVisionLayer(
                    config,
                    dim,
                    config.decoder_num_attention_heads,
                    config.decoder_intermediate_size,
                    config.layer_norm_eps,
                    config.hidden_act,
                    True,
                    0.0,
                    None,
                    i,
                )
                for i in range(config.decoder_num_hidden_layers)
            ]
        )
        self.decoder_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(dim, config.reconstruction_patch_size**2 * config.num_channels)
        self.decoder_embed._alta_init = "xavier"
        self.decoder_pred._alta_init = "xavier"

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """
        Args:
            latent (`[B, 1+n, D]`): CLS plus the kept tokens of the current frontal.
            ids_restore (`[B, N]`): un-shuffling indices from the masking.

        Returns:
            `[B, N, p*p*C]` predictions for every patch.
        """
        x = self.decoder_embed(latent)
        batch, num = ids_restore.shape
        tokens = torch.cat([x[:, 1:], self.mask_token.to(x.dtype).expand(batch, num + 1 - x.shape[1], -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.position_embedding.to(x.dtype)
        x, _, _ = _run_layers(self.layers, x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]


# ---------------------------------------------------------------------------------------------------------------
# PreTrainedModel classes
# ---------------------------------------------------------------------------------------------------------------


def _is_alta_config(config: Any) -> bool:
    # Not isinstance: loaded as Hub custom code, the config class may come from another copy of this file.
    return getattr(config, "model_type", None) == "alta" and hasattr(config, "vision_config")


def _guarded_copy(param: torch.Tensor, value: torch.Tensor) -> None:
    # Mirrors transformers' init guard: never overwrite a value that was loaded from a checkpoint.
    if getattr(param, "_is_hf_initialized", False):
        return
    with torch.no_grad():
        param.copy_(value.to(device=param.device, dtype=param.dtype))


class AltaPreTrainedModel(AltaAdapterMixin, PreTrainedModel):
    """Weight initialisation, freezing and adapter switches shared by every ALTA model."""

    config_class = AltaConfig
    base_model_prefix = "alta"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["AltaVisionLayer", "AltaTextLayer", "AltaVisionEmbeddings", "AltaTextEmbeddings"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any):
        """`PreTrainedModel.from_pretrained`, with a clear error for a local folder that does not exist (instead of
        `HFValidationError: Repo id must be in the form ...`), and for a name found neither locally nor on the Hub."""
        check_pretrained_source(pretrained_model_name_or_path, "model")
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except OSError as err:
            explained = not_found_anywhere(pretrained_model_name_or_path, "model", err)
            if explained is err:
                raise
            raise explained from err

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Set every initial value here: `from_pretrained` builds on the meta device and calls this for whatever the
        checkpoint does not hold, so values written in `__init__` would be lost."""
        std = getattr(self.config, "initializer_range", None)
        if std is None:
            std = getattr(getattr(self.config, "text_config", None), "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            mode = getattr(module, "_alta_init", None)
            if mode == "zeros":
                nn.init.zeros_(module.weight)
            elif mode == "xavier":
                nn.init.xavier_uniform_(module.weight)
            else:
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # MAE initialises the patch projection like a Linear layer.
            nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, AltaVisionEmbeddings):
            nn.init.normal_(module.cls_token, std=0.02)
            nn.init.zeros_(module.view_embedding)
            nn.init.zeros_(module.temporal_embedding)
            nn.init.zeros_(module.missing_token)
            table = get_2d_sincos_position_embedding(module.position_embedding.shape[-1], module.grid, module.grid)
            _guarded_copy(module.position_embedding, table[None])
        elif isinstance(module, AltaMaskedDecoder):
            nn.init.normal_(module.mask_token, std=0.02)
            grid = int(math.isqrt(module.position_embedding.shape[1] - 1))
            table = get_2d_sincos_position_embedding(module.position_embedding.shape[-1], grid, grid)
            _guarded_copy(module.position_embedding, table[None])
        elif isinstance(module, AltaMLMHead):
            nn.init.zeros_(module.bias)
        elif isinstance(module, AltaModel):
            for name in ("logit_scale", "logit_scale_local1", "logit_scale_local2", "logit_scale_local3"):
                nn.init.constant_(getattr(module, name), self.config.logit_scale_init_value)

    # -- attention kernel: the towers' modules read their sub-config, which must follow the model's -------------------

    def post_init(self) -> None:
        super().post_init()
        # transformers sets the resolved kernel on the top config only; a sub-config left at None follows it.
        top = getattr(self.config, "_attn_implementation", None)
        self._set_sub_config_attention({k: top for k, sub in self._sub_configs() if sub._attn_implementation is None})

    def set_attn_implementation(self, attn_implementation: str | dict, *args: Any, **kwargs: Any) -> None:
        """`PreTrainedModel.set_attn_implementation`, carried to the towers: their attention modules are not
        `PreTrainedModel`s and follow `config.vision_config` / `config.text_config`. A string applies to every
        sub-config; a dict applies each value to the sub-config it names (`""` is the top config alone)."""
        super().set_attn_implementation(attn_implementation, *args, **kwargs)
        if isinstance(attn_implementation, dict):
            wanted = {k: v for k, v in attn_implementation.items() if k and isinstance(v, str)}
        else:
            wanted = {k: self.config._attn_implementation for k, _ in self._sub_configs()}
        self._set_sub_config_attention(wanted)

    def _sub_configs(self) -> list[tuple[str, Any]]:
        subs = [(k, getattr(self.config, k, None)) for k in getattr(self.config, "sub_configs", None) or {}]
        return [(k, sub) for k, sub in subs if sub is not None]

    def _set_sub_config_attention(self, wanted: dict[str, str | None]) -> None:
        for key, sub in self._sub_configs():
            if key not in wanted:
                continue
            value = wanted[key]
            if value not in (None, "eager", "sdpa"):
                raise ValueError(
                    f"{type(self).__name__}: attn_implementation {value!r} for `{key}` is not supported; use "
                    "'sdpa' (the default) or 'eager'."
                )
            sub._attn_implementation_internal = value

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        """`PreTrainedModel.save_pretrained`, plus the custom-code files, a complete `auto_map` and the ALTA
        pipelines (`custom_pipelines`: zero-shot classification and feature extraction of images, DICOM and studies,
        `pipeline_alta.py`), so the folder loads with `AutoModel`/`AutoModelForPreTraining`/`pipeline(...)` and
        `trust_remote_code=True` where this package is not installed."""
        if _is_alta_config(self.config):
            if type(self.config)._auto_class is None:
                type(self.config).register_for_auto_class("AutoConfig")
            if type(self)._auto_class is None:
                auto = "AutoModelForPreTraining" if isinstance(self, AltaForPreTraining) else "AutoModel"
                type(self).register_for_auto_class(auto)
            self.config.auto_map = {**ALTA_AUTO_MAP, **(getattr(self.config, "auto_map", None) or {})}
            # This relative import is also what makes `save_pretrained` copy pipeline_alta.py beside the weights.
            from .pipeline_alta import ALTA_CUSTOM_PIPELINES

            self.config.custom_pipelines = {
                **ALTA_CUSTOM_PIPELINES,
                **(getattr(self.config, "custom_pipelines", None) or {}),
            }
        return super().save_pretrained(save_directory, *args, **kwargs)

    # -- adapters and the trainable set -------------------------------------------------------------------------

    def alta_adapters(self) -> list[AltaBottleneckAdapter]:
        """Every bottleneck adapter module, found structurally."""
        return [m for m in self.modules() if getattr(m, "_is_alta_adapter", False)]

    def set_adapters_enabled(self, enabled: bool) -> None:
        """Turn all ALTA adapters on or off (off = the frozen backbone alone)."""
        for adapter in self.alta_adapters():
            adapter.enabled = bool(enabled)

    def _alta_group_members(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Parameters of each trainable group (alta_reference.md §4), selected by module type, not by name."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
        seen: set[int] = set()

        def add(group: str, prefix: str, params: Any) -> None:
            for name, param in params:
                if id(param) in seen:
                    continue
                seen.add(id(param))
                groups.setdefault(group, []).append((f"{prefix}{name}" if prefix else name, param))

        for mod_name, module in self.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            if getattr(module, "_is_alta_adapter", False):
                add("adapters", prefix, module.named_parameters())
            elif isinstance(module, AltaProjectionHead):
                add("heads", prefix, module.named_parameters())
            elif isinstance(module, nn.LayerNorm):
                add("norms", prefix, module.named_parameters())
            elif isinstance(module, AltaVisionEmbeddings):
                add("tokens", prefix, [("cls_token", module.cls_token)])
                add(
                    "view_time_embeddings",
                    prefix,
                    [("view_embedding", module.view_embedding), ("temporal_embedding", module.temporal_embedding)],
                )
            elif isinstance(module, AltaMaskedDecoder):
                add("tokens", prefix, [("mask_token", module.mask_token)])
                add(
                    "decoder_embed",
                    prefix,
                    [(f"decoder_embed.{n}", p) for n, p in module.decoder_embed.named_parameters()],
                )
                add(
                    "decoder_pred",
                    prefix,
                    [(f"decoder_pred.{n}", p) for n, p in module.decoder_pred.named_parameters()],
                )
            elif isinstance(module, AltaMLMHead):
                add("mlm_head", prefix, [("bias", module.bias)])
                add(
                    "mlm_head",
                    prefix,
                    [(f"transform.dense.{n}", p) for n, p in module.transform.dense.named_parameters()],
                )
            elif isinstance(module, AltaModel):
                add(
                    "logit_scales",
                    prefix,
                    [
                        (n, getattr(module, n))
                        for n in ("logit_scale", "logit_scale_local1", "logit_scale_local2", "logit_scale_local3")
                    ],
                )
        # Norms inside heads and the MLM transform were claimed above by their owners; in the reference they train
        # either way, so they stay in whichever group saw them first.
        return groups

    def alta_trainable_parameters(self, groups: tuple[str, ...] | None = None) -> dict[str, nn.Parameter]:
        """The ALTA trainable set: name -> parameter for the configured `trainable_groups` (default: the reference's).

        Tied parameters appear once. Used by `freeze_backbone` and by adapter saving.
        """
        groups = tuple(groups) if groups is not None else self._trainable_groups()
        members = self._alta_group_members()
        out: dict[str, nn.Parameter] = {}
        for group in groups:
            for name, param in members.get(group, []):
                out[name] = param
        return out

    def _trainable_groups(self) -> tuple[str, ...]:
        config = self.config
        if _is_alta_config(config):
            return config.trainable_groups
        adapter = getattr(config, "adapter", None)
        return adapter.trainable_groups if adapter is not None else AltaAdapterConfig().trainable_groups

    def freeze_backbone(self, groups: tuple[str, ...] | None = None) -> dict[str, int]:
        """Freeze everything except the ALTA trainable set; return `{"trainable": n, "total": m}` parameter counts."""
        keep = {id(p) for p in self.alta_trainable_parameters(groups).values()}
        for param in self.parameters():
            param.requires_grad_(id(param) in keep)
        return self.num_trainable_parameters()

    def num_trainable_parameters(self) -> dict[str, int]:
        """`{"trainable": ..., "total": ...}` over de-duplicated parameters (tied weights once)."""
        trainable = total = 0
        for param in self.parameters():  # `parameters()` already de-duplicates tied tensors
            total += param.numel()
            if param.requires_grad:
                trainable += param.numel()
        return {"trainable": trainable, "total": total}


def _output_flag(value: bool | None, config: Any, name: str) -> bool:
    """An output switch: the call's value, else the config's (`output_hidden_states`, `output_attentions`,
    `return_dict`), as transformers models resolve them."""
    if value is not None:
        return bool(value)
    return bool(getattr(config, name, name == "return_dict"))


class AltaVisionModel(AltaPreTrainedModel):
    """The vision tower alone (encoder, no projection heads)."""

    config_class = AltaVisionConfig
    base_model_prefix = "alta_vision"
    input_modalities = ("image",)

    def __init__(self, config: AltaVisionConfig) -> None:
        super().__init__(config)
        self.vision_model = AltaVisionTransformer(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.embeddings.patch_embed

    def forward(
        self,
        pixel_values: torch.Tensor,
        view_mask: torch.Tensor | None = None,
        mask_ratio: float = 0.0,
        mask_noise: torch.Tensor | None = None,
        study_pooling: str | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> AltaVisionModelOutput | tuple:
        """Encode images `[B, C, H, W]` or studies `[B, V, C, H, W]` (see `AltaVisionTransformer.forward`).

        Returns:
            [`AltaVisionModelOutput`], or its tuple with `return_dict=False` (also `config.return_dict=False`).
        """
        output = self.vision_model(
            pixel_values,
            view_mask=view_mask,
            mask_ratio=mask_ratio,
            mask_noise=mask_noise,
            study_pooling=study_pooling,
            output_hidden_states=_output_flag(output_hidden_states, self.config, "output_hidden_states"),
            output_attentions=_output_flag(output_attentions, self.config, "output_attentions"),
        )
        return output if _output_flag(return_dict, self.config, "return_dict") else output.to_tuple()


class AltaTextModel(AltaPreTrainedModel):
    """The text tower alone (BERT with adapters, no heads)."""

    config_class = AltaTextConfig
    base_model_prefix = "alta_text"
    main_input_name = "input_ids"
    input_modalities = ("text",)

    def __init__(self, config: AltaTextConfig) -> None:
        super().__init__(config)
        self.text_model = AltaTextTransformer(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> AltaTextModelOutput | tuple:
        """Encode texts `input_ids` `[B, L]` (`attention_mask` 1 = token).

        Returns:
            [`AltaTextModelOutput`], or its tuple with `return_dict=False` (also `config.return_dict=False`).
        """
        output = self.text_model(
            input_ids,
            attention_mask,
            token_type_ids,
            output_hidden_states=_output_flag(output_hidden_states, self.config, "output_hidden_states"),
            output_attentions=_output_flag(output_attentions, self.config, "output_attentions"),
        )
        return output if _output_flag(return_dict, self.config, "return_dict") else output.to_tuple()


class AltaModel(AltaPreTrainedModel):
    """ALTA dual encoder for inference: image and text embeddings in a shared 128-d space, zero-shot logits.

    Example:

    ```python
    >>> from transformers import AutoModel, AutoProcessor
    >>> model = AutoModel.from_pretrained("path/to/alta", trust_remote_code=True)
    >>> processor = AutoProcessor.from_pretrained("path/to/alta", trust_remote_code=True)
    >>> inputs = processor(images=image, text=["pleural effusion", "no finding"], return_tensors="pt")
    >>> probs = model(**inputs).logits_per_image.softmax(dim=-1)
    >>> image_embeds = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output  # [1, 128]
    ```
    """

    main_input_name = "input_ids"
    # Folders saved from AltaForPreTraining also hold the pre-training heads; the dual encoder does not use them.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^mlm_head\.", r"^bert_embed\."]

    def __init__(self, config: AltaConfig) -> None:
        super().__init__(config)
        if not _is_alta_config(config):
            raise TypeError(f"AltaModel needs an AltaConfig; got {type(config).__name__}.")
        vision, text = config.vision_config, config.text_config
        self.vision_model = AltaVisionTransformer(vision)
        self.text_model = AltaTextTransformer(text)
        eps = config.projection_layer_norm_eps
        self.vision_projection = AltaProjectionHead(vision.hidden_size, config.projection_dim, eps)
        self.vision_local_projection = AltaProjectionHead(vision.hidden_size, config.projection_dim, eps)
        self.text_projection = AltaProjectionHead(text.hidden_size, config.projection_dim, eps)
        self.text_local_projection = AltaProjectionHead(text.hidden_size, config.projection_dim, eps)
        init = torch.tensor(config.logit_scale_init_value)
        self.logit_scale = nn.Parameter(init.clone())
        self.logit_scale_local1 = nn.Parameter(init.clone())
        self.logit_scale_local2 = nn.Parameter(init.clone())
        self.logit_scale_local3 = nn.Parameter(init.clone())
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.embeddings.word_embeddings = value

    @torch.no_grad()
    def clamp_logit_scales(self) -> None:
        """Clamp the four log-temperatures to `[0, logit_scale_max]` (call after each optimizer step)."""
        for name in ("logit_scale", "logit_scale_local1", "logit_scale_local2", "logit_scale_local3"):
            getattr(self, name).clamp_(0.0, self.config.logit_scale_max)

    def local_scales(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.logit_scale_local1.exp(), self.logit_scale_local2.exp(), self.logit_scale_local3.exp()

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        view_mask: torch.Tensor | None = None,
        study_pooling: str | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """Image embeddings in the joint space, as transformers 5 models return them (`CLIPModel` included).

        Args:
            pixel_values (`[B, C, H, W]` or `[B, V, C, H, W]`): one current frontal (the reference's evaluation path:
                slot-0 embeddings, its CLS token) or a study (slots pooled; see `AltaVisionTransformer.forward`).
            view_mask (`[B, V]`, *optional*): present views of a study.
            study_pooling (`str`, *optional*): overrides `vision_config.study_pooling` (`"all"` or `"present"`).
            output_attentions, output_hidden_states, return_dict: as in `forward`.

        Returns:
            `BaseModelOutputWithPooling` (a tuple with `return_dict=False`) whose `pooler_output` `[B,
            projection_dim]` is the projected image embedding, **not** normalised; `last_hidden_state`,
            `hidden_states` and `attentions` are the vision tower's.
        """
        vision_out = self.vision_model(
            pixel_values,
            view_mask=view_mask,
            study_pooling=study_pooling,
            output_hidden_states=_output_flag(output_hidden_states, self.config, "output_hidden_states"),
            output_attentions=_output_flag(output_attentions, self.config, "output_attentions"),
        )
        output = BaseModelOutputWithPooling(
            last_hidden_state=vision_out.last_hidden_state,
            pooler_output=self.vision_projection(vision_out.pooler_output),
            hidden_states=vision_out.hidden_states,
            attentions=vision_out.attentions,
        )
        return output if _output_flag(return_dict, self.config, "return_dict") else output.to_tuple()

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """Text embeddings in the joint space, as transformers 5 models return them (`CLIPModel` included).

        Args:
            input_ids, attention_mask, token_type_ids (`[B, L]`): prompts or reports.
            output_attentions, output_hidden_states, return_dict: as in `forward`.

        Returns:
            `BaseModelOutputWithPooling` (a tuple with `return_dict=False`) whose `pooler_output` `[B,
            projection_dim]` is the projected [CLS] embedding, **not** normalised; `last_hidden_state`
            `[B, L, D]`, `hidden_states` and `attentions` are the text tower's.
        """
        text_out = self.text_model(
            input_ids,
            attention_mask,
            token_type_ids,
            output_hidden_states=_output_flag(output_hidden_states, self.config, "output_hidden_states"),
            output_attentions=_output_flag(output_attentions, self.config, "output_attentions"),
        )
        output = BaseModelOutputWithPooling(
            last_hidden_state=text_out.last_hidden_state,
            pooler_output=self.text_projection(text_out.pooler_output),
            hidden_states=text_out.hidden_states,
            attentions=text_out.attentions,
        )
        return output if _output_flag(return_dict, self.config, "return_dict") else output.to_tuple()

    def get_image_patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Local projections of the patch tokens of single images `[B, C, H, W]`: `[B, N, projection_dim]`
        (row-major patch grid), for word-to-patch heatmaps."""
        if pixel_values.dim() != 4:
            raise ValueError(
                f"`pixel_values` must be (batch, channels, height, width); got {tuple(pixel_values.shape)}."
            )
        out = self.vision_model(pixel_values)
        return self.vision_local_projection(out.patch_embeds)

    def get_text_token_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Local projections of every token `[B, L, projection_dim]` (position 0 is [CLS])."""
        out = self.text_model(input_ids, attention_mask, token_type_ids)
        return self.text_local_projection(out.last_hidden_state)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> AltaOutput | tuple:
        """Score every image against every text.

        Args:
            input_ids (`[B_txt, L]`), attention_mask, token_type_ids: texts (prompts or reports).
            pixel_values (`[B_img, C, H, W]` or `[B_img, V, C, H, W]`), view_mask (`[B_img, V]`): images or studies.
            return_loss (`bool`): add the global contrastive loss (needs `B_img == B_txt`, pairs on the diagonal).
            output_attentions, output_hidden_states (`bool`, *optional*): return the towers' attention weights /
                hidden states (inside `vision_model_output` and `text_model_output`); default from the config.
            return_dict (`bool`, *optional*): `False` returns a tuple; default `config.return_dict`.
            kwargs: other keys a pipeline or processor may pass; ignored.

        Returns:
            [`AltaOutput`] with `logits_per_image = exp(logit_scale) * cosine` `[B_img, B_txt]`.
        """
        if input_ids is None or pixel_values is None:
            raise ValueError("AltaModel.forward needs both `input_ids` and `pixel_values`.")
        output_hidden_states = _output_flag(output_hidden_states, self.config, "output_hidden_states")
        output_attentions = _output_flag(output_attentions, self.config, "output_attentions")
        vision_out = self.vision_model(
            pixel_values,
            view_mask=view_mask,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        text_out = self.text_model(
            input_ids,
            attention_mask,
            token_type_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        image_embeds = F.normalize(self.vision_projection(vision_out.pooler_output), dim=-1)
        text_embeds = F.normalize(self.text_projection(text_out.pooler_output), dim=-1)
        scale = self.logit_scale.exp()
        logits_per_image = scale * image_embeds @ text_embeds.t().to(image_embeds.dtype)
        loss = None
        if return_loss:
            if image_embeds.shape[0] != text_embeds.shape[0]:
                raise ValueError(
                    f"`return_loss` needs paired inputs; got {image_embeds.shape[0]} images and "
                    f"{text_embeds.shape[0]} texts."
                )
            loss = alta_contrastive_loss(image_embeds, text_embeds, scale)
        output = AltaOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.t(),
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_out,
            vision_model_output=vision_out,
        )
        return output if _output_flag(return_dict, self.config, "return_dict") else output.to_tuple()


class AltaForPreTraining(AltaPreTrainedModel):
    """ALTA with everything pre-training needs: the MAE decoder, the MLM head, the image-to-text conditioning
    (`bert_embed`), and the four losses (global contrastive, local word-patch contrastive, masked image
    reconstruction of the current frontal, image-conditioned masked report modeling)."""

    _tied_weights_keys = {"mlm_head.decoder.weight": "alta.text_model.embeddings.word_embeddings.weight"}

    def __init__(self, config: AltaConfig) -> None:
        super().__init__(config)
        if not _is_alta_config(config):
            raise TypeError(f"AltaForPreTraining needs an AltaConfig; got {type(config).__name__}.")
        self.alta = AltaModel(config)
        vision, text = config.vision_config, config.text_config
        self.bert_embed = nn.Linear(vision.hidden_size, text.hidden_size)
        self.bert_embed._alta_init = "xavier"
        self.decoder = AltaMaskedDecoder(vision)
        self.mlm_head = AltaMLMHead(text)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.alta.text_model.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.alta.text_model.embeddings.word_embeddings = value

    def get_output_embeddings(self) -> nn.Module:
        return self.mlm_head.decoder

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.mlm_head.decoder = value

    def resize_token_embeddings(self, *args: Any, **kwargs: Any) -> nn.Embedding:
        """`PreTrainedModel.resize_token_embeddings`, plus the MLM head's output bias (a separate `[vocab]` parameter,
        as in the reference): kept for the old tokens, zero for new ones."""
        embeddings = super().resize_token_embeddings(*args, **kwargs)
        old = self.mlm_head.bias
        size = embeddings.weight.shape[0]
        if old.shape[0] != size:
            new = torch.zeros(size, dtype=old.dtype, device=old.device)
            keep = min(size, old.shape[0])
            new[:keep] = old.detach()[:keep]
            self.mlm_head.bias = nn.Parameter(new, requires_grad=old.requires_grad)
        return embeddings

    def clamp_logit_scales(self) -> None:
        self.alta.clamp_logit_scales()

    def _prepare_study(
        self,
        pixel_values: torch.Tensor,
        reconstruction_pixel_values: torch.Tensor | None,
        view_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vision = self.config.vision_config
        if pixel_values.dim() == 4:
            pixel_values = pixel_values[:, None]
        if pixel_values.dim() != 5:
            raise ValueError(
                f"`pixel_values` must be (batch, views, channels, height, width); got {tuple(pixel_values.shape)}."
            )
        batch, views = pixel_values.shape[:2]
        if views > vision.num_slots:
            raise ValueError(f"A study holds at most {vision.num_slots} views; got {views}.")
        if view_mask is not None and tuple(view_mask.shape) != (batch, views):
            raise ValueError(f"`view_mask` must have shape {(batch, views)}; got {tuple(view_mask.shape)}.")
        if reconstruction_pixel_values is not None:
            # The reference resizes the normalised 448 frontal inside the forward; bicubic + antialias matches it.
            frontal = F.interpolate(
                reconstruction_pixel_values.to(pixel_values.dtype),
                size=tuple(pixel_values.shape[-2:]),
                mode="bicubic",
                antialias=True,
                align_corners=False,
            )
            pixel_values = torch.cat([frontal[:, None], pixel_values[:, 1:]], dim=1)
        if views < vision.num_slots:
            pad = pixel_values.new_zeros(batch, vision.num_slots - views, *pixel_values.shape[2:])
            pixel_values = torch.cat([pixel_values, pad], dim=1)
            if view_mask is not None:
                view_mask = torch.cat([view_mask, view_mask.new_zeros(batch, vision.num_slots - views)], dim=1)
        if view_mask is None:
            view_mask = pixel_values.flatten(2).sum(-1) != 0
        return pixel_values, view_mask.to(torch.bool)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mlm_input_ids: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        reconstruction_pixel_values: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        mask_noise: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        return_loss: bool = True,
        return_full_mlm_logits: bool = False,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> AltaForPreTrainingOutput | tuple:
        """One pre-training forward (alta_reference.md §2).

        Args:
            pixel_values (`[B, V, C, H, W]`): the study (`V <= 4`; missing views all-zero or flagged in `view_mask`).
            input_ids, attention_mask, token_type_ids (`[B, L]`): the report.
            mlm_input_ids, mlm_labels (`[B, L]`): the masked report copy and its labels (-100 = not masked).
            reconstruction_pixel_values (`[B, C, 2H, 2W]`): the normalised current frontal at the reconstruction size;
                when given, slot 0 is derived from it and `pixel_values[:, 0]` is ignored.
            view_mask (`[B, V]`, *optional*): present views; default: the reference's frame-sum rule.
            mask_noise (`[B, 4, N]` or `[B*4, N]`, *optional*): patch-masking noise, for reproducible runs.
            mask_ratio (`float`, *optional*): overrides `config.vision_config.mask_ratio`.
            return_loss (`bool`): also compute the two contrastive losses on this batch alone and the weighted sum.
                Training across processes passes False and gathers the returned features (training/losses.py).
            return_full_mlm_logits (`bool`): return `mlm_logits` at every position `[B, L, vocab]` instead of at the
                masked positions only `[M, vocab]` (the default; same loss, the MLM head then runs on `M` rows
                instead of `B*L`).
            kwargs: other keys a collator or trainer may pass; ignored (per-layer outputs come from `AltaModel`
                and the towers, with a warning when asked for here).
        """
        asked = [k for k in ("output_attentions", "output_hidden_states") if kwargs.get(k)]
        if asked:
            logger.warning_once(
                f"AltaForPreTraining returns losses and features, not per-layer outputs: {asked} ignored; use "
                "AltaModel (vision_model_output / text_model_output) or the towers for them."
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if mlm_input_ids is not None and mlm_labels is None:
            raise ValueError("`mlm_input_ids` was given without `mlm_labels`.")
        vision_out, image_embeds, conditioning = self._encode_study(
            pixel_values, reconstruction_pixel_values, view_mask, mask_noise, mask_ratio
        )
        use_mlm = self.config.mlm_loss_weight > 0 and mlm_input_ids is not None
        hidden, text_embeds, text_local = self._encode_reports(
            input_ids, attention_mask, token_type_ids, mlm_input_ids if use_mlm else None, conditioning
        )
        batch = input_ids.shape[0]
        image_local = self.alta.vision_local_projection(vision_out.patch_embeds)
        cap_lens = text_cap_lens(attention_mask)
        reconstruction_loss, reconstruction_logits = self._reconstruct_frontal(vision_out, reconstruction_pixel_values)
        mlm_loss = mlm_logits = mlm_num_tokens = None
        if use_mlm:
            masked = mlm_labels != -100
            if return_full_mlm_logits:
                mlm_logits = self.mlm_head(hidden[batch:])
                mlm_loss = alta_mlm_loss(mlm_logits, mlm_labels)
            else:
                # The head is row-wise, so the rows the loss reads give the same logits as the full pass.
                mlm_logits = self.mlm_head(hidden[batch:][masked])
                mlm_loss = alta_mlm_loss(mlm_logits, mlm_labels[masked])
            mlm_num_tokens = masked.sum()
        scale = self.alta.logit_scale.exp()
        local_scales = torch.stack(self.alta.local_scales())
        contrastive_loss = local_loss = loss = None
        if return_loss:
            contrastive_loss, local_loss, loss = self._weighted_loss(
                image_embeds, text_embeds, image_local, text_local, cap_lens, reconstruction_loss, mlm_loss
            )
        output = AltaForPreTrainingOutput(
            loss=loss,
            contrastive_loss=contrastive_loss,
            local_loss=local_loss,
            reconstruction_loss=reconstruction_loss,
            mlm_loss=mlm_loss,
            mlm_num_tokens=mlm_num_tokens,
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            image_local_embeds=image_local,
            text_local_embeds=text_local,
            cap_lens=cap_lens,
            reconstruction_logits=reconstruction_logits,
            mask=vision_out.mask,
            ids_restore=vision_out.ids_restore,
            mlm_logits=mlm_logits,
            slot_embeds=vision_out.slot_embeds,
            patch_embeds=vision_out.patch_embeds,
            image_conditioning=conditioning,
            logit_scale=scale,
            logit_scale_local=local_scales,
        )
        return output if _output_flag(return_dict, self.config, "return_dict") else output.to_tuple()

    def _encode_study(
        self,
        pixel_values: torch.Tensor,
        reconstruction_pixel_values: torch.Tensor | None,
        view_mask: torch.Tensor | None,
        mask_noise: torch.Tensor | None,
        mask_ratio: float | None,
    ) -> tuple[AltaVisionModelOutput, torch.Tensor, torch.Tensor]:
        """The masked study through the vision tower: `(vision output, normalised image embeddings [B, P], the
        image conditioning of the MLM copy [B, D_text])`."""
        vision = self.config.vision_config
        pixel_values, view_mask = self._prepare_study(pixel_values, reconstruction_pixel_values, view_mask)
        ratio = vision.mask_ratio if mask_ratio is None else mask_ratio
        vision_out = self.alta.vision_model(pixel_values, view_mask=view_mask, mask_ratio=ratio, mask_noise=mask_noise)
        pooled = vision_out.pooler_output
        image_embeds = F.normalize(self.alta.vision_projection(pooled), dim=-1)
        return vision_out, image_embeds, self.bert_embed(pooled)

    def _encode_reports(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        mlm_input_ids: torch.Tensor | None,
        conditioning: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The report, and its masked copy conditioned on the image when given, through one text-tower pass.

        Returns:
            `(hidden [B or 2B, L, D], normalised text embeddings [B, P], local word features [B, L-1, P])`; rows
            `B:` of `hidden` are the masked copy.
        """
        batch = input_ids.shape[0]
        if mlm_input_ids is not None:
            text_ids = torch.cat([input_ids, mlm_input_ids], dim=0)
            text_mask = torch.cat([attention_mask, attention_mask], dim=0)
            text_types = None if token_type_ids is None else torch.cat([token_type_ids, token_type_ids], dim=0)
            cond = torch.cat([torch.zeros_like(conditioning), conditioning], dim=0)
        else:
            text_ids, text_mask, text_types, cond = input_ids, attention_mask, token_type_ids, None
        hidden = self.alta.text_model(text_ids, text_mask, text_types, conditioning=cond).last_hidden_state
        report_hidden = hidden[:batch]
        pooled_text = self.alta.text_model.pool(report_hidden, attention_mask)
        text_embeds = F.normalize(self.alta.text_projection(pooled_text), dim=-1)
        return hidden, text_embeds, self.alta.text_local_projection(report_hidden[:, 1:])

    def _reconstruct_frontal(
        self, vision_out: AltaVisionModelOutput, reconstruction_pixel_values: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """MAE reconstruction of the current frontal's masked patches: `(loss, logits [B, N, p*p*C])`, or
        `(None, None)` when the reconstruction loss is off."""
        vision = self.config.vision_config
        if self.config.reconstruction_loss_weight <= 0:
            return None, None
        if reconstruction_pixel_values is None:
            raise ValueError(
                "The reconstruction loss needs `reconstruction_pixel_values` (the current frontal at "
                f"{vision.reconstruction_image_size}px); pass it or set reconstruction_loss_weight=0."
            )
        if vision_out.mask is None:
            raise ValueError(
                "The reconstruction loss needs masked patches, but the mask ratio is 0: set `mask_ratio` > 0 or "
                "reconstruction_loss_weight=0."
            )
        latent = torch.cat([vision_out.slot_embeds[:, :1], self._slot0_patches(vision_out)], dim=1)
        logits = self.decoder(latent, vision_out.ids_restore)
        loss = alta_reconstruction_loss(
            logits.float(),
            reconstruction_pixel_values.float(),
            vision_out.mask.float(),
            vision.reconstruction_patch_size,
            vision.norm_pix_loss,
        )
        return loss, logits

    def _weighted_loss(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        image_local: torch.Tensor,
        text_local: torch.Tensor,
        cap_lens: torch.Tensor,
        reconstruction_loss: torch.Tensor | None,
        mlm_loss: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """The two contrastive losses on this batch alone and the weighted sum of every active term:
        `(contrastive_loss, local_loss, loss)`."""
        config = self.config
        contrastive_loss = local_loss = None
        terms = []
        if config.contrastive_loss_weight > 0:
            scale = self.alta.logit_scale.exp()
            contrastive_loss = alta_contrastive_loss(image_embeds.float(), text_embeds.float(), scale)
            terms.append(config.contrastive_loss_weight * contrastive_loss)
        if config.local_loss_weight > 0:
            local_loss = alta_local_loss(
                image_local.float(),
                text_local.float(),
                cap_lens,
                *torch.stack(self.alta.local_scales()),
                chunk_size=config.local_loss_chunk_size,
            )
            terms.append(config.local_loss_weight * local_loss)
        if reconstruction_loss is not None:
            terms.append(config.reconstruction_loss_weight * reconstruction_loss)
        if mlm_loss is not None:
            terms.append(config.mlm_loss_weight * mlm_loss)
        if not terms:
            raise ValueError("Every loss weight is zero or its inputs are missing: nothing to train.")
        return contrastive_loss, local_loss, torch.stack(terms).sum()

    def _slot0_patches(self, vision_out: AltaVisionModelOutput) -> torch.Tensor:
        """Kept patch tokens of the current frontal: `[B, n, D]`."""
        hidden = vision_out.last_hidden_state  # [B, V, 1+n, D]
        return hidden[:, 0, 1:]


def unwrap_alta_model(model: nn.Module, to: str = "alta") -> nn.Module:
    """The ALTA model inside whatever training or inference wrapped around it: the one unwrap helper.

    Args:
        model: an ALTA model, possibly inside DDP/FSDP (`.module`), `torch.compile` (`_orig_mod`) or a PEFT
            `PeftModel`; classes loaded as Hub custom code are recognised too.
        to: `"saveable"` strips only DDP/FSDP and `torch.compile` (a `PeftModel` is kept: saving it writes the
            PEFT adapter); `"alta"` also strips PEFT (the `AltaForPreTraining` / `AltaModel` itself); `"dual_encoder"`
            also takes the `AltaModel` out of an `AltaForPreTraining` and checks it has the feature methods.

    Returns:
        the unwrapped module.
    """
    if to not in ("saveable", "alta", "dual_encoder"):
        raise ValueError(f"`to` must be 'saveable', 'alta' or 'dual_encoder'; got {to!r}")
    seen: set[int] = set()
    while id(model) not in seen:
        seen.add(id(model))
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif type(model).__name__ in ("DistributedDataParallel", "DataParallel", "FullyShardedDataParallel"):
            model = model.module
        elif to != "saveable" and callable(getattr(model, "get_base_model", None)):
            model = model.get_base_model()
    if to == "dual_encoder":
        if hasattr(model, "alta") and hasattr(model.alta, "get_image_features"):
            model = model.alta
        for name in ("get_image_features", "get_text_features", "get_image_patch_features", "get_text_token_features"):
            if not callable(getattr(model, name, None)):
                raise TypeError(
                    f"expected an ALTA model (AltaModel or AltaForPreTraining); {type(model).__name__} has no {name}()"
                )
    return model


__all__ = [
    "AltaForPreTraining",
    "AltaForPreTrainingOutput",
    "AltaModel",
    "AltaOutput",
    "AltaPreTrainedModel",
    "AltaTextModel",
    "AltaTextModelOutput",
    "AltaVisionModel",
    "AltaVisionModelOutput",
    "alta_contrastive_loss",
    "alta_local_loss",
    "alta_local_similarity",
    "alta_mlm_loss",
    "alta_reconstruction_loss",
    "get_2d_sincos_position_embedding",
    "patchify",
    "text_cap_lens",
    "unpatchify",
    "unwrap_alta_model",
]
