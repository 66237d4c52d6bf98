"""The run-folder library: what a training run does with its folder so that it never reports a wrong result.

- ``fingerprint``: what changes a result (``fingerprint``, ``config_diff``);
- ``folder``: skip/resume/fresh (``RunFolder.decide``), ``start``, ``finish``, ``discard_outputs``;
- ``lock``: one writer per folder (``FolderLock``, taken by ``RunFolder.acquire``);
- ``checkpoints``: atomic ``last.ckpt`` every N steps / M minutes, at the end and on SIGTERM; ``check_checkpoint``;
- ``logs``: ``ResumableCSVLogger``, a metrics history that survives a resume;
- ``data``: ``ResumableDataLoader``, so that a mid-epoch resume trains on exactly the batches it would have;
- ``rng``: ``RandomState``, the random generators in every checkpoint (dropout masks after a resume);
- ``errors``: ``FolderBusy``, ``StaleRun``, ``CorruptCheckpoint`` (ConfigErrors) and ``RunInterrupted`` (an exit).

Names are imported on first use: ``from cpo.runs import RunInterrupted`` in an app's error handling
does not load Lightning (about 4 s), which only the checkpoint, log and data modules need.
"""
from __future__ import annotations

import importlib

# Light modules, imported now; ``fingerprint`` must be: the function shares its name with its module, and a
# lazily imported submodule would be bound to the package attribute in its place.
from cpo.runs.errors import CorruptCheckpoint, FolderBusy, RunInterrupted, StaleRun  # noqa: F401
from cpo.runs.fingerprint import (  # noqa: F401
    NEUTRAL_KEYS, canonical_config, config_diff, describe_diff, fingerprint,
)

_WHERE = {
    "AtomicCheckpointIO": "checkpoints", "LastCheckpoint": "checkpoints", "check_checkpoint": "checkpoints",
    "checkpoint_callback": "checkpoints",
    "ResumableBatchSampler": "data", "ResumableDataLoader": "data", "loop_position": "data",
    "RandomState": "rng",
    "Decision": "folder", "FolderState": "folder", "RunFolder": "folder", "decide_run": "folder",
    "read_state": "folder", "FolderLock": "lock",
    "ResumableCSVLogger": "logs", "last_logged": "logs", "read_metrics": "logs",
}
__all__ = sorted([*_WHERE, "CorruptCheckpoint", "FolderBusy", "RunInterrupted", "StaleRun", "NEUTRAL_KEYS",
                  "canonical_config", "config_diff", "describe_diff", "fingerprint"])


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'cpo.runs' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cpo.runs.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return __all__
