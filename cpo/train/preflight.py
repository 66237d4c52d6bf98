"""What a run checks and settles about its numerics and hardware before it loads any data or model.

- ``model.dtype=auto`` (``model=hf``'s default) becomes a concrete dtype here, in the config itself, so the run's
  record and fingerprint name what was loaded: bfloat16 only where the trained weights cannot end up as bf16
  weights updated without an fp32 copy, float32 otherwise.
- Settings known to diverge (half-precision weights without fp32 master weights) are refused; bf16 weights
  trained the same way, asked for explicitly, get a one-line warning (they train, but lose small updates).
- The strategy and the accelerator are checked against this machine (a GPU-only strategy without a GPU,
  DeepSpeed not installed) in one sentence, instead of after minutes of loading.
"""
from __future__ import annotations

import importlib.util

from omegaconf import DictConfig

from cpo.console import warn
from cpo.errors import ConfigError

BF16 = ("bfloat16", "bf16")


def _strategy_callable(cfg: DictConfig):
    """The function or class ``trainer.strategy._target_`` names (None for a Lightning strategy name)."""
    node = cfg.trainer.get("strategy")
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return None
    try:
        from hydra.utils import get_method

        return get_method(node._target_)
    except Exception:  # noqa: BLE001 - building the trainer names a target that does not exist
        return None


def _strategy_trait(cfg: DictConfig, trait: str, default=None):
    """A trait the strategy factory declares (cpo.train.strategies), or what Lightning's own names imply."""
    fn = _strategy_callable(cfg)
    if fn is not None:
        return getattr(fn, trait, default)
    name = str(cfg.trainer.get("strategy", "auto"))
    if name.startswith("deepspeed"):  # Lightning's registry names: deepspeed, deepspeed_stage_2, ...
        from cpo.train.strategies import deepspeed

        return getattr(deepspeed, trait, default)
    return default


def keeps_fp32_master_weights(cfg: DictConfig) -> bool:
    """DeepSpeed's bf16/fp16 optimizer keeps an fp32 copy of every trained weight, whatever the model's dtype."""
    return bool(_strategy_trait(cfg, "keeps_fp32_master_weights", False))


def bf16_is_safe(cfg: DictConfig) -> bool:
    """Whether loading the model in bfloat16 still trains float32 weights.

    True for a LoRA adapter on an unsharded model (the base is frozen, and peft keeps the adapter in float32
    on a bf16 base) and for a strategy with fp32 master weights (DeepSpeed). Not for full fine-tuning under
    Lightning's own precision plugins: ``bf16-mixed`` autocasts the computation but updates the weights in
    the dtype they were loaded in, so bf16 weights stay bf16 weights without an fp32 copy.
    """
    if keeps_fp32_master_weights(cfg):
        return True
    lora = cfg.model.get("lora") is not None
    sharded = bool(cfg.get("build_in_configure_model", False))  # FSDP keeps the adapter in the base's dtype
    return lora and not sharded and str(cfg.trainer.get("precision")) not in ("bf16-true", "bf16")


def resolve_model_dtype(cfg: DictConfig) -> str:
    """``model.dtype``, with ``auto`` settled (written back into ``cfg``); a warning for unsafe explicit bf16."""
    dtype = str(cfg.model.dtype)
    if dtype == "auto":
        dtype = "bfloat16" if bf16_is_safe(cfg) else "float32"
        cfg.model.dtype = dtype
    elif dtype in BF16 and not bf16_is_safe(cfg):
        warn(f"model.dtype={dtype} with trainer.precision={cfg.trainer.get('precision')} updates the trained "
            f"weights in bf16 without fp32 master weights (full fine-tuning, or an adapter a sharded strategy keeps "
            f"in bf16): updates under about 1/256 of a weight are lost and the policy is saved in bf16; "
            f"model.dtype=auto loads float32 (bf16-mixed still computes in bf16)")
    if str(cfg.trainer.get("precision")) in ("bf16-true", "bf16") and not keeps_fp32_master_weights(cfg):
        warn(f"trainer.precision={cfg.trainer.precision} casts every weight, a LoRA adapter's too, to bf16 "
            f"and trains it without fp32 master weights; bf16-mixed keeps float32 weights")
    return dtype


def check_numerics(cfg: DictConfig) -> None:
    """Settings known to diverge or crash, refused before anything is built."""
    if str(cfg.model.dtype) in ("float16", "fp16"):
        raise ConfigError("model.dtype=float16 trains half-precision weights without fp32 master weights, which "
                          "diverges; use model.dtype=bfloat16, or float32 with trainer.precision=16-mixed")
    ratio = cfg.get("guard", {}).get("min_chrf_ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1):
        raise ConfigError(f"guard.min_chrf_ratio must be a number in [0, 1] or null (off), got {ratio!r}")
    if str(cfg.trainer.get("precision")) in ("16-true", "16", "half"):
        raise ConfigError(f"trainer.precision={cfg.trainer.precision} trains half-precision weights without fp32 "
                          "master weights, which diverges; use 16-mixed or bf16-mixed")
    if cfg.model.get("lora") is not None and cfg.model.lora.get("load_in_4bit"):  # QLoRA: a GPU and bitsandbytes
        from cpo.train.quantization import check_4bit

        check_4bit(sharded=bool(cfg.get("build_in_configure_model", False)))


def _gpus_visible() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_hardware(cfg: DictConfig) -> None:
    """The strategy's packages and the accelerator it asks for exist on this machine, or one sentence says what
    is missing and what to do (before any data or model is loaded)."""
    t = cfg.trainer
    name = cfg.get("strategy_name") or t.get("strategy")
    missing, todo = [], []
    for package, install in (_strategy_trait(cfg, "requires", None) or {}).items():
        if importlib.util.find_spec(package) is None:
            missing.append(f"the {package} package (not installed)")
            todo.append(f"install it ({install})")
    accel, devices = str(t.get("accelerator", "auto")), t.get("devices", "auto")
    gpus = _gpus_visible() if accel in ("gpu", "cuda") else None
    if gpus == 0:
        missing.append(f"a GPU (trainer.accelerator={accel}; torch sees none on this machine)")
        todo.append("run it on a GPU machine, or choose strategy=auto or ddp_cpu here")
    elif gpus is not None and isinstance(devices, int) and devices > gpus:
        missing.append(f"{devices} GPUs (trainer.devices={devices}; torch sees {gpus} on this machine)")
        todo.append(f"give trainer.devices={gpus} or fewer (or devices=auto)")
    if missing:
        raise ConfigError(f"strategy={name} needs {' and '.join(missing)}: {', and '.join(todo)}")


def _looks_like_hub_id(name: object) -> bool:
    import re

    return isinstance(name, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None


def check_hub_names(cfg: DictConfig) -> None:
    """A model or adapter named by a hub id that this machine cannot get (the hub unreachable or HF_HUB_OFFLINE
    set, and not in the local cache) is one sentence now, not after the data has loaded (cpo.hub.hub_files_only)."""
    from pathlib import Path

    from cpo.hub import hub_files_only

    lora = cfg.model.get("lora")
    for key, name in (("model.name_or_path", cfg.model.get("name_or_path")),
                      ("model.lora.adapter", lora.get("adapter") if lora is not None else None)):
        if _looks_like_hub_id(name) and not Path(name).expanduser().exists():
            hub_files_only(key, name)
