"""Where each implementation's trainable model comes from: full copies, or LoRA adapters on one shared base.

Every implementation starts from the same weights. With full fine-tuning each gets a deep copy of the
initial model. With LoRA (the ALMA-R setting) a copy per implementation of a 7B or 13B base would not
fit on one GPU and would measure nothing the adapters do not: the implementations share one frozen
base on the device, each trains its own adapter (same seed, so the same initial weights), and the
one being measured is made the active adapter first.
"""

from __future__ import annotations

import contextlib
import copy
import re

import torch
from torch import nn

from cpo.bench.flops import Lora


def make_optimizer(params: list[nn.Parameter], lr: float, fused: bool):
    """The one AdamW every implementation uses (TRL gets the same object type through ``optimizers=``)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True if fused else None)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _enable_gradient_checkpointing(model: nn.Module) -> None:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class FullCopies:
    """Full fine-tuning: each implementation trains a deep copy of ``init`` on ``device``."""

    lora: Lora | None = None

    def __init__(self, init: nn.Module, device: str):
        self.init, self.device = init, device

    def get(self, name: str, gradient_checkpointing: bool = False) -> tuple[nn.Module, list[nn.Parameter]]:
        policy = copy.deepcopy(self.init).to(self.device).train()
        if gradient_checkpointing:
            _enable_gradient_checkpointing(policy)
        return policy, [p for p in policy.parameters() if p.requires_grad]

    def activate(self, name: str) -> None:
        pass

    def reference(self, policy: nn.Module):
        from cpo.train.models import FrozenCopyReference

        return FrozenCopyReference(policy)

    @contextlib.contextmanager
    def reference_model(self):
        """The starting model, for reference log-probs computed once."""
        model = copy.deepcopy(self.init).to(self.device)
        yield model
        del model


class SharedLora:
    """One base model (already on its device), one LoRA adapter per implementation."""

    def __init__(self, base: nn.Module, lora: Lora, seed: int = 0, gradient_checkpointing: bool = False):
        if gradient_checkpointing:  # as cpo.train.models.build_policy: frozen embeddings would otherwise cut the graph
            _enable_gradient_checkpointing(base)
            base.enable_input_require_grads()
        self.base, self.seed, self.model = base, seed, None
        self.lora = Lora(lora.r, lora.targets, inputs_require_grad=gradient_checkpointing)

    @staticmethod
    def key(name: str) -> str:
        return re.sub(r"\W", "_", name)

    def get(self, name: str, gradient_checkpointing: bool = False) -> tuple[nn.Module, list[nn.Parameter]]:
        """``gradient_checkpointing`` is the shared base's setting, fixed at construction."""
        from peft import LoraConfig, get_peft_model

        key = self.key(name)
        cfg = LoraConfig(
            r=self.lora.r,
            lora_alpha=2 * self.lora.r,
            lora_dropout=0.0,
            target_modules=list(self.lora.targets),
            bias="none",
            task_type="CAUSAL_LM",
        )
        torch.manual_seed(self.seed)  # every adapter starts from the same weights
        if self.model is None:
            self.model = get_peft_model(self.base, cfg, adapter_name=key)
        else:
            self.model.add_adapter(key, cfg)
        self.model.train()
        return self.model, [p for n, p in self.model.named_parameters() if f".{key}." in n]

    def activate(self, name: str) -> None:
        self.model.set_adapter(self.key(name))  # also makes only this adapter's parameters require gradients

    def reference(self, policy: nn.Module):
        from cpo.train.models import AdapterDisabledReference

        return AdapterDisabledReference()

    @contextlib.contextmanager
    def reference_model(self):
        with self.model.disable_adapter():
            yield self.model
