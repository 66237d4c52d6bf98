"""The run folder: one writer at a time, the run's identity, and what a start does with what is on disk.

Used by global rank 0 of a run, in this order (see ``RunFolder``)::

    with RunFolder(out_dir) as folder:                  # lock, or FolderBusy
        d = folder.decide(cfg, rerun, ckpt_path)        # skip / resume / fresh, or StaleRun
        if d.action == "skip": return d.results
        folder.start(d, cfg)                            # moves old outputs aside, writes run.json
        ... train (resume from d.ckpt_path), write policy/ and reports ...
        folder.finish(results)                          # results.json with the fingerprint, last

Non-zero ranks of a multi-process run must not take the lock (Lightning re-runs the script for
ranks 1..N-1 while rank 0 holds it): they may call ``decide`` (it only reads) to learn
``ckpt_path``, and must not call ``start``, ``finish`` or ``discard_outputs``.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from cpo.errors import ConfigError
from cpo.io import atomic_write_json
from cpo.runs.errors import CorruptCheckpoint, StaleRun
from cpo.runs.files import move_into, timestamped_dir
from cpo.runs.fingerprint import (
    FINGERPRINT_VERSION, canonical_config, config_diff, describe_diff, fingerprint, plain_config,
    same_configuration,
)
from cpo.runs.lock import NEW_FOLDER, FolderLock

log = logging.getLogger(__name__)

IDENTITY_NAME = "run.json"
RESULTS_NAME = "results.json"
LAST_CHECKPOINT = "checkpoints/last.ckpt"
HPC_CHECKPOINTS = "hpc_ckpt_*.ckpt"  # Lightning's SLURM auto-requeue saves, in the run folder itself
# Everything a run writes. Hydra's .hydra/ and <job>.log belong to the current launch and stay.
OUTPUTS = ("results.json", "run.json", "checkpoints", "policy", "policy_last", "csv", "before_after.md", "before.json",
           "test_translations.jsonl", "test_hypotheses.txt", "wandb_files", "tensorboard")
# What makes a folder look finished to a reader (scripts/compare.py, a colleague).
FINISHED_LOOKING = ("results.json", "policy", "policy_last", "before_after.md", "test_translations.jsonl",
                    "test_hypotheses.txt")
_RERUN = "pass rerun=true to train again here (the old outputs are kept in replaced-<time>/)"


@dataclass(frozen=True)
class FolderState:
    """What a decision depends on, read from disk once (``read_state``)."""

    out_dir: Path
    results: dict | None = None                  # results.json
    results_problem: str | None = None           # results.json that is not a JSON object
    identity: dict | None = None                 # run.json
    checkpoint: dict | None = None               # check_checkpoint() of the checkpoint to resume from
    checkpoint_problem: Exception | None = None  # why the checkpoint cannot be resumed from
    explicit_checkpoint: bool = False            # the checkpoint is the user's ckpt_path
    outputs: tuple[str, ...] = ()                # OUTPUTS (and hpc checkpoints) present


@dataclass(frozen=True)
class Decision:
    """What a run does with its folder. ``reason`` is one line for the log."""

    action: str                      # "skip" | "resume" | "fresh"
    fingerprint: str
    reason: str
    results: dict | None = None      # skip: the stored results
    ckpt_path: str | None = None     # resume: pass to trainer.fit(ckpt_path=...)
    step: int | None = None          # resume: the checkpoint's global step
    log_step: int | None = None      # resume: ResumableCSVLogger(resume_step=...); None: a new history
    # Outputs that start() moves into replaced-<time>/: a fresh start's, or a resume from another folder's checkpoint.
    move_aside: tuple[str, ...] = field(default=())


def _read_json(path: Path) -> tuple[Any, str | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"{type(e).__name__}: {e}"


def read_state(out_dir: str | os.PathLike, ckpt_path: str | None = None,
               inspect_checkpoints: bool = True) -> FolderState:
    """Read what is in ``out_dir``. Checkpoints are validated only with ``inspect_checkpoints`` (not for a rerun).

    The checkpoint to resume from is ``ckpt_path`` when given, else the newest (highest global step)
    valid one of ``checkpoints/last.ckpt`` and Lightning's SLURM ``hpc_ckpt_<n>.ckpt``; a corrupt one is
    a problem only when no valid one is left.
    """
    out = Path(out_dir)
    results, results_problem = None, None
    if (out / RESULTS_NAME).exists():
        results, err = _read_json(out / RESULTS_NAME)
        if not isinstance(results, dict):
            results, results_problem = None, err or "not a JSON object"
    identity, _ = _read_json(out / IDENTITY_NAME) if (out / IDENTITY_NAME).is_file() else (None, None)
    hpc = sorted(out.glob(HPC_CHECKPOINTS))
    outputs = tuple(n for n in OUTPUTS if (out / n).exists()) + tuple(p.name for p in hpc)

    checkpoint, problem = None, None
    if inspect_checkpoints:
        from cpo.runs.checkpoints import check_checkpoint  # imports Lightning: only when checkpoints are read

        if ckpt_path:
            try:
                checkpoint = check_checkpoint(ckpt_path)
            except FileNotFoundError:
                problem = ConfigError(f"ckpt_path={ckpt_path}: no such file; give the path of a checkpoint "
                                      f"to resume from, or leave ckpt_path out")
            except CorruptCheckpoint as e:
                problem = e
        else:
            found, corrupt = [], []
            for p in [out / LAST_CHECKPOINT] + hpc:
                if p.exists():
                    try:
                        found.append(check_checkpoint(p))
                    except CorruptCheckpoint as e:
                        corrupt.append(e)
            if found:
                checkpoint = max(found, key=lambda c: c["global_step"])  # max() keeps the first of equals: last.ckpt
                for e in corrupt:
                    log.warning("ignoring %s, resuming from %s instead", e, checkpoint["path"])
            elif corrupt:
                problem = corrupt[0]
    return FolderState(out, results, results_problem, identity if isinstance(identity, dict) else None,
                       checkpoint, problem, bool(ckpt_path), outputs)


def _inside(path: str | os.PathLike, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _diff_clause(stored_config: Mapping | None, cfg: Mapping) -> str:
    if stored_config is None:
        return "its configuration was not recorded"
    lines = config_diff(stored_config, cfg)
    if not lines:
        return "no configuration key differs, so its fingerprint was computed by another version of cpo"
    return "differs in " + describe_diff(lines)


def decide_run(state: FolderState, cfg: Mapping[str, Any], rerun: bool = False,
               ckpt_path: str | None = None) -> Decision:
    """Skip, resume or start fresh, as a pure function of what is on disk and the config; raises when neither is safe.

    - ``rerun``: every old output is moved aside and the run starts fresh;
    - ``results.json`` with this fingerprint: skip; with another one, or none (an older version): ``StaleRun``;
    - a checkpoint (``ckpt_path`` or the folder's own) with this fingerprint: resume; otherwise ``StaleRun``;
    - else fresh (outputs of an attempt that died before its first checkpoint are moved aside).
    """
    cfg = plain_config(cfg)
    fp = fingerprint(cfg)
    out = state.out_dir
    if rerun and ckpt_path:
        raise ConfigError(f"rerun=true starts this run over from step 0 and ckpt_path={ckpt_path} resumes it "
                          f"from a checkpoint: pass only one of them")
    if rerun:
        moved = f", old outputs ({', '.join(state.outputs)}) moved into replaced-<time>/" if state.outputs else ""
        reason = "rerun=true: starting over" + moved
        return Decision("fresh", fp, reason, move_aside=state.outputs)

    if state.results_problem is not None:
        raise StaleRun(f"{out / RESULTS_NAME} cannot be read ({state.results_problem}): "
                       f"move it away, or {_RERUN}")
    if state.results is not None:
        stored = state.results.get("fingerprint")
        ident = state.identity or {}
        old_cfg = ident.get("config") if ident.get("fingerprint") == stored else None
        old_cfg = old_cfg if old_cfg is not None else state.results.get("config")
        if same_configuration(stored, old_cfg, fp):
            note = f" (ckpt_path={ckpt_path} not used)" if ckpt_path else ""
            return Decision("skip", fp, f"{out}: already finished with this configuration, skipping{note}",
                            results=state.results)
        if stored is None:
            raise StaleRun(f"{out} holds a run finished by an older version of cpo that stored no fingerprint, so its "
                           f"results cannot be checked against this configuration ({_diff_clause(old_cfg, cfg)}): "
                           f"{NEW_FOLDER}, or {_RERUN}")
        raise StaleRun(f"{out} holds a finished run of another configuration ({_diff_clause(old_cfg, cfg)}): "
                       f"{NEW_FOLDER}, or {_RERUN}")

    if state.checkpoint_problem is not None:
        raise state.checkpoint_problem
    ck = state.checkpoint
    if ck is not None:
        stored, old_cfg = ck.get("fingerprint"), ck.get("config")
        ident = state.identity or {}
        if stored is None and not state.explicit_checkpoint:
            stored = ident.get("fingerprint")  # the folder's own checkpoint, from before checkpoints held fingerprints
        if old_cfg is None and stored is not None and ident.get("fingerprint") == stored:
            old_cfg = ident.get("config")
        if same_configuration(stored, old_cfg, fp):
            reason = f"resuming from {ck['path']} (step {ck['global_step']})"
            if _inside(ck["path"], out):
                return Decision("resume", fp, reason, ckpt_path=ck["path"], step=ck["global_step"],
                                log_step=ck.get("log_step"))
            # Another folder's checkpoint: what is here (a metrics history, a checkpoint) belongs to another run.
            if state.outputs:
                reason += f"; outputs already here ({', '.join(state.outputs)}) moved into replaced-<time>/"
            return Decision("resume", fp, reason, ckpt_path=ck["path"], step=ck["global_step"],
                            move_aside=state.outputs)
        way = ("leave out ckpt_path to start this run from its beginning" if state.explicit_checkpoint
               else _RERUN.replace("train again", "start over"))
        if stored is None:
            raise StaleRun(f"{ck['path']} was written by an older version of cpo that stored no fingerprint, so it "
                           f"cannot be checked against this configuration: {NEW_FOLDER}, or {way}")
        raise StaleRun(f"{ck['path']} was written by a run of another configuration ({_diff_clause(old_cfg, cfg)}): "
                       f"resume with the configuration it was trained with, {NEW_FOLDER}, or {way}")

    reason = "starting a new run"
    if state.outputs:
        reason += f"; outputs of an earlier attempt ({', '.join(state.outputs)}) moved into replaced-<time>/"
    return Decision("fresh", fp, reason, move_aside=state.outputs)


class RunFolder:
    """A run's output folder, as rank 0 of the run uses it (see the module docstring for the order of calls).

    ``acquire()``/``release()`` (or ``with``): the folder's lock (``FolderLock``: ``FolderBusy`` while
    another live run holds it, a dead holder's lock taken over with one log line).
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir)
        self.fingerprint: str | None = None
        self._lock = FolderLock(self.path)

    # ---- one writer (see FolderLock) --------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self._lock.lock_path

    @property
    def locked(self) -> bool:
        return self._lock.locked

    def acquire(self) -> "RunFolder":
        self._lock.acquire()
        return self

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> "RunFolder":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ---- identity and decisions ------------------------------------------------------------------
    def decide(self, cfg: Mapping[str, Any], rerun: bool = False, ckpt_path: str | None = None) -> Decision:
        """``decide_run`` on what is in the folder now (reads only; safe on every rank)."""
        return decide_run(read_state(self.path, ckpt_path, inspect_checkpoints=not rerun), cfg, rerun, ckpt_path)

    def start(self, decision: Decision, cfg: Mapping[str, Any], overrides: list[str] | None = None) -> Path | None:
        """Act on a fresh or resume decision: move old outputs aside, then store the run's identity in run.json.

        ``overrides``: the command line's overrides of the config (what names the run in a sweep), kept in run.json
        so that a reader (scripts/compare.py) labels the run by its own record, not by files a later launch may
        rewrite. Returns the ``replaced-<time>/`` folder the old outputs went to, if any.
        """
        if decision.action == "skip":
            raise ValueError("a skipped run has nothing to start")
        cfg = plain_config(cfg)
        replaced = None
        if decision.move_aside:
            replaced = timestamped_dir(self.path, "replaced")
            moved = move_into(self.path, list(decision.move_aside), replaced)
            log.info("%s: moved %s into %s", self.path, ", ".join(moved), replaced.name)
        previous, _ = _read_json(self.path / IDENTITY_NAME) if (self.path / IDENTITY_NAME).is_file() else (None, None)
        same_run = isinstance(previous, dict) and previous.get("fingerprint") == decision.fingerprint
        started = previous.get("started") if same_run else None
        atomic_write_json(self.path / IDENTITY_NAME, {
            "fingerprint": decision.fingerprint, "fingerprint_version": FINGERPRINT_VERSION,
            "started": started or time.strftime("%Y-%m-%d %H:%M:%S"), "resumed_from": decision.ckpt_path,
            "canonical_config": canonical_config(cfg), "config": cfg,
            **({"overrides": list(overrides)} if overrides is not None else {}),
        })
        self.fingerprint = decision.fingerprint
        return replaced

    def finish(self, results: Mapping[str, Any]) -> dict:
        """Write results.json with the fingerprint inside, atomically, and last: it only ever means finished."""
        if self.fingerprint is None:
            raise ValueError("finish() before start(): the run's fingerprint is not known")
        results = {**results, "fingerprint": self.fingerprint}
        atomic_write_json(self.path / RESULTS_NAME, results)
        return results

    def discard_outputs(self) -> Path | None:
        """Move the finished-looking outputs of a failed run (results.json, policy/, reports) into ``failed-<time>/``.

        Moved, not removed: a rename costs nothing, and what a failed run wrote (a NaN policy, a
        partial save) is the evidence for finding out why; nothing written is lost. Checkpoints and
        the metrics history stay, for a resume. Returns the folder, or None when there was nothing to move.
        """
        present = [n for n in FINISHED_LOOKING if (self.path / n).exists()]
        if not present:
            return None
        dest = timestamped_dir(self.path, "failed")
        move_into(self.path, present, dest)
        log.info("%s: moved %s of the failed run into %s", self.path, ", ".join(present), dest.name)
        return dest
