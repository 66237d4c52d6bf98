"""DPO reference log-probs computed once, with the starting policy, and cached on disk.

The key covers what changes the numbers, never a name alone:
- the weights: a fingerprint of every weight and adapter file (``*.safetensors``, ``*.bin``,
  ``adapter_model.*``, ``config.json``, ``adapter_config.json``) of the model and of a continued
  adapter, plus the snapshot commit when a hub name is read from the local HF cache. New weights
  saved at the same path are a cache miss (see :func:`file_fingerprint` for the rule);
- the settings that change the forward (dtype, attention kernel, LoRA settings) and the model config;
- the exact token ids of every pair (which already encode the data, the prompt and the truncation).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from cpo.train.chunked_logps import LogpsSettings
from cpo.train.logprobs import completion_logps

WEIGHT_FILES = ("*.safetensors", "*.bin", "adapter_model.*", "config.json", "adapter_config.json")
# Files up to this size are hashed whole (configs, adapters: ALMA-13B's LoRA is about 50 MB); larger ones
# (base-model shards, 26 GB for a 13B model) by the sampled rule of file_fingerprint.
FULL_HASH_BYTES = 64 << 20
_EDGE_BYTES = 1 << 20
_SAMPLES, _SAMPLE_BYTES = 16, 64 << 10


def file_fingerprint(path: str | os.PathLike, full_hash_bytes: int = FULL_HASH_BYTES) -> str:
    """A fingerprint of a file's content, cheap for multi-GB weight shards.

    Up to ``full_hash_bytes``: sha256 of every byte (exact). Larger: sha256 of the size, the
    modification time in ns, the first and last MiB (the safetensors header with every tensor's
    name, shape and offset, and the last tensor's tail) and 16 evenly spaced 64 KiB samples: about
    3 MiB read per file however large. Why this is safe enough: every way new weights reach a path
    (``save_pretrained``, a download, a copy without ``-p``) writes the file and so sets a new mtime,
    and training changes every tensor, so the samples differ too. When it is not: a file edited in
    place in bytes that no sample covers, with its size kept and its mtime set back on purpose
    (``touch -d``, ``cp -p`` of a different file with the same size and mtime). The cost of the mtime
    is a false miss: a copy that does not keep mtimes recomputes the log-probs once.
    """
    path = Path(path)
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if st.st_size <= full_hash_bytes:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            return "sha256:" + h.hexdigest()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        step = max(0, st.st_size - _SAMPLE_BYTES) // (_SAMPLES - 1)
        spans = [(0, _EDGE_BYTES), (max(0, st.st_size - _EDGE_BYTES), _EDGE_BYTES)]
        spans += [(i * step, _SAMPLE_BYTES) for i in range(_SAMPLES)]
        for offset, n in spans:
            f.seek(offset)
            h.update(f.read(n))
    return "sampled:" + h.hexdigest()


def folder_fingerprint(folder: str | os.PathLike, full_hash_bytes: int = FULL_HASH_BYTES) -> dict[str, str]:
    """{file name: fingerprint} of the weight and adapter files of a model or adapter folder."""
    folder = Path(folder)
    names = sorted({p.name for pattern in WEIGHT_FILES for p in folder.glob(pattern) if p.is_file()})
    return {n: file_fingerprint(folder / n, full_hash_bytes) for n in names}


def hub_snapshot(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The local HF cache folder of ``repo_id`` at the revision ``from_pretrained`` used (main), or None."""
    from huggingface_hub import try_to_load_from_cache

    for name in ("config.json", "adapter_config.json"):
        try:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        except ValueError:  # not a valid repo id
            return None
        if isinstance(found, str):
            return Path(found).parent
    return None


def weights_identity(name_or_path: str, key: str, hub_cache_dir: str | os.PathLike | None = None,
                     full_hash_bytes: int = FULL_HASH_BYTES) -> dict:
    """What identifies the weights named by config ``key``: file fingerprints, and the hub snapshot commit."""
    from cpo.io import Unavailable

    local = Path(name_or_path).expanduser()
    if local.is_dir():
        ident: dict = {"files": folder_fingerprint(local, full_hash_bytes)}
    elif local.is_file():
        ident = {"files": {local.name: file_fingerprint(local, full_hash_bytes)}}
    else:
        snapshot = hub_snapshot(name_or_path, hub_cache_dir)
        if snapshot is None:
            raise Unavailable(f"{key}={name_or_path!r} is neither a local folder nor in the local Hugging Face cache, "
                              f"so loss.reference=cached cannot tell which weights its log-probs belong to; "
                              f"use loss.reference=auto")
        ident = {"revision": snapshot.name, "files": folder_fingerprint(snapshot, full_hash_bytes)}
    if not ident["files"]:
        raise Unavailable(f"{key}={name_or_path!r}: no weight or config file ({', '.join(WEIGHT_FILES)}) was found "
                          f"there, so loss.reference=cached cannot fingerprint it; use loss.reference=auto")
    return ident


def cache_key(identity: dict, pairs_by_split: dict[str, list]) -> str:
    """sha256 of the reference's identity (weights, settings, config) and every pair's token ids."""
    h = hashlib.sha256()
    h.update(json.dumps(identity, sort_keys=True, default=str).encode())
    for split in sorted(pairs_by_split):
        h.update(split.encode())
        for p in pairs_by_split[split]:
            h.update(repr((p.index, p.prompt_ids, p.chosen_ids, p.rejected_ids)).encode())
    return h.hexdigest()[:24]


@torch.no_grad()
def compute_reference_logps(model, collate, pairs: list, pad_id: int, batch_size: int = 16,
                            logps: LogpsSettings = LogpsSettings()) -> dict[int, tuple[float, float]]:
    was_training = model.training
    chunk = logps.chunk_for(model)
    model.eval()
    device = next(model.parameters()).device
    out: dict[int, tuple[float, float]] = {}
    try:
        for s in range(0, len(pairs), batch_size):
            b = collate([{"pair": p} for p in pairs[s : s + batch_size]])
            b = {k: v.to(device) for k, v in b.items()}
            sides = [(b["chosen_ids"], b["chosen_mask"]), (b["rejected_ids"], b["rejected_mask"])]
            c, r = completion_logps(model, b["prompt_ids"], b["prompt_mask"], sides, pad_id, chunk)
            for i, idx in enumerate(b["index"].tolist()):
                out[idx] = (float(c.sum[i]), float(r.sum[i]))
    finally:
        model.train(was_training)
    return out


def load_or_compute(cache_dir: str | os.PathLike, key: str, compute) -> tuple[dict, bool]:
    """(logps by split, whether it came from the cache)."""
    path = Path(cache_dir) / "reference_logps" / f"{key}.pt"
    if path.exists():
        try:
            return torch.load(path), True
        except Exception as e:  # a truncated or foreign file: one sentence and the way out
            from cpo.errors import ConfigError

            raise ConfigError(f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]}): delete it "
                              "and the reference log-probs are computed again") from None
    data = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return data, False


