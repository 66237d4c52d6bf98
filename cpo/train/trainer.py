"""The Lightning Trainer of a run: device layout, the global batch, checkpoints, callbacks.

``global_batch_size`` fixes the number of preference pairs per optimizer step whatever the hardware:
ALMA-R trained with 16 GPUs x 2 pairs = 32 pairs per step, so on 8 GPUs the same config accumulates
two micro-batches, and on one GPU sixteen. Gradient accumulation is exact (cpo.data.batching).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from cpo.errors import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    per_device: int
    devices: int
    nodes: int
    accumulate: int

    @property
    def global_batch(self) -> int:
        return self.per_device * self.devices * self.nodes * self.accumulate

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "global_batch": self.global_batch}


def device_count(trainer_cfg: dict) -> int:
    """Processes per node that Lightning will start for ``trainer.devices`` on ``trainer.accelerator``."""
    devices, accel = trainer_cfg.get("devices", "auto"), str(trainer_cfg.get("accelerator", "auto"))
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    gpu = accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available())
    if devices in ("auto", -1):
        return max(1, torch.cuda.device_count()) if gpu else 1
    return int(devices)


def plan_batch(cfg: DictConfig) -> BatchPlan:
    """Micro-batch, processes and accumulation; ``global_batch_size`` (when set) decides the accumulation."""
    t = OmegaConf.to_container(cfg.trainer, resolve=True)
    per, nodes = int(cfg.data.batch_size), int(t.get("num_nodes") or 1)
    devices = device_count(t)
    given = t.get("accumulate_grad_batches")
    given = 1 if given is None else int(given)
    if given < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches must be >= 1, got {given}")
    want = cfg.get("global_batch_size")
    if want is None:
        return BatchPlan(per, devices, nodes, given)
    step = per * devices * nodes
    if want < step or want % step:
        raise ConfigError(
            f"global_batch_size={want} is not a multiple of data.batch_size x devices x nodes = {per} x {devices} x "
            f"{nodes} = {step}; change one of them (or set global_batch_size=null)")
    accumulate = want // step
    if given not in (1, accumulate):
        raise ConfigError(f"trainer.accumulate_grad_batches={given} contradicts global_batch_size={want} "
                          f"(which needs {accumulate}); set only one of them")
    return BatchPlan(per, devices, nodes, accumulate)


def trainer_kwargs(cfg: DictConfig, plan: BatchPlan) -> dict[str, Any]:
    """``cfg.trainer`` as Lightning takes it: the strategy instantiated, the accumulation from the plan."""
    from hydra.utils import instantiate

    kwargs: dict[str, Any] = {
        k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if v is not None
    }
    if isinstance(kwargs.get("strategy"), dict):
        kwargs["strategy"] = instantiate(cfg.trainer.strategy)
    kwargs["accumulate_grad_batches"] = plan.accumulate
    return kwargs


# Trainer arguments the run sets itself: a trainer.* key of the same name is refused (cpo.train.keys).
RUN_OWNED = ("default_root_dir", "logger", "callbacks", "enable_checkpointing", "plugins")


def build_trainer(cfg: DictConfig, out_dir: Path, plan: BatchPlan, loggers: list, callbacks: list,
                  plugins: list | None = None) -> L.Trainer:
    """The Trainer; ``callbacks`` include the checkpointing ones (cpo.runs)."""
    kwargs = trainer_kwargs(cfg, plan)
    if kwargs.get("enable_progress_bar") is None:
        from cpo.console import interactive

        kwargs["enable_progress_bar"] = interactive()
    return L.Trainer(default_root_dir=str(out_dir), logger=loggers or False, callbacks=callbacks,
                     enable_checkpointing=True, plugins=plugins or None, **kwargs)
