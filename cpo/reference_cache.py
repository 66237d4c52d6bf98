"""DPO reference log-probs computed once and cached on disk.

The key covers what changes the numbers: the reference model's identity (path and config), the
exact token ids of every pair (which already encode the data, the prompt and the truncation
settings) and the dtype. A second run with the same key reads the file instead of running the
reference model over the data again.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from cpo.logprobs import completion_logps


def cache_key(model_id: str, model_config: dict, pairs_by_split: dict[str, list]) -> str:
    h = hashlib.sha256()
    h.update(model_id.encode())
    h.update(json.dumps(model_config, sort_keys=True, default=str).encode())
    for split in sorted(pairs_by_split):
        h.update(split.encode())
        for p in pairs_by_split[split]:
            h.update(repr((p.index, p.prompt_ids, p.chosen_ids, p.rejected_ids)).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def compute_reference_logps(model, collate, pairs: list, pad_id: int, batch_size: int = 16) -> dict[int, tuple[float, float]]:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[int, tuple[float, float]] = {}
    try:
        for s in range(0, len(pairs), batch_size):
            b = collate([{"pair": p} for p in pairs[s : s + batch_size]])
            b = {k: v.to(device) for k, v in b.items()}
            c, r = completion_logps(model, b["prompt_ids"], b["prompt_mask"], [(b["chosen_ids"], b["chosen_mask"]), (b["rejected_ids"], b["rejected_mask"])], pad_id)
            for i, idx in enumerate(b["index"].tolist()):
                out[idx] = (float(c.sum[i]), float(r.sum[i]))
    finally:
        model.train(was_training)
    return out


def load_or_compute(cache_dir: str | os.PathLike, key: str, compute) -> tuple[dict, bool]:
    """(logps by split, whether it came from the cache)."""
    path = Path(cache_dir) / "reference_logps" / f"{key}.pt"
    if path.exists():
        return torch.load(path), True
    data = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return data, False


def attach_cached_reference(cfg, policy, dm, model_path: str, say=print) -> None:
    """DPO reference log-probs for every train/val pair, read from the cache or computed once and stored."""
    import contextlib

    from cpo.models import is_peft

    splits = {"train": dm.train_pairs, "val": dm.val_pairs}
    cfg_dict = policy.config.to_dict() if hasattr(policy, "config") else {}
    key = cache_key(f"{model_path}|{cfg.model.dtype}|{cfg.model.lora}", cfg_dict, splits)

    def compute():
        say("computing reference log-probs once (loss.reference=cached)")
        ctx = policy.disable_adapter() if is_peft(policy) else contextlib.nullcontext()
        with ctx:
            return {s: compute_reference_logps(policy, dm.collator, pairs, dm.collator.pad_id, dm.eval_batch_size) for s, pairs in splits.items()}

    dm.ref_logps, hit = load_or_compute(cfg.cache_dir, key, compute)
    say(f"DPO reference: cached log-probs {'read from' if hit else 'written to'} {cfg.cache_dir}/reference_logps/{key}.pt")
