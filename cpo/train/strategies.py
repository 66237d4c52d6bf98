"""Lightning strategies that need Python objects (layer classes, DeepSpeed configs) built from YAML."""
from __future__ import annotations

from typing import Sequence


def _layer_classes(names: Sequence[str]) -> set[type]:
    """Decoder-layer classes by name, from whichever transformers model modules define them."""
    import importlib

    found = set()
    for name in names:
        family = name.replace("DecoderLayer", "").lower()
        try:
            mod = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        except ImportError:
            continue
        cls = getattr(mod, name, None)
        if cls is not None:
            found.add(cls)
    if not found:
        raise ValueError(f"strategy.layer_class_names: none of {list(names)} is a transformers decoder layer")
    return found


def fsdp(
    layer_class_names: Sequence[str] = ("LlamaDecoderLayer",),
    sharding_strategy: str = "FULL_SHARD",
    activation_checkpointing: bool = False,
    cpu_offload: bool = False,
    state_dict_type: str = "full",
):
    """FSDP wrapping each decoder layer; ``use_orig_params`` lets frozen base weights and LoRA share a unit."""
    from lightning.pytorch.strategies import FSDPStrategy

    layers = _layer_classes(layer_class_names)
    return FSDPStrategy(
        auto_wrap_policy=layers,
        activation_checkpointing_policy=layers if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        cpu_offload=cpu_offload,
        use_orig_params=True,
        state_dict_type=state_dict_type,
    )


def deepspeed(stage: int = 2, offload_optimizer: bool = False, offload_parameters: bool = False, **kwargs):
    """DeepSpeed ZeRO (needs `pip install cpo[deepspeed]` and a GPU to fit)."""
    try:
        from lightning.pytorch.strategies import DeepSpeedStrategy
    except ImportError as e:  # pragma: no cover
        raise RuntimeError("strategy=deepspeed_*: `pip install cpo[deepspeed]`") from e
    return DeepSpeedStrategy(stage=stage, offload_optimizer=offload_optimizer, offload_parameters=offload_parameters,
                             **kwargs)


# Read by cpo.train.preflight before anything loads: what the strategy needs installed, and that DeepSpeed's
# bf16/fp16 optimizer keeps fp32 master weights (so a bf16-loaded model still trains float32 weights).
deepspeed.requires = {"deepspeed": "bash scripts/install.sh deepspeed, or pip install 'cpo[deepspeed]'"}
deepspeed.keeps_fp32_master_weights = True
