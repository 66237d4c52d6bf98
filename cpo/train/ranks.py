"""Which process decides how a run starts: rank 0 reads the folder (skip, resume or start fresh, cpo.runs) and
tells the other ranks, through the environment for the processes Lightning starts, through a file in the run
folder, stamped with the launch, for ranks started beside it (torchrun, srun).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from cpo.cli import task_overrides
from cpo.console import say
from cpo.errors import ConfigError
from cpo.io import atomic_write_json

DECISION_FILE = ".decision.json"


def launch_id() -> str | None:
    """What identifies this launch on every rank when the ranks start together (torchrun, srun)."""
    keys = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "MASTER_PORT", "SLURM_JOB_ID", "SLURM_STEP_ID",
            "SLURM_RESTART_COUNT")
    parts = [os.environ.get(k) for k in keys]
    return "/".join(p or "" for p in parts) if any(parts) else None


def decide(cfg: DictConfig, identity: dict, folder, overrides: list[str] | None = None) -> dict:
    """Rank 0: skip, resume or start fresh (cpo.runs), and tell the other ranks."""
    decision = folder.decide(identity, rerun=bool(cfg.rerun), ckpt_path=cfg.ckpt_path)
    shared = {"skip": decision.action == "skip", "ckpt_path": decision.ckpt_path, "log_step": decision.log_step,
              "launch": launch_id()}
    if shared["skip"]:
        say(f"{folder.path}: already finished with this configuration; skipping (rerun=true trains it again)")
        if cfg.save_policy and not decision.results.get("policy_dir"):
            say("note: that run saved no policy/ (save_policy was false); rerun=true trains it again to save one")
    else:
        folder.start(decision, identity, overrides=overrides if overrides is not None else task_overrides())
        say(decision.reason)
    # Processes Lightning starts for ranks 1..N-1 inherit the environment; ranks started beside this one
    # (torchrun, srun) read the file, which names the launch it belongs to.
    os.environ["CPO_RUN_DECISION"] = json.dumps(shared)
    if shared["launch"] is not None:
        atomic_write_json(folder.path / DECISION_FILE, shared)
    return {**shared, "results": decision.results}


def follow(out_dir: Path) -> dict:
    """Ranks 1..N-1: rank 0's decision, from the environment or from the run folder (waited for)."""
    if "CPO_RUN_DECISION" in os.environ:
        return json.loads(os.environ["CPO_RUN_DECISION"])
    launch = launch_id()
    if launch is None:
        raise ConfigError(f"rank {rank_zero_only.rank} was started without rank 0's decision for {out_dir}: start "
                          "multi-process runs with torchrun, srun or Lightning's own launcher (strategy=ddp)")
    wait = float(os.environ.get("CPO_RANK_WAIT_S", "600"))
    deadline = time.time() + wait
    while time.time() < deadline:
        try:
            shared = json.loads((out_dir / DECISION_FILE).read_text())
            if shared.get("launch") == launch:
                return shared
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise ConfigError(f"rank {rank_zero_only.rank} waited {wait:.0f} s for rank 0 to decide how to start {out_dir} "
                      f"and heard nothing: look at rank 0's log (CPO_RANK_WAIT_S sets the wait)")
