"""Per-sequence log-probs of completions given prompts.

Batches put the prompt on the left (left-padded) and the completion on the right
(right-padded), so every completion starts at the same column P. Two things follow:
- the model only needs logits for columns P-1 .. end (``logits_to_keep``), so the
  vocabulary projection never runs on prompt tokens;
- chosen and rejected share their prompt exactly, which the shared-prompt forward uses to run
  the prompt once and continue both completions from its KV cache.
Log-probs are gathered as ``logit[y] - logsumexp(logits)``, without a full log-softmax tensor.
With ``chunk_tokens`` (``logps.chunk_tokens``) no logits tensor is formed at all: the model's body gives
hidden states and :mod:`cpo.train.chunked_logps` projects them a chunk of tokens at a time.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cpo.train.chunked_logps import ChunkedHead, chunked_head


@dataclass
class CompletionLogps:
    """Sum of token log-probs per sequence and the number of completion tokens."""

    sum: Tensor  # [N]
    n_tokens: Tensor  # [N]

    @property
    def mean(self) -> Tensor:
        return self.sum / self.n_tokens.clamp(min=1)


def gather_token_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[targets] per position, in float32, without a [.., V] log-softmax output."""
    logits = logits.float()
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def position_ids_from_mask(mask: Tensor) -> Tensor:
    # Left padding must not shift positions: count only real tokens (absolute-position models care).
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


_SUPPORTS_LOGITS_TO_KEEP: dict[type, bool] = {}


def _logits(model: nn.Module, keep: int, **inputs) -> Tensor:
    """Logits for the last ``keep`` positions; falls back to slicing for models without logits_to_keep."""
    key = type(model)
    if _SUPPORTS_LOGITS_TO_KEEP.get(key, True):
        try:
            out = model(**inputs, logits_to_keep=keep, use_cache=False)
            _SUPPORTS_LOGITS_TO_KEEP[key] = True
            return out.logits[:, -keep:]
        except TypeError:
            _SUPPORTS_LOGITS_TO_KEEP[key] = False
    return model(**inputs, use_cache=False).logits[:, -keep:]


def _columns(model: nn.Module, head: ChunkedHead | None, keep: int, **inputs) -> Tensor:
    """The last ``keep`` columns of the logits (full path) or of the final hidden states (chunked path)."""
    if head is None:
        return _logits(model, keep, **inputs)
    return head.hidden(**inputs, use_cache=False)[:, -keep:]