def reference_identity(cfg, policy, model_path: str, logps: LogpsSettings = LogpsSettings()) -> dict:
    """Everything but the token ids that the cached log-probs depend on (see the module docstring)."""
    from omegaconf import OmegaConf

    m = cfg.model
    lora = OmegaConf.to_container(m.lora, resolve=True) if m.get("lora") is not None else None
    ident = {
        "model": weights_identity(model_path, "model.name_or_path"),
        "settings": {"dtype": m.dtype, "attn_implementation": m.get("attn_implementation"), "lora": lora},
        "config": policy.config.to_dict() if hasattr(policy, "config") else {},
    }
    chunk = logps.chunk_for(policy)
    if chunk is not None:  # the chunked projection rounds differently; absent for full logits, as before it existed
        ident["settings"]["logps_chunk_tokens"] = chunk
    if lora and lora.get("adapter"):
        ident["adapter"] = weights_identity(lora["adapter"], "model.lora.adapter")
    return ident


def attach_cached_reference(cfg, policy, dm, model_path: str, say=print,
                            logps: LogpsSettings = LogpsSettings()) -> None:
    """DPO reference log-probs for every train/val pair, read from the cache or computed once and stored.

    They are computed with the policy as built, i.e. the starting policy whatever the setup: full
    fine-tuning, a fresh LoRA (B = 0, so the same as the base model) or a continued adapter as loaded.
    Call it before training starts.
    """
    if policy is None:
        from cpo.errors import ConfigError

        raise ConfigError("loss.reference=cached needs the policy built before training, which "
                          "build_in_configure_model=true (FSDP, DeepSpeed ZeRO-3) does not do; "
                          "use loss.reference=adapter_disabled with a fresh LoRA there")
    splits = {"train": dm.train_pairs, "val": dm.val_pairs}
    key = cache_key(reference_identity(cfg, policy, model_path, logps), splits)

    def compute():
        from cpo.train.heldout import on_accelerator

        say("computing reference log-probs once with the starting policy (loss.reference=cached)")
        pad = dm.collator.pad_id
        bs = dm.eval_batch_size
        # On the training device and in the training precision, as the live reference would be computed.
        with on_accelerator(policy, cfg.trainer) as model:
            return {s: compute_reference_logps(model, dm.collator, pairs, pad, bs, logps)
                    for s, pairs in splits.items()}

    dm.ref_logps, hit = load_or_compute(cfg.cache_dir, key, compute)
    where = Path(cfg.cache_dir) / "reference_logps" / f"{key}.pt"
    say(f"DPO reference: cached log-probs {'read from' if hit else 'written to'} {where}")
