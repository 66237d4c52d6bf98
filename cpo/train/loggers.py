"""Loggers of a training run: a CSV log always, W&B (offline unless told) with sweep-aware names, or TensorBoard."""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig


def build_loggers(cfg: DictConfig, out_dir: Path, resume_step: int | None = None) -> list:
    """CSV (always, unless logger=none) and W&B or TensorBoard. A resumed run keeps the CSV rows up to its
    checkpoint's step and continues the same W&B run (its id is derived from the run folder)."""
    lg = cfg.logger
    if lg.name == "none":
        return []
    from cpo.runs import ResumableCSVLogger

    # A local CSV of every logged metric, beside W&B too: scripts/compare.py reads it with no server.
    csv = ResumableCSVLogger(save_dir=str(out_dir), resume_step=resume_step)
    if lg.name == "csv":
        return [csv]
    if lg.name == "tensorboard":  # <run>/tensorboard/: tensorboard --logdir multirun/<sweep> shows every job
        from lightning.pytorch.loggers import TensorBoardLogger

        return [TensorBoardLogger(save_dir=str(out_dir), name="tensorboard", version="", default_hp_metric=False), csv]
    wandb_dir = out_dir / "wandb_files"
    for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"),
                     ("WANDB_CONFIG_DIR", "config")):
        (wandb_dir / sub).mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(wandb_dir / sub)  # keep every W&B file in the run directory, never in $HOME
    os.environ.setdefault("WANDB_DISABLE_GIT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    # W&B speaks through its warnings and errors only: its banner and 36-line run summary are left out
    # (finish_wandb says in one line where the run is and how to upload it). WANDB_SHOW_INFO=true shows them.
    os.environ.setdefault("WANDB_SHOW_INFO", "false")
    from lightning.pytorch.loggers import WandbLogger

    names = run_names(cfg)
    # A run started by another app (a stage of scripts/rounds.py) names its group, job type and run, and adds keys
    # (the round) to the W&B config; on its own, the sweep's group, the loss as job type and the varying overrides.
    extra = lg.get("extra")
    wb = WandbLogger(
        project=lg.project, entity=lg.entity, mode=lg.mode, save_dir=str(wandb_dir), dir=str(wandb_dir),
        group=lg.group or names["group"], job_type=lg.get("job_type") or cfg.loss.name,
        name=lg.get("run_name") or names["name"],
        tags=list(lg.tags) + ([cfg.experiment_name] if cfg.experiment_name else []), log_model=lg.log_model,
        id=_run_id(out_dir), **({"config": dict(extra)} if extra else {}),
    )
    # Lightning always passes anonymous=None, which W&B 0.2x answers with a deprecation warning on every run, and
    # resume="allow", which an offline run cannot do (another warning): neither changes what is logged offline.
    wb._wandb_init.pop("anonymous", None)
    if str(lg.mode) == "offline":
        wb._wandb_init.pop("resume", None)
    return [wb, csv]


def _run_id(out_dir: Path) -> str:
    """A W&B run id that is stable for one run of a folder: a resumed run logs into the run it continues,
    while ``rerun=true`` (a new start, recorded in run.json) gets a new one."""
    import hashlib
    import json

    started = ""
    try:
        started = json.loads((Path(out_dir) / "run.json").read_text()).get("started", "")
    except (OSError, ValueError):
        pass
    return hashlib.sha256(f"{Path(out_dir).resolve()}|{started}".encode()).hexdigest()[:16]


def run_names(cfg: DictConfig) -> dict[str, str | None]:
    """W&B group (the sweep) and run name (only the overrides that vary across the sweep's jobs)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except ValueError:  # not under Hydra (library use)
        return {"name": cfg.loss.name, "group": cfg.experiment_name}
    if hc.mode != RunMode.MULTIRUN:
        return {"name": hc.job.override_dirname or cfg.loss.name, "group": cfg.experiment_name}
    from hydra_plugins.cpo_grid_sweeper.grid import varying_keys

    varying = varying_keys(hc)
    parts = [o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") in varying]
    name = ",".join(sorted(parts)) or cfg.loss.name
    # An experiment's sweep directory is stable (re-launches resume into the same group); a plain
    # sweep is named by its date and time folders so that sweeps of different days never share one.
    group = cfg.experiment_name or "sweep-" + "/".join(Path(hc.sweep.dir).parts[-2:])
    return {"name": name, "group": group}


def finish_wandb(loggers: list) -> None:
    """End the W&B run so the next job of a sequential multirun starts its own; one line says where it is."""
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        run = wandb.run
        where = None
        if run is not None:
            offline = bool(getattr(run.settings, "_offline", False))
            where = f"W&B run (offline) in {run.settings.sync_dir}; `wandb sync {run.settings.sync_dir}` uploads it" \
                if offline else f"W&B run {getattr(run, 'url', None) or run.id}"
        wandb.finish()
        if where:
            from cpo.console import say

            say(where)


def hyperparameters(cfg: DictConfig, provenance: dict, trainable: int, total: int) -> dict:
    """What the loggers record as the run's configuration: every resolved setting under its dotted key
    (``loss.name``, ``optim.lr``, ``model.lora.r``: top-level keys that W&B filters and groups on), the
    parameter counts, and the provenance (cpo.train.provenance) as one entry."""
    from omegaconf import OmegaConf

    def flat(node, prefix: str = "") -> dict:
        if isinstance(node, dict) and node:
            out: dict = {}
            for k, v in node.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: node}

    return {**flat(OmegaConf.to_container(cfg, resolve=True)), "trainable_parameters": trainable,
            "total_parameters": total, "provenance": provenance}
