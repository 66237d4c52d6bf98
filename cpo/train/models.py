"""Policy and tokenizer from a hub name, a local path or a tiny config; LoRA; dropout; the DPO reference.

Nothing here downloads unless ``name_or_path`` is a hub name that is not a local folder, i.e.
unless the user's config names a remote model.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # A list of module names, or one string as peft reads it: "all-linear" (every linear layer but the output
    # head) or a regular expression matched against whole module names.
    target_modules: str | Sequence[str] = ("down_proj",)
    adapter: str | None = None  # an existing adapter to keep training (ALMA's LoRA), by path or hub name
    # peft's variants of a fresh adapter (a continued adapter brings its own, stored in its adapter_config.json):
    use_dora: bool = False      # DoRA (Liu et al. 2024): a trained magnitude per output feature beside the direction
    use_rslora: bool = False    # rank-stabilised scaling alpha / sqrt(r) instead of alpha / r (Kalajdzievski 2023)
    modules_to_save: Sequence[str] | None = None  # modules trained in full and saved with the adapter, e.g. [lm_head]
    # QLoRA (Dettmers et al. 2023): the frozen base loaded in 4-bit NF4 by bitsandbytes (a CUDA GPU and the
    # `qlora` extra); cpo.train.quantization refuses it in one sentence where either is missing.
    load_in_4bit: bool = False


def _local_only(key: str, name_or_path: str) -> bool:
    """Load from local files only: a local path, or a cached hub name while the hub cannot be used (cpo.io)."""
    from cpo.hub import hub_files_only

    return hub_files_only(key, name_or_path)


def load_tokenizer(name_or_path: str, padding_side: str = "left", key: str = "model.name_or_path"):
    """Tokenizer with a pad token (EOS when the model defines none, as LLaMA-2 does)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, local_files_only=_local_only(key, name_or_path))
    except OSError as e:
        raise _unavailable(key, name_or_path, e) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_causal_lm(name_or_path: str, dtype: str = "float32", attn_implementation: str | None = None,
                   trust_remote_code: bool = False, key: str = "model.name_or_path"):
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"model.dtype: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    if not Path(name_or_path).exists() and (name_or_path.startswith(("/", "./", "../", "~"))):
        raise FileNotFoundError(f"{key}: {name_or_path} does not exist")
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype], "local_files_only": _local_only(key, name_or_path),
                              "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except OSError as e:
        raise _unavailable(key, name_or_path, e) from None
    except Exception as e:  # noqa: BLE001 - only a damaged weight file is turned into a sentence
        if damaged_weights(e):
            raise _damaged(key, name_or_path, e) from None
        raise


