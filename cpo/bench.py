"""Training-throughput benchmark: SFT, CPO, DPO (live and cached reference), optionally against TRL.

What one measurement is
    A *step* is forward + backward + gradient clipping (1.0) + AdamW step + zero_grad on one
    pre-collated batch (data loading excluded, for TRL too: its step is timed from the Trainer's
    ``on_step_begin`` to ``on_step_end`` callbacks, which bracket exactly the same work plus TRL's
    own metric bookkeeping). A *chunk* is ``steps`` consecutive steps on the same ``steps`` batches;
    every implementation runs one chunk per repetition, repetitions are interleaved (our order is
    rotated every repetition; with TRL, its chunk runs inside ``trainer.train()`` and ours run
    from its callback between its chunks) and the first ``warmup`` repetitions are discarded. Reported: min
    and median over repetitions of pairs/s and completion tokens/s.

FLOPs
    Executed model FLOPs on real (non-pad) tokens: 2 x matmul parameters per token (forward),
    x3 with the backward (the usual 6 N T), plus causal attention (4 d ctx per token and layer),
    plus the LM head on the positions where each implementation actually runs it. A reference
    forward under no_grad counts 1/3 of that; recomputation under gradient checkpointing is not counted. Peak is a square fp32 matmul measured in the same
    process at the same thread count.

Memory
    CPU: each implementation runs in its own fresh subprocess (same imports for all, glibc's mmap
    threshold fixed at 64 KiB so RSS follows live memory, free heap trimmed before the mark); the
    peak RSS (VmHWM) is reset with /proc/self/clear_refs right before the first step:
    ``peak_rss_mb`` is the process's peak from the first step on, ``step_rss_mb`` what training
    adds above the loaded model and data (the first AdamW step, with gradients alive while the
    moment buffers are allocated, is in it). ``activation_mb`` counts, exactly, the tensors
    autograd saves for the backward of one step (parameters excluded). GPU:
    ``torch.cuda.max_memory_allocated``.

Sharing the prompt
    ``shared_prompt`` runs each prompt once instead of once per side: by default through
    PreferenceModule's KV-cache route (cpo.logprobs.completion_logps_shared_prompt); with
    ``packed``, through one forward over [prompt; chosen; rejected] with a 4D attention mask
    (cpo.logprobs.completion_logps_packed), measured here through a bench-only PreferenceModule
    subclass until the module calls it.

Fairness with TRL
    Same initial weights (deep copies), same pairs in the same order (TRL's sampler made
    sequential), same prompt and completion strings (token ids checked equal), same batch size,
    the same AdamW object type and settings passed to the Trainer, clipping at 1.0 on both sides,
    fp32, sigmoid loss with beta 0.1 and alpha 1.0, and gradient checkpointing off on both sides
    unless ``gradient_checkpointing`` (TRL's CPOConfig turns it on by default).
"""
from __future__ import annotations

import contextlib
import copy
import gc
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import torch
from torch import nn

from cpo.data import Collator, EncodedPair, PairEncoder, PreferenceExample, WindowBatchSampler, format_prompt

SRC, TGT = "zb", "en"
LOSSES = ("sft", "cpo", "dpo_live", "dpo_cached")


# --------------------------------------------------------------------------- models and data
@dataclass(frozen=True)
class ModelSpec:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int


MODELS = {
    "demo": ModelSpec(128, 2, 4, 2, 512),  # the embedded demo's model
    "h256": ModelSpec(256, 4, 8, 8, 1024),
    "tiny": ModelSpec(32, 2, 4, 2, 128),  # tests only
}


def make_examples(n: int, seed: int = 0) -> list[PreferenceExample]:
    """Demo (Zorbish -> English) pairs: chosen = the correct translation, rejected = a flawed one."""
    from cpo.demo.language import FLAWS, apply_flaw, sample_sentences
    from cpo.demo.systems import DEFAULT_SYSTEMS

    out = []
    for s in sample_sentences(n, seed):
        rejected = next((t for sys_ in DEFAULT_SYSTEMS for t in sys_.translate([s], seed) if t != s.translation), None)
        if rejected is None:
            rng = random.Random(f"{seed}:{s.source}")
            rejected = apply_flaw(s.translation, rng.choice(FLAWS), rng)
        out.append(PreferenceExample(s.source, s.translation, rejected, SRC, TGT))
    return out


def build_tokenizer(seed: int = 0, vocab_size: int = 1000):
    from cpo.demo.language import sample_sentences
    from cpo.tiny import train_bpe_tokenizer

    sents = sample_sentences(1500, seed + 1)
    texts = [s.source for s in sents] + [s.translation for s in sents] + [format_prompt("x", SRC, TGT)]
    return train_bpe_tokenizer(texts, vocab_size)


def build_model(tok, name: str, seed: int = 0, vocab_size: int | None = None) -> nn.Module:
    """The config's Llama; ``vocab_size`` above the tokenizer's pads the embedding and LM head
    (rows never used as inputs), to see what an LLM-sized vocabulary (LLaMA-2: 32000) costs."""
    from cpo.tiny import build_tiny_llama

    s = MODELS[name]
    model = build_tiny_llama(tok, s.hidden, s.layers, s.heads, s.kv_heads, s.ffn, seed=seed)
    if vocab_size and vocab_size > model.config.vocab_size:
        torch.manual_seed(seed)
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    model.config.use_cache = False
    return model.train()


