"""Which keys each part of train.py's config accepts, read from the code that consumes them, checked before anything
loads: a key that nothing reads is refused in one sentence that names it and the known ones.

Hydra refuses an unknown key only without a ``+``; ``+optim.learning_rate=1e-4`` (Hydra's own suggestion) was
accepted, the model loaded, and the run ended in a ``TypeError``; ``+unknown_key=1`` was accepted and ignored.
The known keys are never a hand-written list of names: they are the fields of the classes a node is built into
(``OptimSettings``, ``PreferenceLoss``, ``LoraSettings``, Lightning's ``Trainer``), the parameters of the data
module and the data source's settings, and the keys the shipped YAML files define, so a key added in the code is
known at once. Types are checked from the same annotations (``seed=abc``, ``optim.lr=fast``).
"""
from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf

from cpo.errors import ConfigError

# Keys of ``loss`` read outside PreferenceLoss: ``reference`` by the run (the DPO reference, cpo.train.models),
# ``default_beta`` by conf/train.yaml (``beta: ${loss.default_beta}``).
LOSS_RUN_KEYS = ("reference", "default_beta")
# Parameters of PreferenceDataModule that the run fills from elsewhere (the data source's examples, the tokenizer,
# loss.nll_target, the top-level seed, the prompt group), never from data.*.
DATA_MODULE_FROM_ELSEWHERE = ("train", "val", "tokenizer", "nll_target", "seed", "prompt_format")
# data.* keys the run reads itself: the name in its messages, the source it builds.
DATA_RUN_KEYS = ("name", "source")
# TRL's names of settings that exist here under another key (see cpo.train.aliases for the command line).
TRL_HINTS = {"optim.learning_rate": "optim.lr", "optim.adam_epsilon": "optim.eps", "optim.lr_scheduler_type":
             "optim.schedule", "loss.cpo_alpha": "loss.alpha", "loss.simpo_gamma": "loss.gamma",
             "loss.loss_type": "loss=<name>", "data.per_device_train_batch_size": "data.batch_size"}


