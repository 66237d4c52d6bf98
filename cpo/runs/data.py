"""A training DataLoader that continues an interrupted epoch where it stopped.

With checkpoints during an epoch, Lightning restores the loop's counters but restarts a plain
DataLoader from the epoch's first batch ("You're resuming from a checkpoint that ended before the
epoch ended and your dataloader is not resumable"): the resumed run trains on the first batches
again and never sees the last ones, and the result differs from the uninterrupted run.

Lightning also never calls ``set_epoch`` on a batch sampler: ``_set_sampler_epoch`` looks at
``loader.sampler`` and ``loader.batch_sampler.sampler`` only, so a batch sampler that reshuffles
per epoch (cpo.data's ``WindowBatchSampler``) repeats the first epoch's order in every epoch.

Lightning saves and restores the state of a training DataLoader that has ``state_dict`` and
``load_state_dict``, restoring it before the iterator is created. ``ResumableDataLoader`` records
the position as the fit loop counts it (not as the iterator does: the fetcher and worker processes
read ahead), sets the batch sampler's epoch from the fit loop at every pass, and on the first pass
after a restore skips the batches already trained on, at the batch-sampler level, so skipped
batches are never loaded or collated.
"""
from __future__ import annotations

from itertools import islice
from typing import Any, Callable, Iterator

from torch.utils.data import DataLoader, Sampler


def loop_position(trainer) -> tuple[int, int]:
    """(epoch, batches of it trained on) as the fit loop counts them when a checkpoint is saved.

    ``processed`` counts the batch whose ``on_train_batch_end`` is saving (it is ``completed`` only
    after the hooks), and equals ``completed`` when Lightning saves after a batch for SIGTERM.
    """
    fit_loop = trainer.fit_loop
    return fit_loop.epoch_progress.current.processed, fit_loop.epoch_loop.batch_progress.current.processed


class ResumableBatchSampler(Sampler):
    """A batch sampler whose passes start at a given epoch, skipping ahead once after a restore."""

    def __init__(self, batch_sampler):
        self.batch_sampler = batch_sampler
        self.epoch = 0
        self._skip = 0
        self._restored: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """The position a checkpoint recorded; the next pass starts there."""
        if batches_done >= len(self):  # the checkpoint closed its epoch: the next one starts from its beginning
            epoch, batches_done = epoch + 1, 0
        self._restored = (epoch, batches_done)

    def start_pass(self, epoch: int) -> None:
        """Before each pass: the fit loop's epoch, or (once) the restored position the loop has not caught up with."""
        skip = 0
        if self._restored is not None:
            (epoch, skip), self._restored = self._restored, None
        self.set_epoch(epoch)
        self._skip = skip

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        return islice(iter(self.batch_sampler), skip, None)

    def __len__(self) -> int:
        return len(self.batch_sampler)


class ResumableDataLoader(DataLoader):
    """``DataLoader(dataset, batch_sampler=..., **kwargs)`` whose position is saved in every Lightning checkpoint.

    ``position`` returns (epoch, batches trained on in it); pass ``lambda: loop_position(trainer)``
    (a LightningDataModule has ``self.trainer`` when ``train_dataloader`` is called). ``len()`` stays
    the full epoch's, as Lightning's restored counters expect.
    """

    def __init__(self, dataset, batch_sampler, position: Callable[[], tuple[int, int]], **kwargs):
        super().__init__(dataset, batch_sampler=ResumableBatchSampler(batch_sampler), **kwargs)
        self._position = position

    def __iter__(self):
        # Lightning creates each epoch's iterator after the fit loop has counted the epoch it starts.
        self.batch_sampler.start_pass(self._position()[0])
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        epoch, done = self._position()
        return {"epoch": int(epoch), "batches_done": int(done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.resume_at(int(state["epoch"]), int(state["batches_done"]))
