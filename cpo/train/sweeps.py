"""What a sweep needs to know of a job's configuration before it runs (the grid sweeper's ``ignored_keys``)."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from cpo.train.losses import PreferenceLoss


def ignored_keys(cfg: DictConfig) -> list[str]:
    """The command-line keys that cannot change this job's result (beta under SFT), so the sweeper runs the jobs
    that differ only in them once (``hydra.sweeper.ignored_keys`` in conf/train.yaml)."""
    return list(PreferenceLoss.from_config(OmegaConf.to_container(cfg.loss, resolve=True)).ignored_keys)
