"""The training data of `training/align.py`: the study dataset, the global batch sampler and the DataLoader."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
    are exactly the one-process batch of `batch_size * world_size` studies. Drops the last incomplete batch.

    With `lengths` (one number per study, e.g. its report's token count) the global batches are grouped by length:
    the epoch's shuffled order is cut into groups of `group_batches` global batches, each group is sorted by length
    (longest first, ties in shuffled order) and cut into global batches, and the global batches of the epoch are
    shuffled again. A batch padded to its longest report then carries little padding. Everything is drawn from
    `(seed, epoch)` alone and sharded after grouping, so the batches do not depend on the number of processes or
    DataLoader workers, and `set_epoch(epoch, start_batch)` resumes exactly.

    With `with_epoch=True` each key is ``(epoch, index)`` instead of ``index`` (for `IndexedStudies`), so that the
    epoch reaches the collator in DataLoader workers that persist across epochs.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        world_size: int,
        rank: int,
        seed: int,
        lengths: Sequence[int] | None = None,
        group_batches: int = 64,
        with_epoch: bool = False,
    ) -> None:
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
        if lengths is not None and len(lengths) != num_samples:
            raise ValueError(f"got {len(lengths)} lengths for {num_samples} studies")
        if group_batches < 1:
            raise ValueError(f"group_batches must be >= 1; got {group_batches}")
        self.lengths = None if lengths is None else [int(n) for n in lengths]
        self.group_batches = int(group_batches)
        self.with_epoch = bool(with_epoch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        return self.num_samples // self.global_batch - self.start_batch

    def global_batches(self) -> list[list[int]]:
        """The epoch's global batches (every process's studies of each step, in rank order)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        size, count = self.global_batch, self.num_samples // self.global_batch
        if self.lengths is None:
            return [order[b * size : (b + 1) * size] for b in range(count)]
        lengths, group = self.lengths, size * self.group_batches
        batches = []
        for start in range(0, self.num_samples, group):
            members = sorted(order[start : start + group], key=lambda i: -lengths[i])  # stable
            batches += [members[k : k + size] for k in range(0, len(members) - size + 1, size)]
        # Only the last group can leave studies out (its shortest, fewer than a batch), so there are `count`
        # batches; shuffle them so that the lengths do not trend through the epoch.
        return [batches[i] for i in torch.randperm(count, generator=generator).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches()[self.start_batch :]:
            mine = batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            yield [(self.epoch, index) for index in mine] if self.with_epoch else mine


def report_lengths(dataset, tokenizer, max_length: int, chunk: int = 4096) -> list[int]:
    """Token count of every study's report (special tokens included, at most `max_length`): what the length-grouped
    sampler groups by. Reads only the `report` column."""
    if "report" not in getattr(dataset, "column_names", ()):
        raise ValueError(
            f"--group_by_length needs a 'report' column in the training data; it has {dataset.column_names}"
        )
    from modeling_alta.processing_alta import encode_texts

    reports = list(dataset["report"])
    lengths: list[int] = []
    for start in range(0, len(reports), chunk):
        texts = [r if isinstance(r, str) else "" for r in reports[start : start + chunk]]
        # The collator's tokenisation path; truncations are collected here and reported when the batches are built.
        ids = encode_texts(tokenizer, texts, max_length, padding=False, allow_empty=True, truncated=[])["input_ids"]
        lengths += [len(x) for x in ids]
    return lengths


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

    lengths = None
    if args.group_by_length:  # before the study transform is installed: only the report column is read
        lengths = report_lengths(dataset, processor.tokenizer, data_args.max_length)
    studies = IndexedStudies(dataset, cache_mb=data_args.cache_decoded_studies_mb)
    sampler = GlobalBatchSampler(
        len(studies),
        args.per_device_train_batch_size,
        accelerator.num_processes,
        accelerator.process_index,
        args.seed,
        lengths=lengths,
        with_epoch=True,  # the keys carry the epoch to the collator in a persistent worker
    )
    collator = AltaPretrainingCollator(
        processor,
        mlm_probability=data_args.mlm_probability,
        max_length=data_args.max_length,
        seed=args.seed,
        augment=data_args.augment,
        shuffle_reports=data_args.shuffle_reports,
        mask_noise_shape=(vision_config.num_slots, vision_config.num_patches),
        padding="max_length" if data_args.pad_to_max_length else "longest",
        mlm_always_mask_ids=always_mask_ids(processor.tokenizer, data_args.mlm_always_mask_words),
    )
    loader = DataLoader(
        studies,
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=data_args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG untouched
        # A worker forked afresh each epoch makes the training process copy every page it writes afterwards
        # (copy-on-write: the model, its gradients and optimizer state): 1.1 s on the first step of each epoch
        # at the demo size, against 0.3 s for a step (benchmarks/RESULTS.md §12). The workers are forked once.
        persistent_workers=data_args.dataloader_num_workers > 0,
    )
    return loader, sampler, collator


__all__ = ["GlobalBatchSampler", "always_mask_ids", "build_dataloader", "load_train_dataset", "report_lengths"]