def add_lora(model: nn.Module, lora: LoraSettings, uniform_dtype: bool = False) -> nn.Module:
    """Wrap in a peft LoRA adapter: a fresh one, or an existing adapter kept trainable.

    peft keeps adapter weights in fp32 on a bf16 base by default (better updates); FSDP flattens each
    wrapped layer into one tensor of one dtype and refuses that mix, so ``uniform_dtype`` (sharded
    strategies) keeps the adapter in the base model's dtype, as TRL does for ZeRO-3.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    autocast = not uniform_dtype
    variants = {k: v for k, v in (("use_dora", lora.use_dora), ("use_rslora", lora.use_rslora),
                                  ("modules_to_save", lora.modules_to_save)) if v}
    if lora.adapter and variants:
        from cpo.errors import ConfigError

        raise ConfigError(f"model.lora.{next(iter(variants))} applies to a fresh adapter, but model.lora.adapter="
                          f"{lora.adapter} continues one whose settings are stored with it; leave it out "
                          "(or set model.lora.adapter=null for a fresh adapter)")
    if lora.adapter:
        try:
            return PeftModel.from_pretrained(model, lora.adapter, is_trainable=True, autocast_adapter_dtype=autocast,
                                             local_files_only=_local_only("model.lora.adapter", lora.adapter))
        except (OSError, ValueError) as e:
            raise _unavailable("model.lora.adapter", lora.adapter, e) from None
        except Exception as e:  # noqa: BLE001
            if damaged_weights(e):
                raise _damaged("model.lora.adapter", lora.adapter, e) from None
            raise
    cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
        use_dora=bool(lora.use_dora),
        use_rslora=bool(lora.use_rslora),
        modules_to_save=list(lora.modules_to_save) if lora.modules_to_save else None,
    )
    return get_peft_model(model, cfg, autocast_adapter_dtype=autocast)


_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
# Float attributes that hold a dropout probability: Llama/Qwen/Mistral attention copy config.attention_dropout
# into ``self.attention_dropout`` at construction, so changing the config alone would not reach them.
_DROPOUT_NAME = re.compile(r"(dropout|pdrop)", re.IGNORECASE)


def zero_dropout(model: nn.Module) -> int:
    """Set every dropout probability to 0, as ALMA-R's trainer and TRL's ``disable_dropout=True`` do.

    Covers ``nn.Dropout`` modules (peft's LoRA dropout included), float dropout attributes of modules
    (attention dropout read in forward) and the model config's dropout fields. Returns how many were nonzero.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, _DROPOUT_MODULES):
            changed += module.p != 0
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if _DROPOUT_NAME.search(name) and isinstance(value, float):
                changed += value != 0
                setattr(module, name, 0.0)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        for name, value in config.to_dict().items():
            if _DROPOUT_NAME.search(name) and isinstance(value, float):
                changed += value != 0
                setattr(config, name, 0.0)
    return int(changed)


def build_policy(
    name_or_path: str,
    dtype: str = "float32",
    lora: LoraSettings | None = None,
    gradient_checkpointing: bool = False,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    disable_dropout: bool = True,
    sharded: bool = False,
) -> nn.Module:
    """The policy to train; ``sharded`` when FSDP / ZeRO-3 will wrap it (see :func:`add_lora`)."""
    if lora is not None and lora.load_in_4bit:  # QLoRA: a 4-bit base, prepared for training an adapter on it
        from cpo.train.quantization import load_4bit_base

        if dtype not in DTYPES:
            raise ValueError(f"model.dtype: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
        model = load_4bit_base(name_or_path, DTYPES[dtype], attn_implementation, trust_remote_code,
                               gradient_checkpointing, sharded)
    else:
        model = load_causal_lm(name_or_path, dtype, attn_implementation, trust_remote_code)
    model.config.use_cache = False  # training never reads the cache; generation turns it back on
    if gradient_checkpointing and not (lora is not None and lora.load_in_4bit):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:
            model.enable_input_require_grads()  # frozen embeddings would otherwise cut the graph
    if lora is not None:
        model = add_lora(model, lora, uniform_dtype=sharded)
    if disable_dropout:  # after add_lora, so the adapter's own dropout (ALMA's 0.05) is switched off too
        n = zero_dropout(model)
        if n:
            log.info("model.disable_dropout: %d dropout settings set to 0", n)
    # from_pretrained returns eval mode; training mode matters when model.disable_dropout=false.
    return model.train()


def _unavailable(key: str, name: str, e: Exception):
    from cpo.io import Unavailable

    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return Unavailable(f"{key}={name!r} cannot be loaded ({first}); use a local path, or a machine with hub access")


def damaged_weights(e: BaseException) -> bool:
    """A weight file cut short or corrupted (a copy or save that did not finish): safetensors' header or data
    errors, a torch ``.bin`` archive that cannot be read."""
    import pickle

    text = str(e)
    return (type(e).__name__ == "SafetensorError" or isinstance(e, (EOFError, pickle.UnpicklingError))
            or (isinstance(e, RuntimeError) and ("PytorchStreamReader" in text or "zip archive" in text)))


def _damaged(key: str, name: str, e: BaseException):
    from cpo.io import Unavailable

    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return Unavailable(f"{key}={name}: a weight file is damaged or cut short ({first}); copy the model again, "
                       "or save it again from its run")


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


def save_policy(policy: nn.Module, save_dir, state_dict: dict | None = None) -> None:
    """``save_pretrained`` of the trained policy: for LoRA only the trained adapter, never the DPO reference copy."""
    if is_peft(policy):
        policy.save_pretrained(save_dir, state_dict=state_dict, selected_adapters=[policy.active_adapter])
    else:
        policy.save_pretrained(save_dir, state_dict=state_dict)


# --------------------------------------------------------------------------- DPO reference
# The DPO reference (paper eq. 2) is the policy as training starts. How that is obtained depends on
# how the policy starts:
#   full fine-tuning   -> frozen_copy (a second, frozen model) or cached;
#   fresh LoRA         -> adapter_disabled (B = 0 at start, so base model = start), reference_adapter,
#                         frozen_copy or cached;
#   continued adapter  -> reference_adapter (a frozen copy of the starting adapter on the same base,
#                         TRL's ref_adapter_name), frozen_copy or cached. adapter_disabled would be the
#                         bare base model, not the start, and is refused.
REFERENCE_MODES = ("auto", "adapter_disabled", "reference_adapter", "frozen_copy", "cached")
REFERENCE_ADAPTER = "reference"
FULL, FRESH_LORA, CONTINUED_ADAPTER = "full fine-tuning", "a fresh LoRA adapter", "a continued adapter"


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Eval mode for a reference forward (a fixed function of the input), each module's mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class Reference:
    """Reference log-probs for DPO: ``with ref.model_for(policy) as m`` gives the network to run under no_grad."""

    mode: str = "none"

    def model_for(self, policy: nn.Module):  # pragma: no cover - interface
        raise NotImplementedError


class AdapterDisabledReference(Reference):
    """A fresh LoRA's reference: the same network with its adapter switched off, no second copy.

    Equal to the starting policy only because a fresh adapter's B matrices are zero."""

    mode = "adapter_disabled"

    @contextlib.contextmanager
    def model_for(self, policy: nn.Module):
        with policy.disable_adapter(), eval_mode(policy):
            yield policy


class AdapterReference(Reference):
    """A continued adapter's reference: a frozen copy of the starting adapter, held by peft beside the trained one.

    The copy is made in memory from the adapter as loaded (bit for bit the starting policy, no second
    read of a hub adapter) under the name ``reference``, frozen, its dropout 0. ``model_for`` switches
    to it and back; peft's ``set_adapter`` changes ``requires_grad``, so every flag is restored exactly:
    the optimizer, built from the parameters that require grad, never sees the copy.
    """

    mode = "reference_adapter"

    def __init__(self, policy: nn.Module, name: str = REFERENCE_ADAPTER):
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        if name in policy.peft_config:
            raise ValueError(f"the policy already has an adapter named {name!r}")
        self.name, self.trained = name, policy.active_adapter
        cfg = copy.deepcopy(policy.peft_config[self.trained])
        cfg.inference_mode = True
        if hasattr(cfg, "lora_dropout"):
            cfg.lora_dropout = 0.0
        flags = [(p, p.requires_grad) for p in policy.parameters()]
        modes = [(m, m.training) for m in policy.modules()]
        policy.add_adapter(name, cfg)
        start = get_peft_model_state_dict(policy, adapter_name=self.trained)
        result = set_peft_model_state_dict(policy, {k: v.detach().clone() for k, v in start.items()}, adapter_name=name)
        missing = [k for k in result.missing_keys if f".{name}." in k]
        if missing:
            raise RuntimeError(f"the reference adapter copy misses {len(missing)} weights, e.g. {missing[0]}")
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, training in modes:
            m.training = training
        for n, p in policy.named_parameters():
            if f".{name}." in n:
                p.requires_grad_(False)

    @contextlib.contextmanager
    def model_for(self, policy: nn.Module):
        flags = [(p, p.requires_grad) for p in policy.parameters()]
        policy.set_adapter(self.name, inference_mode=True)
        try:
            with eval_mode(policy):
                yield policy
        finally:
            policy.set_adapter(self.trained)
            for p, flag in flags:
                p.requires_grad_(flag)


class FrozenCopyReference(Reference):
    """A frozen copy of the starting policy (held outside the module tree); any setup, twice the memory."""

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


def policy_start(lora: LoraSettings | None) -> str:
    """How the policy starts, from its settings: full fine-tuning, a fresh LoRA or a continued adapter."""
    if lora is None:
        return FULL
    return CONTINUED_ADAPTER if lora.adapter else FRESH_LORA


def infer_policy_start(policy: nn.Module) -> str:
    """How a built policy starts, from its weights: a LoRA adapter is fresh iff every B matrix is zero."""
    if not is_peft(policy):
        return FULL
    cfg = policy.peft_config[policy.active_adapter]
    if getattr(cfg, "peft_type", None) is None or str(cfg.peft_type.value) != "LORA":
        return CONTINUED_ADAPTER  # no such test for other adapter types: never assume the base model is the start
    b = re.compile(rf"lora_(embedding_)?B\.{re.escape(policy.active_adapter)}(\.|$)")
    nonzero = any(p.detach().abs().sum() != 0 for n, p in policy.named_parameters() if b.search(n))
    return CONTINUED_ADAPTER if nonzero else FRESH_LORA


def resolve_reference_mode(mode: str, start: str, sharded: bool = False) -> str:
    """The concrete reference for ``loss.reference=mode``; ConfigError when it would not be the starting policy."""
    from cpo.errors import ConfigError

    if mode not in REFERENCE_MODES:
        raise ConfigError(f"loss.reference={mode!r} is not one of {', '.join(REFERENCE_MODES)}")
    if sharded:
        # The sharded policy exists only inside configure_model, wrapped by FSDP / ZeRO-3: no second copy,
        # no cache pass and no adapter switching have been checked there; the adapter switched off is.
        if start != FRESH_LORA:
            raise ConfigError(
                f"with build_in_configure_model=true (FSDP, DeepSpeed ZeRO-3) the only DPO reference is the LoRA "
                f"adapter switched off, which is the starting policy only for a fresh adapter, but this policy is "
                f"{start}: use an unsharded strategy (e.g. strategy=deepspeed_zero2 or ddp) for loss.reference={mode}")
        if mode not in ("auto", "adapter_disabled"):
            raise ConfigError(f"with build_in_configure_model=true (FSDP, DeepSpeed ZeRO-3) loss.reference={mode} is "
                              f"not supported; use loss.reference=auto or adapter_disabled (the adapter switched off)")
        return "adapter_disabled"
    if mode == "auto":
        return {FULL: "frozen_copy", FRESH_LORA: "adapter_disabled", CONTINUED_ADAPTER: "reference_adapter"}[start]
    if mode in ("adapter_disabled", "reference_adapter") and start == FULL:
        raise ConfigError(f"loss.reference={mode} needs a LoRA policy (model.lora); with full fine-tuning use "
                          f"loss.reference=auto (a frozen copy of the starting model) or cached")
    if mode == "adapter_disabled" and start == CONTINUED_ADAPTER:
        raise ConfigError("loss.reference=adapter_disabled would be the bare base model, not the starting policy, "
                          "because model.lora.adapter continues a trained adapter; use loss.reference=auto (a frozen "
                          "copy of that adapter), frozen_copy or cached")
    return mode


_INFER = object()


def build_reference(mode: str, policy: nn.Module | None, lora: LoraSettings | None | object = _INFER,
                    sharded: bool = False) -> Reference | None:
    """The DPO reference for ``loss.reference=mode``: always the policy as training starts.

    ``lora`` (the run's LoRA settings, None for full fine-tuning) says how the policy starts; left out,
    it is read from the policy's weights (:func:`infer_policy_start`). ``sharded``: the policy is built
    later, in ``configure_model`` (``policy`` is then None). Returns None for ``cached`` (the log-probs
    then travel with the batch, see cpo/train/reference_cache.py).
    """
    if lora is _INFER:
        if policy is None:
            raise ValueError("build_reference needs the policy or its LoRA settings")
        start = infer_policy_start(policy)
    else:
        start = policy_start(lora)  # type: ignore[arg-type]
    resolved = resolve_reference_mode(mode, start, sharded)
    if resolved == "cached":
        return None
    if resolved == "adapter_disabled":
        return AdapterDisabledReference()
    if policy is None:
        raise ValueError(f"loss.reference={resolved} needs the built policy")
    if resolved == "reference_adapter":
        return AdapterReference(policy)
    return FrozenCopyReference(policy)