def _known_list(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def _unknown(where: str, key: str, known: Iterable[str], what: str) -> ConfigError:
    full = f"{where}.{key}" if where else key
    hint = f" (TRL's {key} is {TRL_HINTS[full]} here)" if full in TRL_HINTS else ""
    return ConfigError(f"{full} is not a setting of {what}{hint}: nothing would read it; known "
                       f"{f'keys of {where}' if where else 'top-level keys'}: {_known_list(known)}")


# ----------------------------------------------------------------------------------------- known keys
def dataclass_keys(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def signature_keys(fn, skip: Iterable[str] = ()) -> list[str]:
    """Named parameters of ``fn`` (no ``*args``/``**kwargs``), minus ``skip``."""
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.name not in ("self", *skip)
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def trainer_keys() -> list[str]:
    """Lightning Trainer arguments, less those the run passes itself (cpo.train.trainer.RUN_OWNED)."""
    import lightning as L

    from cpo.train.trainer import RUN_OWNED

    return signature_keys(L.Trainer.__init__, RUN_OWNED)


def conf_dir() -> Path:
    """The config folder train.py composes from (Hydra's main config source, else the repository's conf/)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        for source in HydraConfig.get().runtime.config_sources:
            if source.provider == "main" and source.schema == "file":
                return Path(source.path)
    except (ImportError, ValueError, AttributeError):
        pass
    return Path(__file__).resolve().parents[2] / "conf"


def _is_global(path: Path) -> bool:
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            return False
        if re.match(r"#\s*@package\s+_global_\s*$", line):
            return True
    return False


def top_level_keys(conf: Path | None = None, primary: str = "train") -> set[str]:
    """Top-level keys the shipped configs define: the primary file's, its groups' names, and the keys that the
    group files with ``# @package _global_`` (strategies, ALMA presets, experiments, launchers) set."""
    conf = conf or conf_dir()
    raw = OmegaConf.load(conf / f"{primary}.yaml")
    keys = {str(k) for k in raw if k not in ("defaults", "hydra")}
    for entry in raw.get("defaults") or []:
        if not isinstance(entry, DictConfig):
            continue
        for group in entry:
            group = str(group)
            if group.startswith("override ") or "/" in group or not (conf / group).is_dir():
                continue  # hydra/* settings are Hydra's, not the app's
            for f in sorted((conf / group).glob("*.yaml")):
                if _is_global(f):
                    keys |= {str(k) for k in OmegaConf.load(f) if k not in ("defaults", "hydra")}
                else:
                    keys.add(group)
    return keys


def data_keys(cfg: DictConfig) -> set[str]:
    """data.* keys something reads: the data module's settings, the run's own, and those the config interpolates
    (``data.source.train_file: ${data.train_file}``)."""
    from cpo.data.module import PreferenceDataModule

    keys = set(signature_keys(PreferenceDataModule.__init__, DATA_MODULE_FROM_ELSEWHERE)) | set(DATA_RUN_KEYS)
    raw = OmegaConf.to_yaml(cfg, resolve=False)
    keys |= set(re.findall(r"\bdata\.(\w+)", " ".join(re.findall(r"\$\{[^\n]*\}", raw))))
    return keys


# ----------------------------------------------------------------------------------------- types
def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _type_problem(value: Any, hint) -> str | None:
    """Why ``value`` does not fit the annotation ``hint``, or None (annotations this does not know pass)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        problems = [_type_problem(value, h) for h in options]
        return None if any(p is None for p in problems) else " or ".join(p for p in problems if p)
    if hint is type(None):
        return None if value is None else "null"
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if hint is float:
        return None if _is_number(value) else "a number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        return None if isinstance(value, (list, tuple)) else "a list"
    return None


def check_types(node: DictConfig, hints: dict, where: str) -> None:
    """Each key of ``node`` with an annotation in ``hints`` holds a value of that type (resolved; keys whose
    interpolation cannot resolve are left to the checks that explain them)."""
    from omegaconf.errors import InterpolationResolutionError

    for key in node:
        key = str(key)
        if key not in hints:
            continue
        try:
            value = node[key]
        except InterpolationResolutionError:
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        problem = _type_problem(value, hints[key])
        if problem is not None:
            raise ConfigError(f"{where}.{key}={value!r} must be {problem}" if where else
                              f"{key}={value!r} must be {problem}")


def _hints(obj) -> dict:
    try:
        return typing.get_type_hints(obj)
    except Exception:  # noqa: BLE001 - an annotation this Python cannot evaluate: no type check for that class
        return {}


# ----------------------------------------------------------------------------------------- the check
def _check_node(node, known: Iterable[str], where: str, what: str) -> None:
    if not isinstance(node, DictConfig):
        return
    known = set(known)
    for key in node:
        if str(key) not in known:
            raise _unknown(where, str(key), known, what)


def check_keys(cfg: DictConfig) -> None:
    """Refuse, in one sentence, the first key of train.py's config that nothing reads, or of the wrong type."""
    from cpo.data.module import PreferenceDataModule
    from cpo.train.losses import PreferenceLoss
    from cpo.train.chunked_logps import LogpsSettings
    from cpo.train.models import LoraSettings
    from cpo.train.module import OptimSettings

    _check_node(cfg, top_level_keys(), "", "train.py")
    _check_node(cfg.get("logps"), dataclass_keys(LogpsSettings), "logps", "the log-prob path (LogpsSettings)")
    _check_node(cfg.get("optim"), dataclass_keys(OptimSettings), "optim", "the optimizer (OptimSettings)")
    check_types(cfg.optim, _hints(OptimSettings), "optim")
    _check_node(cfg.get("loss"), [*dataclass_keys(PreferenceLoss), *LOSS_RUN_KEYS], "loss",
                "the loss (PreferenceLoss)")
    check_types(cfg.loss, {k: v for k, v in _hints(PreferenceLoss).items() if k != "beta"}, "loss")
    lora = cfg.model.get("lora") if isinstance(cfg.get("model"), DictConfig) else None
    _check_node(lora, dataclass_keys(LoraSettings), "model.lora", "LoRA (LoraSettings)")
    if isinstance(lora, DictConfig):
        check_types(lora, _hints(LoraSettings), "model.lora")
    if isinstance(cfg.get("trainer"), DictConfig):
        import lightning as L

        _check_node(cfg.trainer, trainer_keys(), "trainer", "Lightning's Trainer")
        check_types(cfg.trainer, _hints(L.Trainer.__init__), "trainer")
    data = cfg.get("data")
    if isinstance(data, DictConfig):
        source_cls = _source_class(data)
        _check_node(data, data_keys(cfg), "data", f"the data module or data={data.get('name')}")
        check_types(data, _hints(PreferenceDataModule.__init__), "data")
        if source_cls is not None:
            _check_node(data.source, ["_target_", *source_cls.setting_names()], "data.source",
                        f"the data source {data.source._target_}")
    check_types(cfg, {"seed": int}, "")


def _source_class(data: DictConfig):
    """The class ``data.source._target_`` names, when it is a DataSource (else build_source explains)."""
    from cpo.data.sources import DataSource

    node = data.get("source")
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not isinstance(target, str):
        return None
    try:
        from hydra.utils import get_class

        cls = get_class(target)
    except Exception:  # noqa: BLE001 - build_source says what is wrong with the target
        return None
    return cls if isinstance(cls, type) and issubclass(cls, DataSource) else None