@dataclass
class Workload:
    """Tokenizer, encoded pairs and the pre-collated batches every implementation runs on."""

    tok: object
    examples: list[PreferenceExample]
    pairs: list[EncodedPair]
    batch_size: int
    steps: int
    pad_id: int
    collator: Collator

    def batch_indices(self, group_by_length: bool = False, seed: int = 0) -> list[list[int]]:
        if not group_by_length:  # sequential: exactly the batches TRL's (sequential) loader forms
            return [list(range(s * self.batch_size, (s + 1) * self.batch_size)) for s in range(self.steps)]
        sampler = WindowBatchSampler(
            [len(p.chosen_ids) for p in self.pairs],
            [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in self.pairs],
            self.batch_size, shuffle=True, seed=seed, group_by_length=True,
        )
        return [[w.index for w in b] for b in sampler][: self.steps]

    def collate(self, idx: Sequence[int], ref: dict | None = None) -> dict:
        items = [{"pair": self.pairs[i]} | ({"ref": ref[self.pairs[i].index]} if ref is not None else {}) for i in idx]
        return self.collator(items)


def make_workload(batch_size: int, steps: int, n_pairs: int | None = None, seed: int = 0, tok=None) -> Workload:
    tok = tok or build_tokenizer(seed)
    n = n_pairs or batch_size * steps
    examples = make_examples(n, seed)
    enc = PairEncoder(tok, max_prompt_length=256, max_length=512)
    pairs = [enc.encode(i, ex) for i, ex in enumerate(examples)]
    assert all(p is not None for p in pairs) and not enc.counts.get("completion_truncated")
    return Workload(tok, examples, pairs, batch_size, steps, tok.pad_token_id, Collator(tok.pad_token_id))


# --------------------------------------------------------------------------- FLOPs and padding
@dataclass
class Work:
    """What one step processes: FLOPs on real tokens, processed positions (with padding), real positions."""

    flops: float = 0.0
    positions: int = 0
    real: int = 0
    completion_tokens: int = 0

    def __iadd__(self, o: "Work") -> "Work":
        self.flops += o.flops
        self.positions += o.positions
        self.real += o.real
        self.completion_tokens += o.completion_tokens
        return self


def _seg_flops(spec: ModelSpec, vocab: int, ctx0: int, n: int, head: int, grad: bool) -> float:
    """FLOPs of n new tokens after ctx0 cached ones, LM head on ``head`` positions."""
    d, L = spec.hidden, spec.layers
    dh = d // spec.heads
    per_layer = d * d * 2 + 2 * d * spec.kv_heads * dh + 3 * d * spec.ffn  # q, o, k, v, gate/up/down
    fwd = 2 * per_layer * L * n + 2 * d * vocab * head + 4 * d * L * (n * ctx0 + n * (n + 1) / 2)
    return fwd * (3 if grad else 1)


def ours_work(spec: ModelSpec, vocab: int, batch: dict, sides: Sequence[str], shared: bool | str, keep: bool, grad: bool) -> Work:
    """Work of one cpo.logprobs forward over ``sides``: ``shared`` False (concatenated), True (KV cache) or "packed"."""
    w = Work()
    pl = batch["prompt_mask"].sum(-1).tolist()
    P, B = batch["prompt_mask"].shape[1], batch["prompt_mask"].shape[0]
    cl = {s: batch[f"{s}_mask"].sum(-1).tolist() for s in sides}
    C = max(batch[f"{s}_mask"].shape[1] for s in sides)
    k = len(sides)
    for s in sides:
        w.completion_tokens += sum(cl[s])
    if shared and k > 1:
        # KV cache: prompt rows once, then k*B continuation rows; packed: B rows of prompt + every side.
        w.positions = B * P + (k * B * C if shared != "packed" else B * sum(batch[f"{s}_mask"].shape[1] for s in sides))
        for i in range(B):
            w.flops += _seg_flops(spec, vocab, 0, pl[i], 1, grad)
            w.real += pl[i]
            for s in sides:
                w.flops += _seg_flops(spec, vocab, pl[i], cl[s][i], cl[s][i], grad)
                w.real += cl[s][i]
    else:
        w.positions = k * B * (P + C)
        for s in sides:
            for i in range(B):
                n = pl[i] + cl[s][i]
                w.flops += _seg_flops(spec, vocab, 0, n, cl[s][i] + 1 if keep else n, grad)
                w.real += n
    return w


def trl_work(spec: ModelSpec, vocab: int, batch: dict) -> Work:
    """TRL's concatenated forward: [prompt+chosen; prompt+rejected] right-padded, LM head on every position."""
    w = Work()
    W = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    for s in ("chosen", "rejected"):
        n = batch[f"{s}_attention_mask"].sum(-1).tolist()
        w.positions += len(n) * W
        w.real += sum(n)
        w.completion_tokens += int((batch[f"{s}_labels"] != -100).sum())
        w.flops += sum(_seg_flops(spec, vocab, 0, x, x, True) for x in n)
    return w


