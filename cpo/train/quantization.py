"""QLoRA's base model (Dettmers et al. 2023): the frozen weights in 4-bit NF4, a LoRA adapter trained on top.

Optional: it needs a CUDA GPU and bitsandbytes (``bash scripts/install.sh qlora``, i.e. ``pip install
'cpo[qlora]'``). Where either is missing, :func:`check_4bit` refuses ``model.lora.load_in_4bit=true`` in one
sentence before anything is loaded or trained. No GPU has been lent to the tasks that built this, so the
loading below is written to transformers' and peft's documented QLoRA recipe but has only run its refusals.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from cpo.errors import ConfigError

EXTRA = "pip install 'cpo[qlora]' (or bash scripts/install.sh qlora)"


def check_4bit(sharded: bool = False, cuda: bool | None = None, bitsandbytes: bool | None = None) -> None:
    """ConfigError (one sentence, what to do) unless a 4-bit base can be trained here; ``cuda`` and
    ``bitsandbytes`` default to what this machine has."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if bitsandbytes is None:
        bitsandbytes = importlib.util.find_spec("bitsandbytes") is not None
    if not cuda:
        raise ConfigError("model.lora.load_in_4bit=true (QLoRA) needs a CUDA GPU, and this machine has none: "
                          "set model.lora.load_in_4bit=false to train the adapter on the full-precision base here")
    if not bitsandbytes:
        raise ConfigError(f"model.lora.load_in_4bit=true (QLoRA) needs bitsandbytes, which is not installed: {EXTRA}")
    if sharded:
        raise ConfigError("model.lora.load_in_4bit=true (QLoRA) is not supported with build_in_configure_model=true "
                          "(FSDP, DeepSpeed ZeRO-3): use strategy=auto or ddp")


def quantization_config(compute_dtype):
    """transformers' BitsAndBytesConfig of QLoRA: NF4 with double quantization, computing in the model's dtype."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def load_4bit_base(name_or_path: str, torch_dtype, attn_implementation: str | None = None,
                   trust_remote_code: bool = False, gradient_checkpointing: bool = False, sharded: bool = False):
    """The base model quantized to 4 bits on this process's GPU, prepared for training an adapter on it
    (peft's ``prepare_model_for_kbit_training``: norms in fp32, input gradients for checkpointing)."""
    check_4bit(sharded)
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    from cpo.io import Unavailable

    kwargs = {"quantization_config": quantization_config(torch_dtype), "dtype": torch_dtype,
              "device_map": {"": torch.cuda.current_device()}, "local_files_only": Path(name_or_path).exists(),
              "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise Unavailable(f"model.name_or_path={name_or_path!r} cannot be loaded ({first}); use a local path, "
                          "or a machine with hub access") from None
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                           gradient_checkpointing_kwargs={"use_reentrant": False})
