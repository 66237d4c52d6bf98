"""W&B for a rounds run: one group per rounds run, a job type per stage, the round in every run's config.

The train stage logs through ``train.py``'s own W&B logger (``logger.group``, ``logger.job_type=train``,
``logger.extra.round``); the candidates and pairs stages open a short run of their own here, with their
settings as config and their figures (candidates/s, duplicates, pairs kept) as summary. Files stay in the
stage folder (``wandb_files/``), offline unless ``wandb.mode=online``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class Tracker:
    def __init__(self, group: str, project: str, entity: str | None, mode: str):
        self.group, self.project, self.entity, self.mode = group, project, entity, mode

    def train_overrides(self, round_: int) -> list[str]:
        """What the train stage's config gets, so that its W&B run joins the group under job type ``train``."""
        from cpo.rounds.training import override_value

        return ["logger=wandb", f"++logger.project={override_value(self.project)}",
                f"++logger.entity={override_value(self.entity)}", f"++logger.mode={self.mode}",
                f"++logger.group={override_value(self.group)}", "++logger.job_type=train",
                f"++logger.run_name={override_value(f'round-{round_}/train')}", f"++logger.extra.round={round_}"]

    def log_stage(self, stage, settings: dict[str, Any], summary: dict[str, Any]) -> None:
        wandb_dir = Path(stage.path) / "wandb_files"
        for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"),
                         ("WANDB_CONFIG_DIR", "config")):
            (wandb_dir / sub).mkdir(parents=True, exist_ok=True)
            os.environ[var] = str(wandb_dir / sub)
        os.environ.setdefault("WANDB_DISABLE_GIT", "true")
        os.environ.setdefault("WANDB_CONSOLE", "off")
        import wandb

        run = wandb.init(project=self.project, entity=self.entity, mode=self.mode, group=self.group,
                         job_type=stage.stage, name=stage.name, dir=str(wandb_dir), reinit=True,
                         config={"round": stage.round, "stage": stage.stage, "settings": settings})
        try:
            run.log({"round": stage.round, **{k: v for k, v in summary.items() if isinstance(v, (int, float))}})
            run.summary.update(summary)
        finally:
            run.finish()