def matmul_peak(threads: int, n: int = 1024, reps: int = 8, device: str = "cpu") -> float:
    """Best-of-reps FLOP/s of a square fp32 matmul."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = math.inf
    for _ in range(reps + 1):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _peak_n(device: str) -> int:
    return 4096 if device.startswith("cuda") else 1024


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- implementations
def make_optimizer(model: nn.Module, lr: float, fused: bool):
    """The one AdamW both sides use (TRL gets the same object type through ``optimizers=``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True if fused else None)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


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
    packed: bool = False  # cpo.logprobs.completion_logps_packed instead of the KV-cache route (needs shared_prompt)


class OursImpl:
    def __init__(self, v: Variant, init: nn.Module, wl: Workload, spec: ModelSpec, lr: float, device: str):
        from cpo.losses import PreferenceLoss
        from cpo.models import FrozenCopyReference
        from cpo.module import PreferenceModule

        self.name, self.v, self.device = v.name, v, device
        policy = copy.deepcopy(init).to(device).train()
        if v.gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        loss = {
            "sft": PreferenceLoss("sft", kind="none", alpha=1.0),
            "cpo": PreferenceLoss("cpo", kind="sigmoid", beta=0.1, alpha=1.0),
            "dpo_live": PreferenceLoss("dpo", kind="dpo", beta=0.1, alpha=0.0),
            "dpo_cached": PreferenceLoss("dpo", kind="dpo", beta=0.1, alpha=0.0),
        }[v.loss]
        net = policy if v.logits_to_keep else FullLogits(policy)
        reference = FrozenCopyReference(net) if v.loss == "dpo_live" else None
        forward = ("packed" if v.packed else "kv_cache") if v.shared_prompt else "concat"
        self.module = PreferenceModule(net, loss, optim=None, pad_id=wl.pad_id, reference=reference, forward=forward)
        self.opt, self.sched = make_optimizer(policy, lr, v.fused_adamw)
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.ref_cache_s = None
        ref = None
        if v.loss == "dpo_cached":
            from cpo.reference_cache import compute_reference_logps

            ref_model = copy.deepcopy(init).to(device)
            t = time.perf_counter()
            ref = compute_reference_logps(ref_model, lambda items: wl.collator(items), wl.pairs, wl.pad_id)
            self.ref_cache_s = time.perf_counter() - t
            del ref_model
        idx = wl.batch_indices(v.group_by_length)
        self.spec, self.vocab = spec, policy.config.vocab_size
        self.set_batches([wl.collate(i, ref) for i in idx])

    def set_batches(self, batches: list[dict]) -> None:
        v = self.v
        self.batches = [{k: t.to(self.device) for k, t in b.items()} for b in batches]
        sides = ["chosen"] if v.loss == "sft" else ["chosen", "rejected"]
        # The KV-cache route falls back to the concatenated forward under gradient checkpointing (in
        # training mode); the packed one does not.
        mode = ("packed" if v.packed else True) if v.shared_prompt else False
        shared = mode if (v.packed or not v.gradient_checkpointing) else False
        self.work = []
        for b in self.batches:
            w = ours_work(self.spec, self.vocab, b, sides, shared, v.logits_to_keep, True)
            if v.loss == "dpo_live":  # the frozen copy is in eval mode: it does share the prompt
                r = ours_work(self.spec, self.vocab, b, sides, mode, v.logits_to_keep, False)
                w.flops += r.flops
                w.positions += r.positions
                w.real += r.real
            self.work.append(w)

    def compute(self, batch: dict, train: bool = True):
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
        times = []
        for b in self.batches:
            _sync(self.device)
            t = time.perf_counter()
            self.step(b)
            _sync(self.device)
            times.append(time.perf_counter() - t)
        return times


# --------------------------------------------------------------------------- TRL
def trl_available() -> bool:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        import trl.experimental.cpo  # noqa: F401
    except Exception:
        return False
    return True


