"""Batches: accumulation windows that know their totals across ranks, and left/right padding.

``WindowBatchSampler`` forms micro-batches and tells each one the size of its whole accumulation
window (so the loss is normalised exactly as one large batch would be); ``Collator`` pads prompts
on the left and completions on the right (see cpo/train/logprobs.py for why).
"""
from __future__ import annotations

import math
import random
from typing import Any, Iterator, NamedTuple, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from cpo.data.encoding import EncodedPair


class WindowIndex(NamedTuple):
    """An example index plus the totals of its accumulation window across all ranks."""

    index: int
    window_pairs: int
    window_tokens: int


class PairDataset(Dataset):
    def __init__(self, pairs: list[EncodedPair], ref_logps: dict[int, tuple[float, float]] | None = None):
        self.pairs = pairs
        self.ref_logps = ref_logps

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):
        window = None
        if isinstance(i, WindowIndex):
            window, i = i, i.index
        item: dict[str, Any] = {"pair": self.pairs[i]}
        if window is not None:
            item["window"] = (window.window_pairs, window.window_tokens)
        if self.ref_logps is not None:
            item["ref"] = self.ref_logps[self.pairs[i].index]
        return item


class WindowBatchSampler(Sampler):
    """Micro-batches for one rank, each tagged with its accumulation window's pair and token totals.

    Global step k takes ``batch_size * world_size`` examples; rank r gets the r-th slice. A window
    is ``accumulate`` consecutive global steps. Knowing the whole window's token count up front
    lets the NLL term be a token mean over the whole effective batch (paper eq. 4's constraint)
    rather than a mean of micro-batch means. With ``group_by_length``, examples of similar length
    are batched together (less padding) and the batches are then shuffled.
    """

    def __init__(
        self,
        nll_lengths: Sequence[int],
        total_lengths: Sequence[int],
        batch_size: int,
        accumulate: int = 1,
        world_size: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        group_by_length: bool = False,
    ):
        self.nll_lengths = list(nll_lengths)
        self.total_lengths = list(total_lengths)
        self.batch_size, self.accumulate = batch_size, max(1, accumulate)
        self.world_size, self.rank = world_size, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.group_by_length = group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[list[int]]:
        n = len(self.nll_lengths)
        order = list(range(n))
        rng = random.Random(self.seed + self.epoch)
        if self.shuffle:
            rng.shuffle(order)
        step = self.batch_size * self.world_size
        if self.group_by_length:
            # Sort within chunks of 50 global batches: similar lengths share a batch, order stays random.
            chunk = step * 50
            order = [
                i for s in range(0, n, chunk) for i in sorted(order[s : s + chunk], key=lambda j: self.total_lengths[j])
            ]
        batches = [order[s : s + step] for s in range(0, n, step)]
        if batches and len(batches[-1]) < step and self.drop_last:
            batches.pop()
        if self.group_by_length and self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[WindowIndex]]:
        batches = self._global_batches()
        for w in range(0, len(batches), self.accumulate):
            window = batches[w : w + self.accumulate]
            pairs = sum(len(b) for b in window)
            tokens = sum(self.nll_lengths[i] for b in window for i in b)
            for b in window:
                per_rank = math.ceil(len(b) / self.world_size)
                mine = b[self.rank * per_rank : (self.rank + 1) * per_rank]
                if mine:
                    yield [WindowIndex(i, pairs, tokens) for i in mine]

    def __len__(self) -> int:
        n = len(self.nll_lengths)
        step = self.batch_size * self.world_size
        return n // step if self.drop_last else math.ceil(n / step)


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s) :] = torch.tensor(s)
        mask[r, width - len(s) :] = 1
    return ids, mask


def _right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    return ids, mask


class Collator:
    """Pads a list of dataset items into the batch dict the LightningModule consumes."""

    def __init__(self, pad_id: int, nll_target: str = "chosen"):
        self.pad_id = pad_id
        self.nll_target = nll_target

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        pairs: list[EncodedPair] = [it["pair"] for it in items]
        batch: dict[str, torch.Tensor] = {"index": torch.tensor([p.index for p in pairs])}
        batch["prompt_ids"], batch["prompt_mask"] = _left_pad([p.prompt_ids for p in pairs], self.pad_id)
        batch["chosen_ids"], batch["chosen_mask"] = _right_pad([p.chosen_ids for p in pairs], self.pad_id)
        batch["rejected_ids"], batch["rejected_mask"] = _right_pad([p.rejected_ids for p in pairs], self.pad_id)
        if all(p.reference_ids is not None for p in pairs):
            batch["reference_ids"], batch["reference_mask"] = _right_pad([p.reference_ids for p in pairs], self.pad_id)
        nll_key = "reference_mask" if self.nll_target == "reference" else "chosen_mask"
        if "window" in items[0]:
            pairs_w, tokens_w = items[0]["window"]
        else:  # evaluation batches: the batch is its own window
            pairs_w, tokens_w = len(pairs), int(batch[nll_key].sum()) if nll_key in batch else 0
        batch["window_pairs"] = torch.tensor(float(pairs_w))
        batch["window_tokens"] = torch.tensor(float(tokens_w))
        if "ref" in items[0]:
            ref = torch.tensor([it["ref"] for it in items], dtype=torch.float32)
            batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ref[:, 0], ref[:, 1]
        return batch

