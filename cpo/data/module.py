"""The Lightning data module: tokenization, held-out split, batching and sharding of preference pairs."""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from cpo.data.batching import Collator, PairDataset, WindowBatchSampler
from cpo.data.encoding import EncodedPair, PairEncoder
from cpo.data.records import PreferenceExample
from cpo.io import DataError
from cpo.mt.prompt import PromptTooShort
from cpo.runs.data import ResumableDataLoader, loop_position


class PreferenceDataModule(L.LightningDataModule):
    """Owns tokenization, batching and distribution of train/val preference pairs."""

    def __init__(
        self,
        train: list[PreferenceExample],
        val: list[PreferenceExample],
        tokenizer,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        max_prompt_length: int = 256,
        max_length: int = 512,
        prompt_truncation: str = "left",
        nll_target: str = "chosen",
        group_by_length: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        prompt_format=None,
    ):
        super().__init__()
        if nll_target == "reference" and any(e.reference is None for e in train):
            missing = sum(e.reference is None for e in train)
            raise DataError(f"loss.nll_target=reference needs a 'reference' field, "
                            f"but {missing} training examples have none")
        self.train_examples, self.val_examples = train, val
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        # The run's prompt format (cpo.mt.prompt; None: ALMA's), the same object generation receives.
        self.encoder = PairEncoder(tokenizer, max_prompt_length, max_length, prompt_truncation, prompt_format)
        self.nll_target = nll_target
        self.group_by_length = group_by_length
        self.seed = seed
        self.num_workers = num_workers
        with_ref = nll_target == "reference"
        self.train_pairs = self._encode(train, with_ref)
        self.val_pairs = self._encode(val, with_ref and all(e.reference for e in val))
        self.ref_logps: dict[str, dict[int, tuple[float, float]]] | None = None
        if not train:
            raise DataError("the data gave no training pair (every source held out for validation?)")
        if not self.train_pairs:
            raise DataError(f"no training pair is left after tokenization (max_length={max_length}): "
                            f"{dict(self.encoder.counts)}")
        self.collator = Collator(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id, nll_target
        )

    def _encode(self, examples: list[PreferenceExample], with_ref: bool) -> list[EncodedPair]:
        out = []
        for i, ex in enumerate(examples):
            try:
                enc = self.encoder.encode(i, ex, with_reference=with_ref)
            except PromptTooShort as e:
                raise DataError(f"data.max_prompt_length={self.encoder.max_prompt_length} is too short: {e}") from None
            if enc is not None:
                out.append(enc)
        return out

    @property
    def drop_counts(self) -> dict[str, int]:
        return dict(self.encoder.counts)

    def _nll_len(self, p: EncodedPair) -> int:
        return len(p.reference_ids if self.nll_target == "reference" and p.reference_ids else p.chosen_ids)

    def _loader(self, pairs: list[EncodedPair], split: str, train: bool) -> DataLoader:
        world, rank, accumulate = 1, 0, 1
        if self.trainer is not None:
            world, rank = self.trainer.world_size, self.trainer.global_rank
            if train:
                accumulate = self.trainer.accumulate_grad_batches
        sampler = WindowBatchSampler(
            [self._nll_len(p) for p in pairs],
            [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs],
            self.batch_size if train else self.eval_batch_size,
            accumulate=accumulate,
            world_size=world,
            rank=rank,
            shuffle=train,
            seed=self.seed,
            drop_last=train and len(pairs) >= self.batch_size * world,
            group_by_length=self.group_by_length,
        )
        refs = self.ref_logps.get(split) if self.ref_logps else None
        if not train:
            return DataLoader(PairDataset(pairs, refs), batch_sampler=sampler, collate_fn=self.collator,
                              num_workers=self.num_workers, generator=self._generator())
        # Resumable mid-epoch (exactly, from any step-boundary checkpoint) and reshuffled every epoch.
        return ResumableDataLoader(PairDataset(pairs, refs), sampler, position=self._position,
                                   collate_fn=self.collator, num_workers=self.num_workers, generator=self._generator())

    def _generator(self) -> torch.Generator:
        # A loader draws its workers' base seed from this when it starts an epoch, not from the global
        # generator, whose stream (dropout masks) is then the same in a run and its resume (cpo.runs.rng).
        return torch.Generator().manual_seed(self.seed)

    def micro_batches_per_epoch(self, world_size: int) -> int:
        """What ``len(train_dataloader())`` will be on ``world_size`` ranks, without building the loader."""
        n, step = len(self.train_pairs), self.batch_size * world_size
        return n // step if n >= step else 1

    def _position(self) -> tuple[int, int]:
        """(epoch, batches trained on in it) as the fit loop counts them; (0, 0) outside a Trainer."""
        return loop_position(self.trainer) if self.trainer is not None else (0, 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_pairs, "train", train=True)

    def heldout_dataloader(self) -> DataLoader:
        """All validation pairs on this process, unsharded (the before/after table runs on rank 0 alone)."""
        return DataLoader(PairDataset(self.val_pairs), batch_size=self.eval_batch_size, collate_fn=self.collator)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_pairs, "val", train=False) if self.val_pairs else []
