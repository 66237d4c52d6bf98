"""The fingerprint of what changes a run's result: the resolved config minus the keys that do not.

A finished run is reused, and a checkpoint resumed, only when this fingerprint matches the one stored
with it (issue 8, section 2). Keys that only change where things are written, what is shown or how
often a checkpoint is taken are left out, so that re-launching with another logger or a new output
path still finds the finished job; everything else counts, including keys that look like labels,
because when in doubt a stale result is worse than a re-run.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

# Bumped whenever NEUTRAL_KEYS or the canonical form changes, so that older fingerprints never match by accident.
FINGERPRINT_VERSION = 1

# Dotted keys (a key also removes everything below it) that cannot change the trained weights or any number in
# results.json, each with why.
NEUTRAL_KEYS: dict[str, str] = {
    "logger": "where metrics are sent (W&B, CSV or nowhere), not what is computed",
    "trainer.enable_progress_bar": "console display only",
    "trainer.enable_model_summary": "console display only",
    "progress_every_seconds": "console display only (progress lines in log files)",
    "trainer.log_every_n_steps": "how often metrics are written; Lightning updates the callback metrics every step",
    "evaluate.during_training.table_rows": "rows of the W&B sample table; the logged scores use all max_sentences",
    "cache_dir": "where the demo assets and reference log-probs are cached; caches are keyed by their own settings",
    "hydra": "output paths and launcher settings",
    "experiment_name": "the W&B group and tag of a sweep",
    "resume": "whether a folder is reused, not how a run trains (the key of older configs)",
    "rerun": "whether old outputs are moved aside, not how a run trains",
    "ckpt_path": "where to resume from; the checkpoint's own fingerprint is checked instead",
    "checkpoint": "how often checkpoints are written; a resumed run reproduces the uninterrupted one",
    "save_policy": "whether policy/ is written; training and metrics are the same",
    "debug": "whether errors show a traceback",
    "guard.min_chrf_ratio": "judges the held-out numbers a finished run computed (kept, or a failed run); "
                            "changes no weight and no number",
    # The batch sampler runs in the main process and collation is deterministic, and a DataLoader draws its
    # base seed from its own generator with or without workers: the batches and the RNG stream are the same.
    "data.num_workers": "worker processes only load the batches the main process chose",
    "push_to_hub": "where the finished policy/ is uploaded, after training",
    "push_private": "whether a new hub repository is private",
}


# How configs evolve without making every finished run stale. A record written by an older version of cpo is
# read as the current version would have written it (:func:`upgraded`) before it is compared:
# - callables that moved to another module (old dotted prefix -> new): the same object under its old path;
MOVED_PATHS: dict[str, str] = {"cpo.strategies.": "cpo.train.strategies."}  # issue 15: stage packages
# - keys added since, with the value that reproduces the behaviour from before they existed (dotted key ->
#   value). Every new result-changing key is listed here, or every older run would look like another run.
ADDED_KEYS: dict[str, Any] = {
    "prompt": {"_target_": "cpo.mt.prompt.AlmaPrompt"},  # issue 16: conf/prompt, ALMA's prompt before it existed
    # issue 19: peft's LoRA variants and QLoRA, off as before (under a null model.lora they do not exist)
    "model.lora.use_dora": False,
    "model.lora.use_rslora": False,
    "model.lora.modules_to_save": None,
    "model.lora.load_in_4bit": False,
    # issue 19: the callbacks group (early stopping, the best policy), none as before
    "callbacks": {},
    # Issue 17, chunked log-probs. A record from before reads as "auto", the default, not as null (full logits):
    # under auto every vocabulary below 65,536 (the demo's, ALMA's 32,000) takes exactly the old code path, bit for
    # bit; a larger one (Llama-3, Qwen, Gemma) is now chunked, whose log-probs equal the old ones within float32
    # rounding (1e-6 relative, tests/test_chunked_logps.py) and whose gradients within 1e-5. Reading old records as
    # null would call every finished run "another configuration" against the same command today and retrain it
    # for a difference in the last bits; a run recorded with null is null, today too.
    "logps.chunk_tokens": "auto",
}


def _renamed(node: Any) -> Any:
    """``node`` with every ``_target_`` that names a moved callable rewritten to its current path."""
    if isinstance(node, dict):
        out = {k: _renamed(v) for k, v in node.items()}
        target = out.get("_target_")
        if isinstance(target, str):
            for old, new in MOVED_PATHS.items():
                if target.startswith(old):
                    out["_target_"] = new + target[len(old):]
        return out
    if isinstance(node, list):
        return [_renamed(v) for v in node]
    return node


def plain_config(cfg: Any) -> Any:
    """A resolved OmegaConf config as plain containers; anything else as it is."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return cfg
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def canonical_config(cfg: Mapping[str, Any], rename: bool = True) -> dict[str, Any]:
    """The part of ``cfg`` that changes results: a deep copy with NEUTRAL_KEYS removed and moved callables named
    by their current path (``rename=False``: as recorded, the form fingerprints had before the move)."""
    out = json.loads(json.dumps(plain_config(cfg), default=str))  # deep copy; tuples -> lists, paths -> strings
    if rename:
        out = _renamed(out)
    if not isinstance(out, dict):
        raise TypeError(f"a config must be a mapping, got {type(cfg).__name__}")
    for dotted in NEUTRAL_KEYS:
        *parents, last = dotted.split(".")
        node: Any = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def _canonical_json(cfg: Mapping[str, Any], rename: bool = True) -> str:
    # Keys sorted, list order kept (candidate order breaks score ties). Numbers are not normalised:
    # trainer.val_check_interval=1 (every batch) and 1.0 (once an epoch) are different settings.
    payload = {"fingerprint_version": FINGERPRINT_VERSION, "config": canonical_config(cfg, rename)}
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)


