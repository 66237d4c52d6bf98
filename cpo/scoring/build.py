"""Scorers built from configuration: a preset name of ``conf/scorer/`` or a mapping with ``_target_``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cpo.scoring.base import Scorer
from cpo.scoring.cache import CachedScorer
from cpo.scoring.mean import MeanScorer

#: Folder of the named scorer configs (``conf/scorer/<name>.yaml``).
SCORER_PRESET_DIR = Path(__file__).resolve().parents[2] / "conf" / "scorer"


class ScorerConfigError(ValueError):
    """A scorer config that cannot be built; the message names where it came from (``scorers[0]``, ...)."""


def load_scorer_preset(name: str, where: str = "scorer") -> dict[str, Any]:
    """The config of a named preset (``conf/scorer/<name>.yaml``) or of a YAML file path."""
    from omegaconf import OmegaConf

    path = Path(name).expanduser()
    if path.suffix not in (".yaml", ".yml"):
        path = SCORER_PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SCORER_PRESET_DIR.glob("*.yaml"))
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ScorerConfigError(f"{where}: unknown scorer {name!r}: {path} {what} (known presets: {', '.join(known)})")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(cfg, dict):
        raise ScorerConfigError(f"{where}: {path}: a scorer config must be a mapping, got {type(cfg).__name__}")
    return cfg


def _resolve_presets(cfg: Any, where: str) -> dict[str, Any]:
    """Replace preset names (top level and inside ``scorers`` lists) by their configs."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, str):
        cfg = load_scorer_preset(cfg, where)
    if not isinstance(cfg, dict):
        raise ScorerConfigError(f"{where}: a scorer config must be a mapping or a preset name, got {cfg!r}")
    cfg = dict(cfg)
    if "_target_" not in cfg:
        raise ScorerConfigError(f"{where}: scorer config has no _target_ (keys: {sorted(cfg)})")
    if isinstance(cfg.get("scorers"), list):
        cfg["scorers"] = [_resolve_presets(c, f"{where}.scorers[{i}]") for i, c in enumerate(cfg["scorers"])]
    return cfg


def _instantiate(cfg: dict[str, Any], where: str) -> Scorer:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = cfg["_target_"]
    members = cfg.get("scorers")
    if isinstance(members, list):  # built one by one, so that an error names the member
        members = [_instantiate(c, f"{where}.scorers[{i}]") for i, c in enumerate(members)]
        cfg = {k: v for k, v in cfg.items() if k != "scorers"} | {"_partial_": True}
    try:
        scorer = instantiate(cfg, _convert_="all")
        if members is not None:
            scorer = scorer(scorers=members)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, (OSError, RuntimeError, ScorerConfigError)):
            raise cause from None  # the constructor's own message names the file or the model
        if isinstance(cause, (ValueError, TypeError)):
            raise ScorerConfigError(f"{where}: {cause}") from None
        raise ScorerConfigError(f"{where}: cannot build scorer _target_={target!r}: {e}") from e
    except (ValueError, TypeError) as e:  # raised by the partial's call: the constructor's own sentence
        raise ScorerConfigError(f"{where}: {e}") from None
    if not isinstance(scorer, Scorer):
        raise ScorerConfigError(
            f"{where}: _target_={target!r} built a {type(scorer).__name__}, not a cpo.scoring.Scorer"
        )
    return scorer


def build_scorer(cfg: Any, cache_dir: str | os.PathLike | None = None, where: str = "scorer",
                 progress: bool | None = None) -> Scorer:
    """Build a scorer from a config (dict/DictConfig with ``_target_``) or a preset name.

    ``cache_dir`` (argument, or a ``cache_dir`` key of the config) wraps the result in a
    ``CachedScorer``; for a ``MeanScorer`` each member is cached instead, so a member's scores
    are shared with every other mean or run that uses the same model. ``progress`` (when not
    None) shows or hides every progress bar, the models' own included.
    """
    cfg = _resolve_presets(cfg, where)
    cfg_cache_dir = cfg.pop("cache_dir", None)
    cache_dir = cache_dir if cache_dir is not None else cfg_cache_dir
    scorer = _instantiate(cfg, where)
    if cache_dir is not None:
        if isinstance(scorer, MeanScorer):
            scorer.scorers = [s if isinstance(s, CachedScorer) else CachedScorer(s, cache_dir) for s in scorer.scorers]
        else:
            scorer = CachedScorer(scorer, cache_dir)
    if progress is not None:
        scorer.set_progress(progress)
    return scorer