def _token_logps(head: ChunkedHead | None, columns: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Per-token log-probs of ``targets`` from logits or hidden states (see :func:`_columns`)."""
    if head is None:
        return gather_token_logps(columns, targets)
    return head.token_logps(columns, targets, mask)


def pad_right(seqs: list[Tensor], masks: list[Tensor], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad 2D id/mask tensors of different widths to the widest and stack them along rows."""
    width = max(s.shape[1] for s in seqs)
    ids = [nn.functional.pad(s, (0, width - s.shape[1]), value=pad_id) for s in seqs]
    ms = [nn.functional.pad(m, (0, width - m.shape[1]), value=0) for m in masks]
    return torch.cat(ids, 0), torch.cat(ms, 0)


def _pad_sides(completions: list[tuple[Tensor, Tensor]], pad_id: int) -> tuple[Tensor, Tensor]:
    """All sides' completions right-padded to one width and stacked: [k*B, C]."""
    return pad_right([c[0] for c in completions], [c[1] for c in completions], pad_id)


def _split_sides(token_logps: Tensor, comp_mask: Tensor, b: int) -> list[CompletionLogps]:
    """Masked per-token log-probs of k stacked sides [k*B, C] -> one CompletionLogps per side."""
    token_logps = token_logps * comp_mask
    sums, counts = token_logps.sum(-1), comp_mask.sum(-1)
    return [CompletionLogps(sums[i : i + b], counts[i : i + b]) for i in range(0, sums.shape[0], b)]


def completion_logps(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completions: list[tuple[Tensor, Tensor]],
    pad_id: int,
    chunk_tokens: int | None = None,
) -> list[CompletionLogps]:
    """One forward over [prompt; completion_k] for every completion side k (e.g. chosen and rejected).

    All sides are stacked along the batch, so chosen and rejected cost one pass, as TRL's
    "concatenated forward" does. ``chunk_tokens``: the output projection a chunk of tokens at a time
    (cpo.train.chunked_logps); None: full logits.
    """
    k = len(completions)
    comp_ids, comp_mask = _pad_sides(completions, pad_id)
    c_len = comp_ids.shape[1]
    ids = torch.cat([prompt_ids.repeat(k, 1), comp_ids], 1)
    mask = torch.cat([prompt_mask.repeat(k, 1), comp_mask], 1)
    head = chunked_head(model, chunk_tokens)
    cols = _columns(model, head, c_len + 1, input_ids=ids, attention_mask=mask,
                    position_ids=position_ids_from_mask(mask))
    # The logit at column t predicts token t+1: the first completion token comes from the prompt's last column.
    return _split_sides(_token_logps(head, cols[:, :-1], comp_ids, comp_mask), comp_mask, prompt_ids.shape[0])


def completion_logps_shared_prompt(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completions: list[tuple[Tensor, Tensor]],
    pad_id: int,
    chunk_tokens: int | None = None,
) -> list[CompletionLogps]:
    """Same result as :func:`completion_logps`, running the prompt once and continuing every side from its cache.

    The KV cache of the prompt minus its last column is computed once (with gradients) and
    repeated along the batch for the k completion sides; the continuation runs [last prompt
    token; completion] for every side, so all the logits that are needed come from one call and
    one LM-head use. The token embeddings of both calls are looked up in one call too. Two
    embedding lookups or two LM-head uses would each add a dense vocabulary-sized gradient to
    compute and sum in the backward pass, which with an LLM vocabulary (32000) costs more than
    the prompt forward saves.
    """
    from transformers import DynamicCache

    b, p = prompt_ids.shape
    # Nothing to cache; or gradient checkpointing, whose layers drop the KV cache in training mode.
    if p < 2 or (model.training and getattr(model, "is_gradient_checkpointing", False)):
        return completion_logps(model, prompt_ids, prompt_mask, completions, pad_id, chunk_tokens)
    k = len(completions)
    comp_ids, comp_mask = _pad_sides(completions, pad_id)
    prompt_pos = position_ids_from_mask(prompt_mask)
    head_ids, head_mask = prompt_ids[:, :-1], prompt_mask[:, :-1]
    cont_ids = torch.cat([prompt_ids[:, -1:].repeat(k, 1), comp_ids], 1)  # [kB, 1 + C]
    cont_mask = torch.cat([prompt_mask[:, -1:].repeat(k, 1), comp_mask], 1)
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(embed, nn.Embedding):
        flat = embed(torch.cat([head_ids.reshape(-1), cont_ids.reshape(-1)]))
        head_in = {"inputs_embeds": flat[: head_ids.numel()].view(*head_ids.shape, -1)}
        cont_in = {"inputs_embeds": flat[head_ids.numel() :].view(*cont_ids.shape, -1)}
    else:
        head_in, cont_in = {"input_ids": head_ids}, {"input_ids": cont_ids}
    head = chunked_head(model, chunk_tokens)
    # The prompt call's logits (one column) are not used, so its LM head never enters the backward; the
    # chunked path runs the body alone and forms no logits at all.
    net, extra = (model, {"logits_to_keep": 1}) if head is None else (head.body, {})
    # The cache is made here: some models (Gemma 2) make none of their own in training mode.
    config = getattr(model, "config", None)
    cache = DynamicCache(config=config) if config is not None else DynamicCache()
    net(**head_in, attention_mask=head_mask, position_ids=prompt_pos[:, :-1], past_key_values=cache, use_cache=True,
        **extra)
    _repeat_cache(cache, k)
    full_mask = torch.cat([head_mask.repeat(k, 1), cont_mask], 1)
    cont_pos = prompt_pos[:, -1:].repeat(k, 1) + cont_mask.long().cumsum(-1) - 1
    cont = net(**cont_in, attention_mask=full_mask, position_ids=cont_pos, past_key_values=cache, use_cache=True)
    cols = cont.logits if head is None else cont.last_hidden_state
    # Column 0 (the prompt's last token) predicts the first completion token, as in completion_logps.
    return _split_sides(_token_logps(head, cols[:, :-1], comp_ids, comp_mask), comp_mask, b)


def packed_attention_mask(prompt_mask: Tensor, side_masks: list[Tensor]) -> Tensor:
    """[B, T, T] boolean mask (True = may attend) for rows [prompt; side_1; ...; side_k].

    A prompt column sees the prompt causally; a side column sees the whole prompt and its own side
    causally, never another side; no query sees a padding key. Every column also sees itself, so
    padding rows stay finite (their outputs are never used).
    """
    widths = [prompt_mask.shape[1]] + [m.shape[1] for m in side_masks]
    dev = prompt_mask.device
    seg = torch.cat([torch.full((w,), i, device=dev) for i, w in enumerate(widths)])
    col = torch.arange(seg.numel(), device=dev)
    allowed = (col[None, :] <= col[:, None]) & ((seg[None, :] == seg[:, None]) | (seg[None, :] == 0))
    real = torch.cat([prompt_mask] + list(side_masks), 1).bool()
    return (allowed[None] & real[:, None, :]) | torch.eye(seg.numel(), dtype=torch.bool, device=dev)[None]


_PACKED_ATTENTION = ("sdpa", "eager")


def completion_logps_packed(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completions: list[tuple[Tensor, Tensor]],
    pad_id: int,
    chunk_tokens: int | None = None,
) -> list[CompletionLogps]:
    """Same result as :func:`completion_logps`, with the prompt run once: one forward per pair over
    [prompt; side_1; ...; side_k] (e.g. chosen and rejected) with a 4D attention mask that lets each
    side see the prompt and itself only, and position ids that restart after the prompt for every side.

    One call and no KV cache, so it also works under gradient checkpointing, and each side keeps its
    own padded width. Needs an attention implementation that takes a 4D mask (sdpa, eager); others
    fall back to :func:`completion_logps_shared_prompt`.
    """
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl not in _PACKED_ATTENTION or len(completions) < 2:
        fallback = completion_logps_shared_prompt if len(completions) > 1 else completion_logps
        return fallback(model, prompt_ids, prompt_mask, completions, pad_id, chunk_tokens)
    b, p = prompt_ids.shape
    ids = torch.cat([prompt_ids] + [c[0] for c in completions], 1)
    mask = packed_attention_mask(prompt_mask, [c[1] for c in completions])[:, None]
    if impl == "eager":  # eager attention adds the mask to the scores
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
    plen = prompt_mask.sum(-1, keepdim=True)
    pos = [position_ids_from_mask(prompt_mask)] + [plen + c[1].long().cumsum(-1) - 1 for c in completions]
    keep = ids.shape[1] - (p - 1)  # the prompt's last column, then every side column
    head = chunked_head(model, chunk_tokens)
    cols = _columns(model, head, keep, input_ids=ids, attention_mask=mask, position_ids=torch.cat(pos, 1))
    if head is not None:
        return _packed_chunked(head, cols, p, completions)
    out, offset = [], p
    for side_ids, side_mask in completions:
        w = side_ids.shape[1]
        # Token 0 of every side is predicted by the prompt's last column (kept column 0); token j >= 1
        # by the side's column j - 1 (kept column offset - p + j).
        first = gather_token_logps(cols[:, :1], side_ids[:, :1])
        rest = gather_token_logps(cols[:, offset - p + 1 : offset - p + w], side_ids[:, 1:])
        token_logps = torch.cat([first, rest], 1) * side_mask
        out.append(CompletionLogps(token_logps.sum(-1), side_mask.sum(-1)))
        offset += w
    return out


def _packed_chunked(head: ChunkedHead, hidden: Tensor, p: int, completions: list[tuple[Tensor, Tensor]]):
    """The packed forward's log-probs from its kept hidden states: every side's predicting columns (the prompt's
    last column for token 0, as above) gathered into one [B, sum of widths] layout, projected in one chunked pass."""
    index, offset = [], p
    for side_ids, _ in completions:
        w = side_ids.shape[1]
        index += [0] + list(range(offset - p + 1, offset - p + w))
        offset += w
    idx = torch.tensor(index, device=hidden.device)
    ids, masks = torch.cat([c[0] for c in completions], 1), torch.cat([c[1] for c in completions], 1)
    token_logps = head.token_logps(hidden.index_select(1, idx), ids, masks).split([c[0].shape[1] for c in completions],
                                                                               1)
    return [CompletionLogps((t * m).sum(-1), m.sum(-1)) for t, (_, m) in zip(token_logps, completions)]


def _repeat_cache(cache, k: int) -> None:
    """Repeat a DynamicCache k times along the batch, keeping it in the autograd graph."""
    if k == 1:
        return
    for layer in cache.layers:
        layer.keys = layer.keys.repeat(k, 1, 1, 1)
        layer.values = layer.values.repeat(k, 1, 1, 1)
