"""The train stage: an ordinary ``train.py`` run folder (``round-k/train``), trained in this process by
``cpo.train.run.run`` with its own rules (skip a finished run of the same configuration, resume from its
checkpoint, refuse another configuration naming the keys).

Round k starts from the policy round k - 1 saved (round 1 from the start model): a full model folder is the
model, a LoRA adapter folder is continued on its base. So DPO's reference, "the policy as training starts",
is the previous round's policy. The folder gets what ``scripts/compare.py`` reads: the overrides in
``run.json`` (and ``.hydra/overrides.yaml``) are the experiment's settings in ``train.py``'s words plus
``round=k`` (never the per-round paths, which would make every round its own configuration); beside them
``.hydra/config.yaml`` (the whole composed config), ``.hydra/train_overrides.yaml`` (what composed it) and
``train.log``.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cpo.io import atomic_write_text

_BARE = re.compile(r"^[A-Za-z0-9_./:+-]+$")
_WORDS = {"null", "true", "false", "none", "nan", "inf"}


def override_value(value: Any) -> str:
    """A Hydra override's value for a plain Python value (strings quoted when Hydra would read them otherwise)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _BARE.match(text) and text.lower() not in _WORDS and not _numeric(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def flatten(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings -> (dotted key, leaf value); lists are leaves."""
    if isinstance(node, dict) and node:
        out = []
        for k, v in node.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, node)] if prefix else []


def policy_overrides(policy: str, base: str) -> list[str]:
    """Where round k's model comes from: a full model folder, or base + the previous round's LoRA adapter."""
    if (Path(policy) / "adapter_config.json").is_file():
        return [f"++model.name_or_path={override_value(base)}", f"++model.lora.adapter={override_value(policy)}"]
    return [f"++model.name_or_path={override_value(policy)}"]


def compose_train(overrides: list[str]) -> DictConfig:
    """train.py's config for these overrides, composed by the running Hydra app (same config search path)."""
    from hydra import compose

    return compose(config_name="train", overrides=overrides)


class _LogFile:
    """Every log record of the stage also into ``<run folder>/train.log``, as train.py's Hydra logging does."""

    def __init__(self, path: Path):
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))

    def __enter__(self):
        logging.getLogger().addHandler(self.handler)

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()


def run_training(folder: Path, overrides: list[str], compare_overrides: list[str]) -> dict:
    """Compose and run one round's training in ``folder``; returns its results (as ``cpo.train.run.run``)."""
    from cpo.train.run import run

    cfg = compose_train(overrides)
    hydra_dir = folder / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(hydra_dir / "overrides.yaml", "".join(f"- {o}\n" for o in compare_overrides))
    atomic_write_text(hydra_dir / "train_overrides.yaml", "".join(f"- {o}\n" for o in overrides))
    atomic_write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    with _LogFile(folder / "train.log"):
        return run(cfg, folder, overrides=compare_overrides)
