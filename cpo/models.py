"""Policy and tokenizer from a hub name, a local path or a tiny config; LoRA; the DPO reference.

Nothing here downloads unless ``name_or_path`` is a hub name that is not a local folder, i.e.
unless the user's config names a remote model.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Sequence[str] = ("down_proj",)
    adapter: str | None = None  # an existing adapter to keep training (ALMA's LoRA), by path or hub name


def _local_only(name_or_path: str) -> bool:
    return Path(name_or_path).exists()


def load_tokenizer(name_or_path: str, padding_side: str = "left"):
    """Tokenizer with a pad token (EOS when the model defines none, as LLaMA-2 does)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, local_files_only=_local_only(name_or_path))
    except OSError as e:
        raise _unavailable("model.name_or_path", name_or_path, e) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_causal_lm(name_or_path: str, dtype: str = "float32", attn_implementation: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"model.dtype: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    if not _local_only(name_or_path) and (name_or_path.startswith(("/", "./", "../", "~"))):
        raise FileNotFoundError(f"model.name_or_path: {name_or_path} does not exist")
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype], "local_files_only": _local_only(name_or_path), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except OSError as e:
        raise _unavailable("model.name_or_path", name_or_path, e) from None


def add_lora(model: nn.Module, lora: LoraSettings) -> nn.Module:
    """Wrap in a peft LoRA adapter: a fresh one, or an existing adapter kept trainable."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if lora.adapter:
        try:
            return PeftModel.from_pretrained(model, lora.adapter, is_trainable=True, local_files_only=_local_only(lora.adapter))
        except (OSError, ValueError) as e:
            raise _unavailable("model.lora.adapter", lora.adapter, e) from None
    cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def build_policy(
    name_or_path: str,
    dtype: str = "float32",
    lora: LoraSettings | None = None,
    gradient_checkpointing: bool = False,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> nn.Module:
    model = load_causal_lm(name_or_path, dtype, attn_implementation, trust_remote_code)
    model.config.use_cache = False  # training never reads the cache; generation turns it back on
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:
            model.enable_input_require_grads()  # frozen embeddings would otherwise cut the graph
    if lora is not None:
        model = add_lora(model, lora)
    # from_pretrained returns eval mode; training must see dropout (e.g. ALMA's LoRA dropout 0.05).
    return model.train()


def _unavailable(key: str, name: str, e: Exception):
    from cpo.io import Unavailable

    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return Unavailable(f"{key}={name!r} cannot be loaded ({first}); use a local path, or a machine with hub access")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


# --------------------------------------------------------------------------- DPO reference
class Reference:
    """Reference log-probs for DPO: ``with ref.model_for(policy) as m`` gives the network to run under no_grad."""

    mode: str = "none"

    def model_for(self, policy: nn.Module):  # pragma: no cover - interface
        raise NotImplementedError


class AdapterDisabledReference(Reference):
    """With LoRA, the reference is the same network with its adapter switched off: no second copy."""

    mode = "adapter_disabled"

    @contextlib.contextmanager
    def model_for(self, policy: nn.Module):
        with policy.disable_adapter():
            yield policy


class FrozenCopyReference(Reference):
    """With full fine-tuning, a frozen copy of the starting policy (held outside the module tree)."""

    mode = "frozen_copy"

    def __init__(self, policy: nn.Module):
        self._holder = [copy.deepcopy(policy).eval().requires_grad_(False)]

    @property
    def model(self) -> nn.Module:
        return self._holder[0]

    def to(self, device) -> "FrozenCopyReference":
        self._holder[0] = self._holder[0].to(device)
        return self

    @contextlib.contextmanager
    def model_for(self, policy: nn.Module):
        device = next(policy.parameters()).device
        if next(self.model.parameters()).device != device:
            self.to(device)
        yield self.model


def build_reference(mode: str, policy: nn.Module) -> Reference | None:
    """mode: auto (adapter_disabled with LoRA, else frozen_copy), adapter_disabled, frozen_copy, cached."""
    if mode == "cached":
        return None  # log-probs travel with the batch (cpo/reference_cache.py)
    if mode == "auto":
        mode = "adapter_disabled" if is_peft(policy) else "frozen_copy"
    if mode == "adapter_disabled":
        if not is_peft(policy):
            raise ValueError("loss.reference=adapter_disabled needs a LoRA policy (model.lora)")
        return AdapterDisabledReference()
    if mode == "frozen_copy":
        return FrozenCopyReference(policy)
    raise ValueError(f"loss.reference: unknown mode {mode!r} (known: auto, adapter_disabled, frozen_copy, cached)")
