"""Token log-probs from the final hidden states, the output projection run a chunk of tokens at a time.

The full path (:mod:`cpo.train.logprobs` without a chunk) asks the model for logits: a
[rows, completion columns, vocab] tensor, cast to float32 and kept for the backward with its
gradient. With a 32,000-token vocabulary that is affordable; with Llama-3's 128,256 or Gemma's
262,144 it is what runs out of memory (2 pairs x 2 sides x 256 tokens x 262,144 x 4 B = 1.07 GB).

This path runs the model's body (its decoder, without the output projection) and then, for every
chunk of ``chunk`` real completion tokens (padding is skipped): the projection, the model's own
logit post-processing (Gemma 2's soft-capping, Cohere's and Granite's scales), the log-sum-exp and
the target logit, in float32. What the backward keeps: the hidden states of the completion tokens
([tokens, hidden]), their targets and one log-sum-exp per token; never a vocabulary-sized tensor
beyond the chunk being computed. The backward recomputes each chunk's logits; when the projection is
frozen (LoRA, the usual case) the gradient with respect to the hidden states is computed in the
forward instead (it is the upstream gradient, one number per token, times a vector the forward
already has), so no chunk is computed twice and the step costs the full path's matmuls.

An output layer this cannot reproduce (an adapter or quantised layer on the projection, parameters
sharded by FSDP or DeepSpeed ZeRO-3, a model whose logits differ from the projection of its body's
output) falls back to the full path with one warning naming why.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cpo.train.models import eval_mode

AUTO = "auto"
# logps.chunk_tokens=auto: chunked from this vocabulary size on; below it the full path, bit for bit the
# computation from before the setting existed (ALMA's 32,000-token vocabulary, the demo's 1,000).
AUTO_MIN_VOCAB = 65_536
# ... in chunks of about this many logits (128 MiB in float32; a few such tensors live at once): 261 tokens at
# Llama-3's 128,256, 128 at Gemma's 262,144. Measured in docs/results/bench/large_vocab.txt.
AUTO_CHUNK_LOGITS = 2**25


@dataclass(frozen=True)
class LogpsSettings:
    """``logps.*``: how completion log-probs are computed from the model.

    ``chunk_tokens``: tokens per chunk of the output projection (a positive int), None for the full
    logits, or ``"auto"``: for vocabularies of at least :data:`AUTO_MIN_VOCAB`, chunks of
    :data:`AUTO_CHUNK_LOGITS` // vocabulary tokens; the full logits below.
    """

    chunk_tokens: int | str | None = None

    def __post_init__(self) -> None:
        c = self.chunk_tokens
        ok = c is None or c == AUTO or (isinstance(c, int) and not isinstance(c, bool) and c >= 1)
        if not ok:
            raise ValueError(f"logps.chunk_tokens must be a positive number of tokens, auto or null, got {c!r}")

    def chunk_for(self, model: nn.Module) -> int | None:
        """Tokens per chunk for ``model``, or None for the full path."""
        if self.chunk_tokens != AUTO:
            return self.chunk_tokens  # type: ignore[return-value]
        vocab = vocab_size(model)
        return max(1, AUTO_CHUNK_LOGITS // vocab) if vocab >= AUTO_MIN_VOCAB else None


def vocab_size(model: nn.Module) -> int:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(out, "weight", None)
    if isinstance(weight, Tensor) and weight.ndim == 2 and weight.numel() > 0:
        return int(weight.shape[0])
    return int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)


# ---------------------------------------------------------------------------------------------- the head
@dataclass(frozen=True)
class LogitTransform:
    """What a model does to ``lm_head(h)`` before returning logits, in its order (transformers 4.57)."""

    multiply: float | None = None  # Cohere: logits * logit_scale
    divide: float | None = None  # Granite: logits / logits_scaling
    softcap: float | None = None  # Gemma 2/3: cap * tanh(logits / cap)

    @staticmethod
    def of(model: nn.Module) -> "LogitTransform":
        cfg = getattr(model, "config", None)
        get = (lambda k: getattr(cfg, k, None)) if cfg is not None else (lambda k: None)
        multiply = getattr(model, "logit_scale", None)
        multiply = float(multiply) if isinstance(multiply, (int, float)) and multiply != 1 else None
        divide = get("logits_scaling")
        divide = float(divide) if isinstance(divide, (int, float)) and divide != 1 else None
        cap = get("final_logit_softcapping")
        return LogitTransform(multiply, divide, float(cap) if cap else None)

    def apply(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        """Logits from float32 projections ``z`` (changed in place), and tanh(.) when soft-capped (for the backward)."""
        if self.multiply is not None:
            z.mul_(self.multiply)
        if self.divide is not None:
            z.div_(self.divide)
        if self.softcap is None:
            return z, None
        t = z.div_(self.softcap).tanh_()
        return t * self.softcap, t

    def backward(self, dz: Tensor, t: Tensor | None) -> Tensor:
        """d loss / d projection from d loss / d logits (in place)."""
        if t is not None:
            dz.mul_(1 - t * t)
        if self.divide is not None:
            dz.div_(self.divide)
        if self.multiply is not None:
            dz.mul_(self.multiply)
        return dz


def _compute_dtype(weight: Tensor) -> torch.dtype:
    """The dtype the full path's projection runs in: autocast's where it is on, else the weight's."""
    dev = weight.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return weight.dtype


