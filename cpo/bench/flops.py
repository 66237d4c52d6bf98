"""FLOP accounting on real (non-pad) tokens, padding shares, and the matmul peak they are compared with.

Executed model FLOPs, counted per segment of new tokens:
- linear layers: 2 x parameters per token forward; the backward adds 2 x for the gradient of the
  input and, for trainable weights only, 2 x for the weight gradient: 6 N T with full fine-tuning,
  4 N T for LoRA's frozen base (no weight gradient is computed for it);
- causal attention: 4 d ctx per token and layer forward, x 3 with the backward (no weights);
- the LM head on the positions where an implementation actually runs it, counted like a linear layer;
- LoRA's own matrices, 2 r (d_in + d_out) per token and target, x 3 (trainable);
- with LoRA and nothing below the lowest adapter needing a gradient (``down_proj`` only, and the
  input embeddings not asked for gradients, as without gradient checkpointing), the first layer's
  backward stops at its ``down_proj``: only its adapter is differentiated.
A reference forward under no_grad counts the forward only. Recomputation under gradient
checkpointing is not counted (the model FLOPs convention).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from cpo.bench.workload import ModelSpec


@dataclass(frozen=True)
class Lora:
    """Where the trainable parameters are, for the FLOP count: rank and target projections."""

    r: int
    targets: tuple[str, ...] = ("down_proj",)
    inputs_require_grad: bool = False  # gradient checkpointing turns it on (cpo.train.models.build_policy)

    def dims(self, spec: ModelSpec) -> list[tuple[int, int]]:
        d, kv = spec.hidden, spec.kv_heads * (spec.hidden // spec.heads)
        shapes = {
            "q_proj": (d, d),
            "k_proj": (d, kv),
            "v_proj": (d, kv),
            "o_proj": (d, d),
            "gate_proj": (d, spec.ffn),
            "up_proj": (d, spec.ffn),
            "down_proj": (spec.ffn, d),
        }
        return [shapes[t] for t in self.targets]


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


def seg_flops(spec: ModelSpec, vocab: int, ctx0: int, n: int, head: int, grad: bool, lora: Lora | None = None) -> float:
    """FLOPs of n new tokens after ctx0 cached ones, LM head on ``head`` positions."""
    d, L = spec.hidden, spec.layers
    dh = d // spec.heads
    per_layer = d * d * 2 + 2 * d * spec.kv_heads * dh + 3 * d * spec.ffn  # q, o, k, v, gate/up/down
    attn = 4 * d * (n * ctx0 + n * (n + 1) / 2)  # per layer
    linear, head_f = 2 * per_layer * L * n, 2 * d * vocab * head
    if not grad:
        return linear + head_f + attn * L
    if lora is None:
        return 3 * (linear + head_f + attn * L)
    adapters = sum(2 * lora.r * (a + b) for a, b in lora.dims(spec)) * L * n
    # Layers whose inputs need a gradient: all, unless the lowest trainable matrix is the first layer's down_proj.
    stop_early = not lora.inputs_require_grad and set(lora.targets) == {"down_proj"}
    grad_layers = L - 1 if stop_early else L
    return (linear + 2 * per_layer * grad_layers * n) + 2 * head_f + attn * (L + 2 * grad_layers) + 3 * adapters


_seg_flops = seg_flops  # the name the tests used


def ours_work(
    spec: ModelSpec,
    vocab: int,
    batch: dict,
    sides: Sequence[str],
    shared: bool | str,
    keep: bool,
    grad: bool,
    lora: Lora | None = None,
) -> Work:
    """Work of one cpo.train.logprobs forward over ``sides``: ``shared`` False (concatenated), True (KV cache)
    or "packed"."""
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
            w.flops += seg_flops(spec, vocab, 0, pl[i], 1, grad, lora)
            w.real += pl[i]
            for s in sides:
                w.flops += seg_flops(spec, vocab, pl[i], cl[s][i], cl[s][i], grad, lora)
                w.real += cl[s][i]
    else:
        w.positions = k * B * (P + C)
        for s in sides:
            for i in range(B):
                n = pl[i] + cl[s][i]
                w.flops += seg_flops(spec, vocab, 0, n, cl[s][i] + 1 if keep else n, grad, lora)
                w.real += n
    return w


def trl_work(spec: ModelSpec, vocab: int, batch: dict, lora: Lora | None = None) -> Work:
    """TRL's concatenated forward: [prompt+chosen; prompt+rejected] right-padded, LM head on every position."""
    w = Work()
    W = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
    for s in ("chosen", "rejected"):
        n = batch[f"{s}_attention_mask"].sum(-1).tolist()
        w.positions += len(n) * W
        w.real += sum(n)
        w.completion_tokens += int((batch[f"{s}_labels"] != -100).sum())
        w.flops += sum(seg_flops(spec, vocab, 0, x, x, True, lora) for x in n)
    return w


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_size(device: str) -> int:
    return 8192 if device.startswith("cuda") else 1024


def matmul_peak(
    threads: int, n: int = 1024, reps: int = 8, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> float:
    """Best FLOP/s over ``reps`` square matmuls, after one that warms up (kernel selection, clocks)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best
