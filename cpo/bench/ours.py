"""Our implementation under measurement: PreferenceModule's loss and forward, stepped by hand."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from torch import nn

from cpo.bench.flops import ours_work, sync
from cpo.bench.policies import make_optimizer
from cpo.bench.workload import ModelSpec, Workload


class FullLogits(nn.Module):
    """Ignores ``logits_to_keep``: the LM head runs on every position (the "full logits" lever's baseline)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **kw):
        kw.pop("logits_to_keep", None)
        return self.model(**kw)


@dataclass
class Variant:
    """One of our configurations."""

    name: str
    loss: str  # sft | cpo | dpo_live | dpo_cached
    shared_prompt: bool = True
    logits_to_keep: bool = True
    fused_adamw: bool = False
    group_by_length: bool = False
    gradient_checkpointing: bool = False
    # cpo.train.logprobs.completion_logps_packed instead of the KV-cache route (needs shared_prompt)
    packed: bool = False
    # logps.chunk_tokens: the output projection a chunk of tokens at a time (cpo.train.chunked_logps); "auto" is
    # the project's default (chunked for vocabularies from 65,536 on), None the full logits
    chunk_tokens: int | str | None = "auto"

    @property
    def forward(self) -> str:
        return ("packed" if self.packed else "kv_cache") if self.shared_prompt else "concat"


def autocast_context(device: str, precision: str):
    """bf16: the compute of Lightning's ``bf16-mixed`` (torch.autocast), on weights stored in bf16."""
    if precision == "bf16":
        return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


class OursImpl:
    def __init__(
        self, v: Variant, policies, wl: Workload, spec: ModelSpec, lr: float, device: str, precision: str = "fp32"
    ):
        from cpo.train.chunked_logps import LogpsSettings
        from cpo.train.losses import PreferenceLoss
        from cpo.train.module import PreferenceModule

        self.name, self.v, self.device, self.precision = v.name, v, device, precision
        self.policies = policies
        policy, self.params = policies.get(v.name, v.gradient_checkpointing)
        loss = {
            "sft": PreferenceLoss("sft", kind="none", alpha=1.0),
            "cpo": PreferenceLoss("cpo", kind="sigmoid", beta=0.1, alpha=1.0),
            "dpo_live": PreferenceLoss("dpo", kind="dpo", beta=0.1, alpha=0.0),
            "dpo_cached": PreferenceLoss("dpo", kind="dpo", beta=0.1, alpha=0.0),
        }[v.loss]
        net = policy if v.logits_to_keep else FullLogits(policy)
        reference = policies.reference(net) if v.loss == "dpo_live" else None
        # The full-logits lever's wrapper is not a causal LM the chunked path can split: it runs the full path.
        self.logps = LogpsSettings(v.chunk_tokens if v.logits_to_keep else None)
        self.module = PreferenceModule(net, loss, optim=None, pad_id=wl.pad_id, reference=reference, forward=v.forward,
                                       logps=self.logps)
        self.opt, self.sched = make_optimizer(self.params, lr, v.fused_adamw)
        self.ref_cache_s = None
        ref = None
        if v.loss == "dpo_cached":
            from cpo.train.reference_cache import compute_reference_logps

            t = time.perf_counter()
            with policies.reference_model() as ref_model, self.autocast():
                ref = compute_reference_logps(ref_model, lambda items: wl.collator(items), wl.pairs, wl.pad_id,
                                              logps=self.logps)
            self.ref_cache_s = time.perf_counter() - t
        idx = wl.batch_indices(v.group_by_length)
        self.spec, self.vocab = spec, policy.config.vocab_size
        self.set_batches([wl.collate(i, ref) for i in idx])

    def autocast(self):
        return autocast_context(self.device, self.precision)

    def set_batches(self, batches: list[dict]) -> None:
        v, lora = self.v, self.policies.lora
        self.batches = [{k: t.to(self.device) for k, t in b.items()} for b in batches]
        sides = ["chosen"] if v.loss == "sft" else ["chosen", "rejected"]
        # The KV-cache route falls back to the concatenated forward under gradient checkpointing (in
        # training mode); the packed one does not.
        gc = v.gradient_checkpointing or bool(lora and lora.inputs_require_grad)
        mode = ("packed" if v.packed else True) if v.shared_prompt else False
        shared = mode if (v.packed or not gc) else False
        # A frozen copy runs in eval mode (it does share the prompt); the adapter-disabled LoRA reference
        # is the policy itself, in training mode.
        ref_mode = shared if lora else mode
        self.work = []
        for b in self.batches:
            w = ours_work(self.spec, self.vocab, b, sides, shared, v.logits_to_keep, True, lora)
            if v.loss == "dpo_live":
                w += ours_work(self.spec, self.vocab, b, sides, ref_mode, v.logits_to_keep, False)
                w.completion_tokens -= sum(int(b[f"{s}_mask"].sum()) for s in sides)  # counted once
            self.work.append(w)

    def activate(self) -> None:
        self.policies.activate(self.v.name)

    def compute(self, batch: dict, train: bool = True):
        with self.autocast():
            loss, stats = self.module.compute(batch, train=train)
            self.module.summarize(stats, self.module.loss.alpha)  # the metrics a training step logs
        return loss

    def step(self, batch: dict) -> None:
        loss = self.compute(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)

    def run_chunk(self) -> list[float]:
        self.activate()
        times = []
        for b in self.batches:
            sync(self.device)
            t = time.perf_counter()
            self.step(b)
            sync(self.device)
            times.append(time.perf_counter() - t)
        return times