def fingerprint(cfg: Mapping[str, Any], rename: bool = True) -> str:
    """sha256 (hex) of the canonical JSON of everything in ``cfg`` that changes the result."""
    return hashlib.sha256(_canonical_json(cfg, rename).encode("ascii")).hexdigest()


def upgraded(stored_config: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded config as the current version writes it: keys added since (``ADDED_KEYS``) at the values that
    keep the old behaviour; moved callables are renamed by the canonical form itself."""
    out = json.loads(json.dumps(plain_config(stored_config), default=str))
    for dotted, value in ADDED_KEYS.items():
        *parents, last = dotted.split(".")
        node = out
        for p in parents:
            if p in node and node[p] is None:
                break  # a group switched off (model.lora: null) has none of its keys, then as now
            if not isinstance(node.get(p), dict):
                node[p] = {}  # a group added since, or not a mapping then
            node = node[p]
        else:
            node.setdefault(last, json.loads(json.dumps(value)))
    return out


def same_configuration(stored: str | None, stored_config: Mapping[str, Any] | None, fp: str) -> bool:
    """Whether a record (its stored fingerprint and config) belongs to the run of fingerprint ``fp``.

    Equal fingerprints, or a record of an older version of cpo: its config hashes to the stored fingerprint as
    recorded (so the record is authentic), and to ``fp`` once upgraded (moved callables renamed, added keys at
    their old behaviour).
    """
    if stored is not None and stored == fp:
        return True
    if stored is None or not isinstance(stored_config, Mapping):
        return False
    if fingerprint(stored_config, rename=False) != stored and fingerprint(stored_config) != stored:
        return False
    return fingerprint(upgraded(stored_config)) == fp


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        flat: dict[str, Any] = {}
        for k, v in node.items():
            flat.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return flat
    return {prefix: node}


_ABSENT = object()


def _short(value: Any, width: int = 40) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = json.dumps(value, ensure_ascii=False, allow_nan=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every dotted key whose value differs between the canonical forms, sorted.

    Lists are compared whole. Neutral keys are ignored and ``old`` is upgraded (:func:`upgraded`), so the list
    names exactly what makes the fingerprints differ (empty when only FINGERPRINT_VERSION does).
    """
    a, b = _flatten(canonical_config(upgraded(old))), _flatten(canonical_config(new))
    lines = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        # Compared as JSON so that 1 and 1.0 differ (see _canonical_json) and NaN equals NaN.
        if _short(va, 10**9) != _short(vb, 10**9):
            lines.append(f"{key}: {_short(va)} -> {_short(vb)}")
    return lines


def describe_diff(lines: list[str], limit: int = 6) -> str:
    """The diff as one clause for a message: the first ``limit`` keys, then how many more."""
    if not lines:
        return "no configuration key differs"
    shown = "; ".join(lines[:limit])
    return shown + (f"; and {len(lines) - limit} more" if len(lines) > limit else "")
