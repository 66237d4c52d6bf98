"""Checks on the composed config, before anything is built: one clear sentence per problem."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from cpo.errors import ConfigError

REFERENCE_MODES = ("none", "auto", "reference_adapter", "adapter_disabled", "frozen_copy", "cached")


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid setting; the message names the key."""
    from omegaconf.errors import InterpolationKeyError

    from cpo.mt.prompt import TRUNCATION_MODES
    from cpo.train.keys import check_keys
    from cpo.train.losses import KINDS, PreferenceLoss
    from cpo.train.module import FORWARDS

    check_keys(cfg)  # first: a key nothing reads, or a value of the wrong type, before any value is compared
    loss, data, model = cfg.loss, cfg.data, cfg.model
    _need(cfg.forward in FORWARDS, f"forward={cfg.forward!r} is not one of {', '.join(FORWARDS)}")
    _need(data.prompt_truncation in TRUNCATION_MODES,
          f"data.prompt_truncation={data.prompt_truncation!r} is not one of {', '.join(TRUNCATION_MODES)}")

    _need(loss.kind in KINDS, f"loss.kind={loss.kind!r} is not a known loss (known: {', '.join(KINDS)})")
    try:
        beta = loss.beta
    except InterpolationKeyError as e:  # beta given nowhere: neither beta= nor the loss file's default_beta
        raise ConfigError(f"loss={loss.get('name')}: no beta ({str(e).splitlines()[0]}); give beta=... or set "
                          f"default_beta in conf/loss/{loss.get('name')}.yaml") from None
    _need(beta is not None, "beta=null: leave beta out to use the loss's own default (loss.default_beta), "
                            "or give a number > 0")
    _need(isinstance(beta, (int, float)) and not isinstance(beta, bool) and beta > 0, f"beta must be > 0, got {beta}")
    _need(loss.alpha >= 0, f"loss.alpha must be >= 0, got {loss.alpha}")
    _need(0 <= loss.label_smoothing < 0.5, f"loss.label_smoothing must be in [0, 0.5), got {loss.label_smoothing}")
    _need(loss.reference in REFERENCE_MODES,
          f"loss.reference={loss.reference!r} is not one of {', '.join(REFERENCE_MODES)}")
    _need(loss.kind != "dpo" or loss.reference != "none",
          "loss=dpo needs loss.reference (auto, reference_adapter, adapter_disabled, frozen_copy or cached)")
    try:  # the loss's own checks (ORPO on averaged log-probs, ARPO's tau, ...) as one sentence, not a traceback
        PreferenceLoss.from_config(OmegaConf.to_container(loss, resolve=True))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _need(data.batch_size >= 1, f"data.batch_size must be >= 1, got {data.batch_size}")
    _need(data.max_prompt_length < data.max_length,
          f"data.max_prompt_length ({data.max_prompt_length}) must be < data.max_length ({data.max_length})")
    _need(not OmegaConf.is_missing(model, "name_or_path"),
          "model.name_or_path is required (a hub name or a local path)")
    if model.lora is not None:  # keys left out (`+model.lora.r=16` on model=hf) take LoraSettings' defaults
        from cpo.train.models import LoraSettings

        lora = LoraSettings(**OmegaConf.to_container(model.lora, resolve=True))
        _need(lora.r >= 1, f"model.lora.r must be >= 1, got {lora.r}")
        _need(len(lora.target_modules) > 0, "model.lora.target_modules is empty")
    from cpo.train.chunked_logps import LogpsSettings

    try:
        LogpsSettings(**OmegaConf.to_container(cfg.logps, resolve=True))
    except ValueError as e:  # a wrong value (an unknown key under logps was refused by check_keys)
        raise ConfigError(str(e)) from None
    o = cfg.optim
    _need(isinstance(o.lr, (int, float)) and 0 < o.lr < float("inf"), f"optim.lr must be a positive number, got {o.lr}")
    _need(isinstance(o.eps, (int, float)) and 0 < o.eps < 1,
          f"optim.eps must be in (0, 1), got {o.eps} (0 divides by zero for a parameter whose gradient is 0)")
    _need(0 <= o.warmup_ratio < 1, f"optim.warmup_ratio must be in [0, 1), got {o.warmup_ratio}")
    _need(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    _need(cfg.optim.schedule in ("inverse_sqrt", "cosine", "linear", "constant"),
          f"optim.schedule={cfg.optim.schedule!r} is not one of inverse_sqrt, cosine, linear, constant")
    _need(cfg.logger.name in ("wandb", "tensorboard", "csv", "none"),
          f"logger={cfg.logger.name!r} is not one of wandb, tensorboard, csv, none")
    _need(cfg.logger.name != "wandb" or cfg.logger.get("mode") in ("offline", "online", "disabled"),
          f"logger.mode={cfg.logger.get('mode')!r} is not one of offline, online, disabled")
    # The data source checks its own keys (files exist, pairs are directions, ...) when it is built.
    from cpo.data.sources import build_source

    build_source(data)
