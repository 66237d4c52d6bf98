"""The random generators' state in every checkpoint, so that a resume draws what the uninterrupted run drew.

With dropout off (the default, as in ALMA-R) training consumes no randomness after the model is built
and a resume is exact without this. With ``model.disable_dropout=false`` every training forward draws
dropout masks from the global generators; a resumed run that started from a fresh seed would draw other
masks from the checkpointed step on. The state is taken when the checkpoint is written (at the end of an
optimizer step) and put back just before the next training batch, not when the checkpoint is loaded:
between the two, a resuming run does things the uninterrupted one did not (a sanity validation, building
its loaders), and none of them may shift the stream. Validation runs in eval mode and the loaders draw
their seeds from their own generators (cpo.data.module), so from one training batch to the next the
uninterrupted run consumes the global generators only in the training forwards as well.

Under DDP every rank is seeded alike (``seed_everything``) and consumes alike, so rank 0's state, the one
a checkpoint holds, is every rank's.
"""
from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch

RNG_KEY = "cpo_rng_state"


def capture() -> dict[str, Any]:
    """Plain containers and tensors only: Lightning reads checkpoints with ``torch.load(weights_only=True)``."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"python": [version, list(internal), gauss_next], "torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class RandomState(L.Callback):
    """Saves the generators with each checkpoint; a resumed run gets them back at its first training batch."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "RandomState"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_KEY] = capture()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._pending = checkpoint.get(RNG_KEY)  # None in a checkpoint written before this existed

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending is not None:
            restore(self._pending)
            self._pending = None