class TrlImpl:
    """TRL's CPOTrainer on the same weights, pairs (same prompt and completion strings), batches and optimizer."""

    name = "trl_cpo"

    def __init__(self, init: nn.Module, wl: Workload, spec: ModelSpec, lr: float, device: str, fused: bool, threads: int, total_steps: int,
                 gradient_checkpointing: bool = False):
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        import datasets
        from torch.utils.data import SequentialSampler
        from transformers.utils import logging as hf_logging
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        hf_logging.set_verbosity_error()
        datasets.disable_progress_bar()

        class SequentialCPOTrainer(CPOTrainer):
            # Same batches as ours, in the same order (TRL would shuffle).
            def _get_train_sampler(self, train_dataset=None):
                return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        self.device = device
        self.model = copy.deepcopy(init).to(device).train()
        if gradient_checkpointing:  # the Trainer turns it on only inside train(); on now, for the first-batch checks too
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        n = wl.batch_size * wl.steps
        # Our completion is the continuation of the prompt after one space (cpo.data.PairEncoder); TRL
        # tokenizes prompt+answer as given, adds BOS to the prompt and EOS to the answer.
        data = {
            "prompt": [format_prompt(e.source, e.src_lang, e.tgt_lang) for e in wl.examples[:n]],
            "chosen": [" " + e.chosen for e in wl.examples[:n]],
            "rejected": [" " + e.rejected for e in wl.examples[:n]],
        }
        self.tmp = tempfile.TemporaryDirectory(prefix="cpo-bench-trl-")
        args = CPOConfig(
            output_dir=self.tmp.name, per_device_train_batch_size=wl.batch_size, learning_rate=lr, max_steps=total_steps,
            beta=0.1, cpo_alpha=1.0, loss_type="sigmoid", max_length=512, max_grad_norm=1.0, weight_decay=0.0,
            report_to="none", logging_strategy="no", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
            dataloader_pin_memory=False, remove_unused_columns=False, use_cpu=not device.startswith("cuda"), seed=0,
            bf16=False, fp16=False, gradient_accumulation_steps=1,
            gradient_checkpointing=gradient_checkpointing,  # TRL's own default is True; ours is False: same on both sides
        )
        self.opt, self.sched = make_optimizer(self.model, lr, fused)
        self.trainer = SequentialCPOTrainer(
            model=self.model, args=args, train_dataset=datasets.Dataset.from_dict(data), processing_class=wl.tok,
            optimizers=(self.opt, self.sched),
        )
        torch.set_num_threads(threads)  # in case anything in the Trainer's set-up changed it
        self.batches = list(self.trainer.get_train_dataloader())
        self.work = [trl_work(spec, self.model.config.vocab_size, b) for b in self.batches]
        self.train_rows = self.trainer.train_dataset

    def token_check(self, wl: Workload) -> dict:
        """Do TRL's token ids equal ours (prompt with BOS + completion with EOS) for every pair?"""
        same, n = 0, len(self.train_rows)
        for i in range(n):
            row, p = self.train_rows[i], wl.pairs[i]
            ok = (
                row["chosen_input_ids"] == p.prompt_ids + p.chosen_ids
                and row["rejected_input_ids"] == p.prompt_ids + p.rejected_ids
                and sum(x != -100 for x in row["chosen_labels"]) == len(p.chosen_ids)
                and sum(x != -100 for x in row["rejected_labels"]) == len(p.rejected_ids)
            )
            same += ok
        return {"pairs": n, "identical_ids": same}

    def first_batch_loss(self) -> torch.Tensor:
        """TRL's training loss on the first batch, with its graph (for the activation-memory count)."""
        loss = self.trainer.compute_loss(self.trainer.model, self.trainer._prepare_inputs(self.batches[0]))
        self.trainer._stored_metrics.clear()
        return loss

    @torch.no_grad()
    def first_batch(self) -> dict:
        b = self.trainer._prepare_inputs(self.batches[0])
        loss, metrics = self.trainer.get_batch_loss_metrics(self.trainer.model, b, train_eval="train")
        c, r = self.trainer.concatenated_forward(self.trainer.model, b)[:2]
        self.trainer._stored_metrics.clear()
        return {"loss": float(loss), "chosen": c.cpu(), "rejected": r.cpu(), "nll": metrics["nll_loss"]}

    def train(self, on_chunk: Callable[[list[float]], None], steps: int, on_step_begin: Callable[[], None] | None = None) -> None:
        """Runs trainer.train(); after every ``steps`` steps calls ``on_chunk(step_times)`` (outside the timed region)."""
        from transformers import TrainerCallback

        device = self.device

        class Timer(TrainerCallback):
            def __init__(self):
                self.t0, self.times = 0.0, []

            def on_step_begin(self, args, state, control, **kw):
                if on_step_begin is not None:
                    on_step_begin()
                _sync(device)
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                _sync(device)
                self.times.append(time.perf_counter() - self.t0)
                if len(self.times) == steps:
                    times, self.times = self.times, []
                    on_chunk(times)

        from transformers.trainer_callback import PrinterCallback

        self.trainer.remove_callback(PrinterCallback)  # it prints the end-of-training metrics dict
        self.trainer.add_callback(Timer())
        self.trainer.train()


def compare_first_batch(ours: OursImpl, trl: TrlImpl) -> dict:
    """Loss and per-sequence log-probs of both implementations on the first batch, same initial weights."""
    from cpo.logprobs import completion_logps

    got = trl.first_batch()
    b = ours.batches[0]
    with torch.no_grad():
        loss = float(ours.compute(b, train=False))
        c, r = completion_logps(ours.module.policy, b["prompt_ids"], b["prompt_mask"],
                                [(b["chosen_ids"], b["chosen_mask"]), (b["rejected_ids"], b["rejected_mask"])], ours.module.pad_id)
    return {
        "ours_loss": loss,
        "trl_loss": got["loss"],
        "loss_abs_diff": abs(loss - got["loss"]),
        "logps_max_abs_diff": float(max((c.sum.cpu() - got["chosen"]).abs().max(), (r.sum.cpu() - got["rejected"]).abs().max())),
        "logps_scale": float(torch.cat([got["chosen"], got["rejected"]]).abs().max()),
    }


# --------------------------------------------------------------------------- memory
def saved_activation_mb(fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor]) -> float:
    """MiB of tensors autograd keeps for the backward of ``fn()`` (distinct storages, parameters excluded).

    Exact and independent of the allocator, unlike RSS: the activation memory of one step.
    """
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    del loss
    return sum(seen.values()) / 2**20