def _chunk_logits(h: Tensor, w: Tensor, b: Tensor | None, post: LogitTransform) -> tuple[Tensor, Tensor | None]:
    z = nn.functional.linear(h, w, b).float()
    return post.apply(z)


def _dlogits(z: Tensor, t: Tensor | None, lse: Tensor, y: Tensor, g: Tensor | None, post: LogitTransform) -> Tensor:
    """d (g * log softmax(z)[y]) / d projection, for a chunk: g * (onehot(y) - softmax(z)), through ``post``.

    ``z`` is consumed (the softmax is computed in its storage)."""
    dz = z.sub_(lse[:, None]).exp_().neg_()
    dz.scatter_add_(1, y[:, None], torch.ones_like(y, dtype=dz.dtype)[:, None])
    if g is not None:
        dz.mul_(g[:, None])
    return post.backward(dz, t)


class _ChunkedTokenLogps(torch.autograd.Function):
    """log softmax(post(h W^T + b))[y] per row of ``hidden``, ``chunk`` rows at a time, in float32."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk: int,
                post: LogitTransform) -> Tensor:
        cd = _compute_dtype(weight)
        n = hidden.shape[0]
        out = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse_all = torch.empty(n, dtype=torch.float32, device=hidden.device)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        # A frozen projection: d logp / d h is a vector per token that the forward already has the pieces for;
        # the backward then only scales it by the upstream gradient (no chunk is computed twice).
        pre = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h and not need_w else None
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(cd)
            b = bias.to(cd) if bias is not None else None
            for s in range(0, n, chunk):
                h, y = hidden[s : s + chunk].to(cd), targets[s : s + chunk]
                z, t = _chunk_logits(h, w, b, post)
                lse = torch.logsumexp(z, -1)
                out[s : s + chunk] = z.gather(1, y[:, None]).squeeze(1) - lse
                lse_all[s : s + chunk] = lse
                if pre is not None:
                    dz = _dlogits(z, t, lse, y, None, post)
                    pre[s : s + chunk] = (dz.to(cd) @ w).float()
                del z, t
        ctx.chunk, ctx.post, ctx.cd = chunk, post, cd
        ctx.save_for_backward(hidden, weight, bias, targets, lse_all, pre)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        hidden, weight, bias, targets, lse_all, pre = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g = grad.float()
        if pre is not None:
            return (pre * g[:, None]).to(hidden.dtype), None, None, None, None, None
        cd, chunk, post = ctx.cd, ctx.chunk, ctx.post
        gh = torch.empty_like(hidden) if need_h else None
        gw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        gb = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(cd)
            b = bias.to(cd) if bias is not None else None
            for s in range(0, hidden.shape[0], chunk):
                h, y = hidden[s : s + chunk].to(cd), targets[s : s + chunk]
                z, t = _chunk_logits(h, w, b, post)
                dz = _dlogits(z, t, lse_all[s : s + chunk], y, g[s : s + chunk], post)
                if gb is not None:
                    gb += dz.sum(0)
                dz = dz.to(cd)
                if gh is not None:
                    gh[s : s + chunk] = (dz @ w).to(hidden.dtype)
                if gw is not None:
                    if cd == torch.float32:
                        gw.addmm_(dz.t(), h)
                    else:  # accumulated in float32, not in the compute dtype (one rounding, as the full path's)
                        gw += (dz.t() @ h).float()
                del z, t, dz
        gw = gw.to(weight.dtype) if gw is not None else None
        gb = gb.to(bias.dtype) if gb is not None else None
        return gh, gw, gb, None, None, None


@dataclass(frozen=True)
class ChunkedHead:
    """A causal LM split into its body (hidden states) and its output projection, run ``chunk`` tokens at a time."""

    body: nn.Module
    projection: nn.Linear
    post: LogitTransform
    chunk: int

    def hidden(self, **inputs) -> Tensor:
        """The body's final hidden states (after its last norm): what the model projects to logits."""
        return self.body(**inputs).last_hidden_state

    def project(self, hidden: Tensor) -> Tensor:
        """Full logits from hidden states, as the model computes them (for the one-time check only)."""
        w = self.projection
        return self.post.apply(nn.functional.linear(hidden, w.weight, w.bias).float())[0]

    def token_logps(self, hidden: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        """[rows, cols] float32 log-probs of ``targets`` given ``hidden`` [rows, cols, dim]; 0 where ``mask`` is 0.

        Only the real tokens are projected: padding costs no vocabulary-sized work."""
        rows, cols = targets.shape
        flat = hidden.reshape(rows * cols, hidden.shape[-1])
        real = mask.reshape(-1).nonzero().squeeze(1)
        p = self.projection
        picked = _ChunkedTokenLogps.apply(flat.index_select(0, real), p.weight, p.bias,
                                          targets.reshape(-1).index_select(0, real), self.chunk, self.post)
        out = torch.zeros(rows * cols, dtype=torch.float32, device=hidden.device).index_copy(0, real, picked)
        return out.view(rows, cols)


# ------------------------------------------------------------------------------- finding the head, once
_RESOLVED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
_WARNED: set[str] = set()
PROBE_TOKENS = 8


def chunked_head(model: nn.Module, chunk_tokens: int | None) -> ChunkedHead | None:
    """The chunked head of ``model``, or None for the full path: when ``chunk_tokens`` is None, or (with one
    warning naming why) when the model's output layer cannot be chunked."""
    if chunk_tokens is None:
        return None
    found = _RESOLVED.get(model)
    if found is None:
        found = _resolve(model)
        _RESOLVED[model] = found
    head, why = found
    if head is None:
        if why not in _WARNED:
            _WARNED.add(why)
            from cpo.console import warn

            warn(f"logps.chunk_tokens={chunk_tokens}: computing full logits instead, because {why}")
        return None
    return ChunkedHead(head.body, head.projection, head.post, int(chunk_tokens))


def _sharded(model: nn.Module, projection: nn.Module) -> str | None:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp import FSDPModule  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - torch builds without distributed
        return None
    if any(isinstance(m, (FullyShardedDataParallel, FSDPModule)) for m in model.modules()):
        return "FSDP shards the model's parameters: the output projection is whole only inside the model's forward"
    if hasattr(projection.weight, "ds_id"):
        return ("DeepSpeed ZeRO-3 partitions the output projection: its weight is gathered only inside "
                "the model's forward")
    return None


def _resolve(model: nn.Module) -> tuple[ChunkedHead | None, str]:
    """(head, "") or (None, why): the body, a plain projection, the known logit transform, and a one-time check
    on a few tokens that body + projection + transform give the model's own logits."""
    name = type(model).__name__
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the causal LM
    if not hasattr(causal_lm, "get_output_embeddings") or not hasattr(causal_lm, "get_decoder"):
        return None, f"{name} is not a transformers causal LM (no get_output_embeddings / get_decoder)"
    projection = causal_lm.get_output_embeddings()
    if type(projection) is not nn.Linear:
        kind = f"{type(projection).__module__}.{type(projection).__name__}"
        return None, (f"the output projection of {name} is a {kind}, not a plain torch.nn.Linear "
                      f"(e.g. a LoRA adapter or a quantised layer on lm_head)")
    if projection._forward_hooks or projection._forward_pre_hooks or hasattr(projection, "_hf_hook"):
        return None, f"the output projection of {name} has forward hooks (e.g. accelerate's offloading)"
    sharded = _sharded(model, projection)
    if sharded:
        return None, sharded
    body = causal_lm.get_decoder()
    if body is causal_lm or body is None:
        return None, f"{name} has no separate body module (get_decoder() returns the model itself)"
    head = ChunkedHead(body, projection, LogitTransform.of(causal_lm), 1)
    try:
        err = _probe(model, head)
    except Exception as e:  # noqa: BLE001 - any failure means: do not trust the split
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return None, f"running the body of {name} alone failed ({type(e).__name__}: {first})"
    if err is not None:
        return None, (f"the projection of {name}'s body output differs from the model's own logits "
                      f"(relative difference {err:.1e}): its output layer does something cpo does not know")
    return head, ""


@torch.no_grad()
def _probe(model: nn.Module, head: ChunkedHead) -> float | None:
    """None when body + projection + transform reproduce the model's logits on a few tokens (eval mode, no
    dropout), else the relative difference. Tolerance: float32 rounding, or that of a lower compute dtype."""
    w = head.projection.weight
    ids = (torch.arange(1, PROBE_TOKENS + 1, device=w.device) % w.shape[0])[None]
    with eval_mode(model):
        theirs = model(input_ids=ids, use_cache=False).logits.float()
        ours = head.project(head.hidden(input_ids=ids, use_cache=False))
    err = float((ours - theirs).abs().max() / theirs.abs().max().clamp(min=1e-6))
    low = _compute_dtype(w) != torch.float32 or w.dtype != torch.float32
    return None if err <= (3e-2 if low else 1e-4) else err
