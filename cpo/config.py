"""Checks on the composed config, before anything is built: one clear sentence per problem."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cpo.losses import KINDS

DATA_FORMATS = ("demo", "jsonl", "alma_r_preference")
REFERENCE_MODES = ("none", "auto", "adapter_disabled", "frozen_copy", "cached")


class ConfigError(ValueError):
    pass


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid setting; the message names the key."""
    loss, data, model = cfg.loss, cfg.data, cfg.model
    _need(loss.kind in KINDS, f"loss.kind={loss.kind!r} is not a known loss (known: {', '.join(KINDS)})")
    _need(isinstance(loss.beta, (int, float)) and loss.beta > 0, f"beta must be > 0, got {loss.beta}")
    _need(loss.alpha >= 0, f"loss.alpha must be >= 0, got {loss.alpha}")
    _need(0 <= loss.label_smoothing < 0.5, f"loss.label_smoothing must be in [0, 0.5), got {loss.label_smoothing}")
    _need(loss.reference in REFERENCE_MODES, f"loss.reference={loss.reference!r} is not one of {', '.join(REFERENCE_MODES)}")
    _need(loss.kind != "dpo" or loss.reference != "none", "loss=dpo needs loss.reference (auto, adapter_disabled, frozen_copy or cached)")
    _need(data.format in DATA_FORMATS, f"data.format={data.format!r} is not one of {', '.join(DATA_FORMATS)}")
    _need(data.batch_size >= 1, f"data.batch_size must be >= 1, got {data.batch_size}")
    _need(data.max_prompt_length < data.max_length, f"data.max_prompt_length ({data.max_prompt_length}) must be < data.max_length ({data.max_length})")
    if data.format == "jsonl":
        _need(not OmegaConf.is_missing(data, "train_file"), "data=jsonl needs data.train_file=<path to preference JSONL>")
        for key in ("train_file", "val_file", "test_file"):
            path = data.get(key)
            _need(path is None or Path(path).is_file(), f"data.{key}: {path} does not exist")
    if data.format == "alma_r_preference":
        _need(len(data.pairs) > 0, "data.pairs is empty")
        for p in data.pairs:
            _need(len(str(p).split("-")) == 2, f"data.pairs: {p!r} is not like 'de-en'")
        _need(data.scorer in ("kiwi", "xcomet", "kiwi_xcomet"), f"data.scorer={data.scorer!r} is not one of kiwi, xcomet, kiwi_xcomet")
    _need(not OmegaConf.is_missing(model, "name_or_path"), "model.name_or_path is required (a hub name or a local path)")
    _need(model.name_or_path != "demo" or data.format == "demo", "model.name_or_path=demo (the demo's warm start) only fits data=demo")
    if model.lora is not None:
        _need(model.lora.r >= 1, f"model.lora.r must be >= 1, got {model.lora.r}")
        _need(len(model.lora.target_modules) > 0, "model.lora.target_modules is empty")
    _need(cfg.optim.schedule in ("inverse_sqrt", "cosine", "linear", "constant"), f"optim.schedule={cfg.optim.schedule!r} is not one of inverse_sqrt, cosine, linear, constant")
    _need(cfg.logger.name in ("wandb", "csv", "none"), f"logger={cfg.logger.name!r} is not one of wandb, csv, none")
    _need(cfg.logger.name != "wandb" or cfg.logger.get("mode") in ("offline", "online", "disabled"), f"logger.mode={cfg.logger.get('mode')!r} is not one of offline, online, disabled")
