"""What produced a run: code version, library versions, hardware layout, global batch, data fingerprints.

Reproduction reports on ALMA's tracker keep coming back to the same causes (a different global batch,
epoch count or package versions), so every run records these in ``results.json`` and in the W&B config.
"""
from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = (
    "torch", "transformers", "peft", "lightning", "sacrebleu", "unbabel-comet", "tokenizers", "trl", "deepspeed"
)
REPO = Path(__file__).resolve().parents[2]


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def git_state(repo: Path = REPO) -> dict[str, object]:
    """The project's commit and whether the working tree differs from it (None outside a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            p = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def data_fingerprints(files) -> dict[str, str]:
    from cpo.data.sources import file_fingerprint

    return {str(f): file_fingerprint(f) for f in files if Path(f).is_file()}


def provenance(files=(), global_batch: dict | None = None, pair_scorers: list | None = None,
               eval_scorers: dict | None = None) -> dict:
    """Everything above in one JSON-able dict; ``pair_scorers`` (``cpo.data.records.pair_scorers``: which scorer
    built the training pairs) and ``eval_scorers`` (name -> identity of each scorer of the held-out metrics) let
    a report tell a metric that is independent of the pair-building scorer from one that is not."""
    import torch

    return {
        "pair_scorers": list(pair_scorers or []),
        "eval_scorers": dict(eval_scorers or {}),
        "git": git_state(),
        "versions": package_versions(),
        "python": platform.python_version(),
        "host": platform.node(),
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "batch": global_batch or {},
        "data_files": data_fingerprints(files),
    }