def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out


def reset_peak_rss() -> int:
    """Resets the kernel's peak-RSS mark (Linux >= 4.0); returns the current RSS in bytes.

    Free heap memory is handed back first (glibc ``malloc_trim``), so what a process allocated and
    freed before (tokenization, a reference-cache pass) cannot hide the growth that follows.
    """
    gc.collect()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _proc_status()["VmRSS"]


def memory_probe(cfg: dict) -> dict:
    """One implementation in this (fresh) process: peak RSS from its first step on, over two chunks.

    The peak mark is reset right before the first step (TRL: in its first ``on_step_begin``), so
    building the model, tokenizing and TRL's data set map are not in it, the first AdamW step
    (gradients alive while the moment buffers are allocated) is.
    """
    torch.set_num_threads(cfg["threads"])
    if cfg.get("import_trl"):
        trl_available()  # same imports in every probe, so the baselines compare
    import cpo.module  # noqa: F401

    wl = make_workload(cfg["batch_size"], cfg["steps"], seed=cfg["seed"])
    init = build_model(wl.tok, cfg["model"], seed=cfg["seed"], vocab_size=cfg.get("vocab_size"))
    spec = MODELS[cfg["model"]]
    mark = {}
    if cfg["impl"] == "trl_cpo":
        impl = TrlImpl(init, wl, spec, cfg["lr"], "cpu", cfg["fused"], cfg["threads"], total_steps=2 * cfg["steps"],
                       gradient_checkpointing=cfg.get("gradient_checkpointing", False))
        del init
        impl.train(lambda t: None, cfg["steps"], on_step_begin=lambda: mark.setdefault("base", reset_peak_rss()))
    else:
        impl = OursImpl(Variant(**cfg["variant"]), init, wl, spec, cfg["lr"], "cpu")
        del init
        mark["base"] = reset_peak_rss()
        impl.run_chunk()
        impl.run_chunk()
    st = _proc_status()
    return {"peak_rss_mb": st["VmHWM"] / 2**20, "step_rss_mb": (st["VmHWM"] - mark["base"]) / 2**20}


