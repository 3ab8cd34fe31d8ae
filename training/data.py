"""The training data of `training/align.py`: the study dataset, the global batch sampler and the DataLoader."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from .arguments import AlignArguments, DataArguments


def load_train_dataset(data_args: DataArguments):
    """The training studies: a `datasets` folder or Hub id (`--dataset_path`) or the reference's train.csv."""
    from processing.datasets import dataset_from_reference_csv, load_study_dataset

    if data_args.dataset_path:
        dataset = load_study_dataset(data_args.dataset_path, split=data_args.dataset_split)
    elif data_args.train_csv:
        dataset = dataset_from_reference_csv(
            data_args.train_csv,
            image_root=data_args.image_root,
            allow_absolute_paths=data_args.allow_absolute_image_paths,
        )
    else:
        raise ValueError("Give training data: --dataset_path (datasets folder / Hub id) or --train_csv.")
    if data_args.max_train_samples is not None:
        dataset = dataset.select(range(min(data_args.max_train_samples, len(dataset))))
    return dataset


class GlobalBatchSampler(Sampler[list[int]]):
    """Per-epoch shuffled batches, sharded so that the processes' batches of one step, concatenated in rank order,
    are exactly the one-process batch of `batch_size * world_size` studies. Drops the last incomplete batch."""

    def __init__(self, num_samples: int, batch_size: int, world_size: int, rank: int, seed: int) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0
        self.global_batch = batch_size * world_size
        if num_samples < self.global_batch:
            raise ValueError(
                f"The dataset has {num_samples} studies, fewer than one global batch "
                f"({batch_size} per process x {world_size} processes)."
            )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        return self.num_samples // self.global_batch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        for b in range(self.start_batch, self.num_samples // self.global_batch):
            start = b * self.global_batch + self.rank * self.batch_size
            yield order[start : start + self.batch_size]


def always_mask_ids(tokenizer, words: str | None) -> list[int]:
    """The token ids of `--mlm_always_mask_words` (comma-separated); each word must be one token of `tokenizer`."""
    if not words:
        return []
    ids = []
    for word in (w.strip() for w in words.split(",")):
        if not word:
            continue
        pieces = tokenizer.tokenize(word)
        if len(pieces) != 1 or tokenizer.convert_tokens_to_ids(pieces[0]) == tokenizer.unk_token_id:
            raise ValueError(
                f"--mlm_always_mask_words: {word!r} is not one token of the tokenizer (it tokenises as {pieces})"
            )
        ids.append(tokenizer.convert_tokens_to_ids(pieces[0]))
    return sorted(set(ids))


def build_dataloader(
    dataset, processor, vision_config, data_args: DataArguments, args: AlignArguments, accelerator
) -> tuple[DataLoader, GlobalBatchSampler, Any]:
    """The DataLoader of one process: indexed studies, the global batch sampler and the pretraining collator.

    Returns:
        `(loader, sampler, collator)`; call `sampler.set_epoch` and `collator.set_epoch` at each epoch.
    """
    from processing.collate import AltaPretrainingCollator
    from processing.datasets import IndexedStudies

    studies = IndexedStudies(dataset)
    sampler = GlobalBatchSampler(
        len(studies), args.per_device_train_batch_size, accelerator.num_processes, accelerator.process_index, args.seed
    )
    collator = AltaPretrainingCollator(
        processor,
        mlm_probability=data_args.mlm_probability,
        max_length=data_args.max_length,
        seed=args.seed,
        augment=data_args.augment,
        shuffle_reports=data_args.shuffle_reports,
        mask_noise_shape=(vision_config.num_slots, vision_config.num_patches),
        mlm_always_mask_ids=always_mask_ids(processor.tokenizer, data_args.mlm_always_mask_words),
    )
    loader = DataLoader(
        studies,
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=data_args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG untouched
    )
    return loader, sampler, collator


__all__ = ["GlobalBatchSampler", "always_mask_ids", "build_dataloader", "load_train_dataset"]
