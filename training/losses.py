"""ALTA's pre-training loss across processes: features gathered with gradient, the model's loss primitives.

The model is called with `return_loss=False`; it returns per-process features and the two losses that need no
negatives (reconstruction, MLM). This module gathers the image/text embeddings and the local features of every
process with a differentiable all-gather, so the global and local contrastive losses see every process's pairs
as negatives (as the reference does), while `accelerator.gather` would drop the gradient. In one process it equals
`AltaForPreTraining(..., return_loss=True)` exactly.

Per-process batch sizes may differ (a process that dropped an unreadable study): rows are padded to the largest
size before the gather and the padding is removed after it, so every process scores the same global batch. So are
per-process report lengths (each batch is padded to its longest report): the word axis of the local features is
padded to the longest on any process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from modeling_alta.modeling_alta import AltaForPreTrainingOutput, alta_contrastive_loss, alta_local_loss

from .distributed import gather_with_grad, pad_to_global_max, world_info


def _gather_rows(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Gather `x` `[n_r, ...]` from every rank (sizes `sizes`) into `[sum(sizes), ...]`, keeping the gradient."""
    if len(sizes) == 1:
        # One process: `x` itself, so the losses see the same tensor object and score the batch once.
        return x
    largest = max(sizes)
    if x.shape[0] < largest:
        pad = x.new_zeros(largest - x.shape[0], *x.shape[1:])
        x = torch.cat([x, pad], dim=0)
    gathered = gather_with_grad(x)
    parts = [gathered[r * largest : r * largest + n] for r, n in enumerate(sizes)]
    return torch.cat(parts, dim=0)


def _all_sizes(n: int, device: torch.device) -> list[int]:
    info = world_info()
    if info.world_size == 1:
        return [n]
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(info.world_size)]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    return [int(s.item()) for s in sizes]


class AltaPretrainingLoss(torch.nn.Module):
    """Weighted sum of the four ALTA losses over the global batch.

    Args:
        contrastive_weight, local_weight, reconstruction_weight, mlm_weight: the loss weights (1:1:1:1).
        local_chunk_size: texts per chunk in the local loss.

    `forward(outputs)` takes an [`AltaForPreTrainingOutput`] computed with `return_loss=False` and returns a dict
    with `loss` (what to back-propagate on this process; DDP's gradient averaging then gives the gradient of the
    global-batch loss) and the detached loss terms `contrastive_loss`, `local_loss`, `reconstruction_loss`,
    `mlm_loss` and their weighted sum `total_loss` (each the global-batch value, identical on every process).
    """

    def __init__(
        self,
        contrastive_weight: float = 1.0,
        local_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
        mlm_weight: float = 1.0,
        local_chunk_size: int = 32,
    ) -> None:
        super().__init__()
        self.contrastive_weight = contrastive_weight
        self.local_weight = local_weight
        self.reconstruction_weight = reconstruction_weight
        self.mlm_weight = mlm_weight
        self.local_chunk_size = local_chunk_size

    @classmethod
    def from_config(cls, config) -> AltaPretrainingLoss:
        return cls(
            config.contrastive_loss_weight,
            config.local_loss_weight,
            config.reconstruction_loss_weight,
            config.mlm_loss_weight,
            config.local_loss_chunk_size,
        )

    def forward(self, outputs: AltaForPreTrainingOutput) -> dict[str, torch.Tensor]:
        info = world_info()
        image = outputs.image_embeds.float()
        text = outputs.text_embeds.float()
        n = image.shape[0]
        sizes = _all_sizes(n, image.device)
        offset = sum(sizes[: info.rank])
        terms: dict[str, torch.Tensor] = {}
        total = image.new_zeros(())
        if self.contrastive_weight > 0:
            all_image = _gather_rows(image, sizes)
            all_text = _gather_rows(text, sizes)
            local = alta_contrastive_loss(
                image, text, outputs.logit_scale, all_image_embeds=all_image, all_text_embeds=all_text, offset=offset
            )
            total = total + self.contrastive_weight * self._rescale(local, n, sizes)
            terms["contrastive_loss"] = local
        if self.local_weight > 0:
            image_local = outputs.image_local_embeds.float()
            # Each process pads its batch to its own longest report: the word axis is padded to the longest of all
            # processes before the gather (words past `cap_lens` are masked, so the loss does not change).
            text_local = pad_to_global_max(outputs.text_local_embeds.float(), dim=1)
            cap_lens = outputs.cap_lens
            s1, s2, s3 = outputs.logit_scale_local
            local = alta_local_loss(
                image_local,
                text_local,
                cap_lens,
                s1,
                s2,
                s3,
                all_image_local=_gather_rows(image_local, sizes),
                all_text_local=_gather_rows(text_local, sizes),
                all_cap_lens=_gather_rows(cap_lens, sizes),
                offset=offset,
                chunk_size=self.local_chunk_size,
            )
            total = total + self.local_weight * self._rescale(local, n, sizes)
            terms["local_loss"] = local
        if self.reconstruction_weight > 0 and outputs.reconstruction_loss is not None:
            # Every study has the same number of masked patches, so a study-weighted mean is the global mean.
            recon = outputs.reconstruction_loss
            total = total + self.reconstruction_weight * self._rescale(recon, n, sizes)
            terms["reconstruction_loss"] = recon
        if self.mlm_weight > 0 and outputs.mlm_loss is not None:
            count = outputs.mlm_num_tokens.to(image.device).float()
            global_count = count.clone()
            if info.world_size > 1:
                dist.all_reduce(global_count)
            # sum over this process's masked tokens / all masked tokens, times the world size that DDP divides by
            mlm = outputs.mlm_loss * count / global_count.clamp(min=1.0) * info.world_size
            total = total + self.mlm_weight * mlm
            terms["mlm_loss"] = mlm
        reported = {k: self._global_mean(v.detach(), n, sizes, k == "mlm_loss") for k, v in terms.items()}
        weights = {
            "contrastive_loss": self.contrastive_weight,
            "local_loss": self.local_weight,
            "reconstruction_loss": self.reconstruction_weight,
            "mlm_loss": self.mlm_weight,
        }
        reported["total_loss"] = sum(weights[k] * v for k, v in reported.items())
        return {"loss": total, **reported}

    @staticmethod
    def _rescale(loss: torch.Tensor, n: int, sizes: list[int]) -> torch.Tensor:
        """A per-process mean over `n` rows, reweighted so that DDP's average over processes is the global mean."""
        if len(sizes) == 1:
            return loss
        return loss * n * len(sizes) / sum(sizes)

    @staticmethod
    def _global_mean(value: torch.Tensor, n: int, sizes: list[int], already_scaled: bool) -> torch.Tensor:
        if len(sizes) == 1:
            return value
        weighted = value.clone() if already_scaled else value * n * len(sizes) / sum(sizes)
        dist.all_reduce(weighted)
        return weighted / len(sizes)