def probe_memory_subprocess(cfgs: list[dict], parallel: int = 2) -> list[dict]:
    """Runs ``memory_probe`` for each config in its own Python process (``parallel`` at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(cfg):
        code = "import json,sys; from cpo.bench import memory_probe; print('PROBE ' + json.dumps(memory_probe(json.loads(sys.argv[1]))))"
        # A fixed mmap threshold (glibc) returns every freed block above 64 KiB to the OS at once, so RSS
        # follows live memory instead of the allocator's history, and repeated probes agree to ~0.1 MB.
        env = dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1", OMP_NUM_THREADS=str(cfg["threads"]), MALLOC_MMAP_THRESHOLD_="65536")
        r = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], capture_output=True, text=True, env=env,
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        for line in r.stdout.splitlines():
            if line.startswith("PROBE "):
                return json.loads(line[6:])
        return {"error": (r.stderr or r.stdout)[-2000:]}

    with ThreadPoolExecutor(parallel) as ex:
        return list(ex.map(one, cfgs))


# --------------------------------------------------------------------------- the measuring loop
def _stats(chunks: list[list[float]], work: list[Work], pairs_per_step: int, peak: float) -> dict:
    tot = Work()
    for w in work:
        tot += w
    times = sorted(sum(c) for c in chunks)
    tmin, tmed = times[0], statistics.median(times)
    n = len(work)
    return {
        "step_s_min": tmin / n, "step_s_median": tmed / n,
        "pairs_per_s_max": pairs_per_step * n / tmin, "pairs_per_s_median": pairs_per_step * n / tmed,
        "completion_tokens_per_s_median": tot.completion_tokens / tmed,
        "completion_tokens_per_s_max": tot.completion_tokens / tmin,
        "flops_per_step": tot.flops / n,
        "flops_per_s_median": tot.flops / tmed,
        "peak_share_median": tot.flops / tmed / peak,
        "peak_share_max": tot.flops / tmin / peak,
        "padding_share": 1 - tot.real / tot.positions,
        "reps": len(chunks),
    }


@dataclass
class BenchArgs:
    models: Sequence[str] = ("demo", "h256")
    batch_size: int = 8
    threads: int = 1
    reps: int = 5
    warmup: int = 1
    steps: int = 3
    lr: float = 1e-5
    against: str | None = None
    shared_prompt: bool = True
    fused_adamw: bool = True  # TRL's default optimizer (adamw_torch_fused) since torch 2.8
    levers: bool = False
    vocab_size: int | None = None
    gradient_checkpointing: bool = False
    packed: bool = True  # the shared prompt through cpo.logprobs.completion_logps_packed (PreferenceModule's default forward)
    memory: str = "subprocess"  # subprocess | off
    device: str = "cpu"
    seed: int = 0


def bench_model(name: str, a: BenchArgs, peak: float, log=print) -> dict:
    torch.manual_seed(a.seed)
    spec = MODELS[name]
    lever_pool = 16 if a.levers else None  # batches of the pool the length-grouping lever draws from
    wl = make_workload(a.batch_size, a.steps, seed=a.seed)
    init = build_model(wl.tok, name, seed=a.seed, vocab_size=a.vocab_size)
    n_params = sum(p.numel() for p in init.parameters())
    base = dict(shared_prompt=a.shared_prompt, fused_adamw=a.fused_adamw, gradient_checkpointing=a.gradient_checkpointing,
                packed=a.packed and a.shared_prompt)
    variants = [Variant(l, l, **base) for l in LOSSES]
    if a.levers:  # explicit configurations around our default one (duplicates of it are measured again)
        cpo, dpo = variants[1], variants[2]
        for base_v, stem in ((cpo, "cpo"), (dpo, "dpo_live")):
            variants += [
                replace(base_v, name=f"{stem}[concat]", shared_prompt=False, packed=False),
                replace(base_v, name=f"{stem}[kv_cache]", shared_prompt=True, packed=False),
                replace(base_v, name=f"{stem}[packed]", shared_prompt=True, packed=True),
            ]
        variants += [
            replace(cpo, name="cpo[concat,full_logits]", shared_prompt=False, packed=False, logits_to_keep=False),
            replace(cpo, name=f"cpo[fused_adamw={not a.fused_adamw}]", fused_adamw=not a.fused_adamw),
        ]
    impls = [OursImpl(v, init, wl, spec, a.lr, a.device) for v in variants]
    if a.levers:  # length grouping: a bigger pool, the same model, random vs length-grouped batches
        pool = make_workload(a.batch_size, lever_pool, seed=a.seed, tok=wl.tok)
        for g in (False, True):
            v = replace(variants[1], name=f"cpo[pool,group_by_length={g}]", group_by_length=g)
            impl = OursImpl(v, init, pool, spec, a.lr, a.device)
            if not g:  # random order (not sequential) for the ungrouped pool batches
                order = list(range(len(pool.pairs)))
                random.Random(a.seed).shuffle(order)
                idx = [order[s * a.batch_size : (s + 1) * a.batch_size] for s in range(lever_pool)]
                impl.set_batches([pool.collate(i) for i in idx])
            impls.append(impl)
    chunks: dict[str, list[list[float]]] = {i.name: [] for i in impls}
    gpu_mem: dict[str, int] = {}

    def run_ours(rep: int) -> None:
        k = rep % len(impls)
        for impl in impls[k:] + impls[:k]:  # rotate the order every repetition
            if a.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            t = impl.run_chunk()
            if a.device.startswith("cuda"):
                gpu_mem[impl.name] = max(gpu_mem.get(impl.name, 0), torch.cuda.max_memory_allocated())
            if rep >= a.warmup:
                chunks[impl.name].append(t)

    result: dict = {"model": name, "spec": asdict(spec), "parameters": n_params, "vocab": init.config.vocab_size,
                    "tokenizer_vocab": len(wl.tok)}
    act = {i.name: saved_activation_mb(lambda: i.compute(i.batches[0]), i.params) for i in impls}
    trl = None
    if a.against == "trl":
        total = (a.warmup + a.reps) * a.steps
        trl = TrlImpl(init, wl, spec, a.lr, a.device, a.fused_adamw, a.threads, total, a.gradient_checkpointing)
        result["trl_tokens"] = trl.token_check(wl)
        result["trl_first_batch"] = compare_first_batch(impls[1], trl)
        act[trl.name] = saved_activation_mb(trl.first_batch_loss, list(trl.model.parameters()))
        chunks[trl.name] = []
        rep = [0]

        def on_chunk(times):
            if rep[0] >= a.warmup:
                chunks[trl.name].append(times)
            run_ours(rep[0])
            rep[0] += 1

        if a.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        trl.train(on_chunk, a.steps)
        if a.device.startswith("cuda"):
            gpu_mem[trl.name] = torch.cuda.max_memory_allocated()
    else:
        for r in range(a.warmup + a.reps):
            run_ours(r)

    res = {}
    for impl in impls + ([trl] if trl else []):
        res[impl.name] = _stats(chunks[impl.name], impl.work, a.batch_size, peak)
        res[impl.name]["activation_mb"] = act[impl.name]
        if getattr(impl, "ref_cache_s", None) is not None:
            res[impl.name]["ref_cache_s"] = impl.ref_cache_s
            res[impl.name]["ref_cache_s_per_pair"] = impl.ref_cache_s / len(wl.pairs)
        if impl.name in gpu_mem:
            res[impl.name]["peak_gpu_mb"] = gpu_mem[impl.name] / 2**20
    result["results"] = res

    if a.memory == "subprocess" and not a.device.startswith("cuda"):
        names = list(LOSSES) + (["trl_cpo"] if trl else [])
        cfgs = []
        for n in names:
            cfg = dict(model=name, impl=n, batch_size=a.batch_size, steps=a.steps, lr=a.lr, threads=a.threads, seed=a.seed,
                       fused=a.fused_adamw, import_trl=trl is not None, vocab_size=a.vocab_size,
                       gradient_checkpointing=a.gradient_checkpointing)
            if n != "trl_cpo":
                cfg["variant"] = asdict(next(v for v in variants if v.name == n))
            cfgs.append(cfg)
        log(f"[bench] {name}: memory probes ({len(cfgs)} subprocesses)")
        for n, m in zip(names, probe_memory_subprocess(cfgs)):
            res[n].update(m)

    r = res
    ratios = {
        "cpo_step_over_dpo_live_median": r["cpo"]["step_s_median"] / r["dpo_live"]["step_s_median"],
        "cpo_step_over_dpo_live_min": r["cpo"]["step_s_min"] / r["dpo_live"]["step_s_min"],
        "dpo_cached_step_over_cpo_median": r["dpo_cached"]["step_s_median"] / r["cpo"]["step_s_median"],
        "dpo_cached_step_over_cpo_min": r["dpo_cached"]["step_s_min"] / r["cpo"]["step_s_min"],
    }
    if trl:
        ratios["cpo_pairs_per_s_over_trl_median"] = r["cpo"]["pairs_per_s_median"] / r["trl_cpo"]["pairs_per_s_median"]
        ratios["cpo_pairs_per_s_over_trl_max"] = r["cpo"]["pairs_per_s_max"] / r["trl_cpo"]["pairs_per_s_max"]
        if "peak_rss_mb" in r["cpo"] and "peak_rss_mb" in r["trl_cpo"]:
            ratios["cpo_peak_rss_over_trl"] = r["cpo"]["peak_rss_mb"] / r["trl_cpo"]["peak_rss_mb"]
            ratios["cpo_step_rss_over_trl"] = r["cpo"]["step_rss_mb"] / max(r["trl_cpo"]["step_rss_mb"], 1e-9)
        ratios["cpo_activation_over_trl"] = r["cpo"]["activation_mb"] / r["trl_cpo"]["activation_mb"]
    if a.levers:
        def speed(x, y):  # how much faster y is than x (median and best)
            return {"median": r[x]["step_s_median"] / r[y]["step_s_median"], "best": r[x]["step_s_min"] / r[y]["step_s_min"]}

        fu_on, fu_off = ("cpo", f"cpo[fused_adamw={not a.fused_adamw}]")[:: 1 if a.fused_adamw else -1]
        g0, g1 = "cpo[pool,group_by_length=False]", "cpo[pool,group_by_length=True]"
        result["levers"] = {
            "kv_cache_over_concat_speedup_cpo": speed("cpo[concat]", "cpo[kv_cache]"),
            "kv_cache_over_concat_speedup_dpo_live": speed("dpo_live[concat]", "dpo_live[kv_cache]"),
            "packed_over_concat_speedup_cpo": speed("cpo[concat]", "cpo[packed]"),
            "packed_over_concat_speedup_dpo_live": speed("dpo_live[concat]", "dpo_live[packed]"),
            "packed_over_kv_cache_speedup_cpo": speed("cpo[kv_cache]", "cpo[packed]"),
            "logits_to_keep_speedup_concat": speed("cpo[concat,full_logits]", "cpo[concat]"),
            "logits_to_keep_activation_mb": {"full": r["cpo[concat,full_logits]"]["activation_mb"], "kept": r["cpo[concat]"]["activation_mb"]},
            "fused_adamw_speedup": speed(fu_off, fu_on),
            "group_by_length_speedup_pairs_per_s": {
                "median": r[g1]["pairs_per_s_median"] / r[g0]["pairs_per_s_median"],
                "best": r[g1]["pairs_per_s_max"] / r[g0]["pairs_per_s_max"],
            },
            "group_by_length_padding_share": {"random": r[g0]["padding_share"], "grouped": r[g1]["padding_share"]},
        }
    result["ratios"] = ratios
    return result


def format_model(res: dict, peak: float) -> list[str]:
    s = res["spec"]
    lines = [f"== model {res['model']} (hidden {s['hidden']}, {s['layers']} layers, {s['heads']} heads, {s['kv_heads']} kv heads, "
             f"ffn {s['ffn']}, vocab {res['vocab']}, {res['parameters'] / 1e6:.2f}M parameters)"]
    hdr = f"{'impl':34s} {'pairs/s med':>11s} {'(best)':>8s} {'tok/s med':>9s} {'step ms med':>11s} {'(min)':>7s} {'GFLOP/s':>8s} {'%peak':>6s} {'pad%':>5s} {'act MB':>6s} {'RSS MB':>7s} {'+step MB':>8s}"
    lines.append(hdr)
    for n, r in res["results"].items():
        mem = f"{r['peak_rss_mb']:7.0f} {r['step_rss_mb']:8.1f}" if "peak_rss_mb" in r else (f"{r['peak_gpu_mb']:7.0f} {'(gpu)':>8s}" if "peak_gpu_mb" in r else f"{'-':>7s} {'-':>8s}")
        lines.append(f"{n:34s} {r['pairs_per_s_median']:11.1f} {r['pairs_per_s_max']:8.1f} {r['completion_tokens_per_s_median']:9.0f} "
                     f"{1e3 * r['step_s_median']:11.1f} {1e3 * r['step_s_min']:7.1f} {r['flops_per_s_median'] / 1e9:8.2f} "
                     f"{100 * r['peak_share_median']:6.1f} {100 * r['padding_share']:5.1f} {r['activation_mb']:6.1f} {mem}")
        if "ref_cache_s" in r:
            lines.append(f"{'':34s} (reference log-probs computed once before training: {1e3 * r['ref_cache_s_per_pair']:.2f} ms/pair, "
                         f"not in the step time)")
        if "error" in r:
            lines.append(f"{'':34s} memory probe failed: {r['error'][-300:]}")
    for k, v in res["ratios"].items():
        lines.append(f"  {k}: {v:.3f}")
    if "trl_first_batch" in res:
        t, c = res["trl_first_batch"], res["trl_tokens"]
        lines.append(f"  TRL token ids identical to ours for {c['identical_ids']}/{c['pairs']} pairs")
        lines.append(f"  first-batch loss: ours {t['ours_loss']:.7f}  TRL {t['trl_loss']:.7f}  |diff| {t['loss_abs_diff']:.2e}; "
                     f"max |diff| of sequence log-probs {t['logps_max_abs_diff']:.2e} (values up to {t['logps_scale']:.1f})")
    if "levers" in res:
        for k, v in res["levers"].items():
            lines.append(f"  lever {k}: " + ", ".join(f"{a} {b:.3f}" for a, b in v.items()))
    return lines


def run_train_bench(a: BenchArgs, log=print) -> dict:
    torch.set_num_threads(a.threads)
    if a.against == "trl" and not trl_available():
        raise RuntimeError("--against trl: trl (with trl.experimental.cpo) is not importable")
    t0 = time.perf_counter()
    peak = matmul_peak(a.threads, n=_peak_n(a.device), device=a.device)
    log(f"[bench] fp32 matmul peak ({_peak_n(a.device)}^3, {a.threads} thread(s), {a.device}): {peak / 1e9:.1f} GFLOP/s")
    out = {"mode": "train", "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(a).items()},
           "matmul_peak_flops": peak, "torch": torch.__version__, "models": {}}
    for name in a.models:
        res = bench_model(name, a, peak, log)
        for line in format_model(res, peak):
            log(line)
        out["models"][name] = res
    out["peak_after_flops"] = matmul_peak(a.threads, n=_peak_n(a.device), device=a.device)
    out["wall_s"] = time.perf_counter() - t0
    log(f"[bench] matmul peak re-measured at the end: {out['peak_after_flops'] / 1e9:.1f} GFLOP/s; wall {out['wall_s']:.0f} s")
    return out


# --------------------------------------------------------------------------- generation
def run_generation_bench(models: Sequence[str], threads: int, n_sentences: int = 64, n_single: int = 8,
                         batch_sizes: Sequence[int] = (16, 64), num_beams: int = 5, max_new_tokens: int = 24, reps: int = 3,
                         seed: int = 0, log=print) -> dict:
    """Sentences/s of cpo.generation.translate batched vs one sentence at a time (interleaved repetitions).

    The models are random-initialised, so beams rarely stop early: every sentence decodes
    ``max_new_tokens`` tokens in both modes, which keeps the per-sentence work equal.
    """
    from cpo.generation import translate

    torch.set_num_threads(threads)
    tok = build_tokenizer(seed)
    sources = [e.source for e in make_examples(n_sentences, seed + 7)]
    out = {"mode": "generation", "threads": threads, "num_beams": num_beams, "max_new_tokens": max_new_tokens,
           "sentences": n_sentences, "single_sentences": n_single, "batch_sizes": list(batch_sizes), "models": {}}
    kw = dict(num_beams=num_beams, max_new_tokens=max_new_tokens)
    for name in models:
        model = build_model(tok, name, seed).eval()
        runs: dict[int, list[float]] = {bs: [] for bs in (1, *batch_sizes)}
        for bs in runs:  # warm-up
            translate(model, tok, sources[: max(bs, 1)], SRC, TGT, batch_size=bs, **kw)
        for r in range(reps):
            order = list(runs) if r % 2 == 0 else list(runs)[::-1]
            for bs in order:
                n = n_single if bs == 1 else len(sources)
                t = time.perf_counter()
                translate(model, tok, sources[:n], SRC, TGT, batch_size=bs, **kw)
                runs[bs].append(n / (time.perf_counter() - t))
        res = {"single_sent_per_s_median": statistics.median(runs[1]), "single_sent_per_s_max": max(runs[1]), "batched": {}}
        for bs in batch_sizes:
            med, best = statistics.median(runs[bs]), max(runs[bs])
            res["batched"][bs] = {"sent_per_s_median": med, "sent_per_s_max": best,
                                  "speedup_median": med / res["single_sent_per_s_median"], "speedup_best": best / res["single_sent_per_s_max"]}
            log(f"== generation {name}: {num_beams} beams, {max_new_tokens} new tokens: batch {bs}: {med:.1f} sent/s (best {best:.1f}) "
                f"vs one at a time {res['single_sent_per_s_median']:.1f} sent/s (best {res['single_sent_per_s_max']:.1f}): "
                f"speedup median {med / res['single_sent_per_s_median']:.1f}x, best {best / res['single_sent_per_s_max']:.1f}x")
        out["models"][name] = res
    return out
