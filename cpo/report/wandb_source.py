"""A sweep read from W&B online (``source=wandb``): one run per job of a group.

W&B holds each job's final metrics and curves but not its test translations, so a report from
W&B has no paired bootstrap (the report says so) and no ``before`` evaluation (no deltas).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from cpo.io import Unavailable
from cpo.report.loading import IGNORED_KEYS, JobResult, as_seed, assign_labels, history_to_curve, parse_overrides
from cpo.report.metrics import number


class WandbUnavailable(Unavailable):
    """W&B online could not be reached (no network, no login, or no such project/group)."""


def split_run_name(name: str) -> dict[str, str] | None:
    """"beta=0.1,loss=cpo,seed=1" (the W&B run name train.py gives) -> overrides, or None if it is not one."""
    if not name or "=" not in name:
        return None
    parts = re.split(r",(?=[+~]?[A-Za-z_][\w.\-/]*=)", name)
    if not all(re.match(r"^[+~]?[A-Za-z_][\w.\-/]*=", p) for p in parts):
        return None
    return parse_overrides(parts)


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in flat.items():
        *parents, last = str(key).split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else node
        node[last] = v
    return out


def wandb_run_to_job(run: Any, history: Iterable[Mapping[str, Any]] | None = None) -> JobResult:
    """A ``wandb.apis.public.Run`` (or any object with name, id, state, config, summary_metrics and
    scan_history()) -> JobResult, with results shaped like results.json.

    train.py logs the resolved config as dotted top-level keys (``loss.name``; older runs: under ``config``),
    final metrics as ``train/*`` and ``val/*``
    and the held-out evaluation after training as ``test/*``; the run name is the sweep's varying
    overrides (``loss=cpo,seed=1``).
    """
    raw_config = dict(getattr(run, "config", None) or {})
    if isinstance(raw_config.get("config"), Mapping):  # runs logged before the config was flat
        cfg = dict(raw_config["config"])
    else:  # dotted top-level keys (loss.name, optim.lr, ...) back into the resolved config's shape
        cfg = _unflatten({k: v for k, v in raw_config.items()
                          if k not in ("provenance", "trainable_parameters", "total_parameters")})
    summary = getattr(run, "summary_metrics", None)
    summary = dict(summary if summary is not None else (getattr(run, "summary", None) or {}))
    name = getattr(run, "name", None) or getattr(run, "id", "run")
    overrides = split_run_name(name) or {}
    seed = as_seed(overrides.get("seed", cfg.get("seed")))
    state = str(getattr(run, "state", "finished") or "finished").lower()
    run_path = "/".join(str(p) for p in getattr(run, "path", []) or []) or str(getattr(run, "id", name))

    def numbers(prefix: str, strip: bool = False) -> dict[str, float]:
        return {(k[len(prefix):] if strip else k): x for k, v in summary.items()
                if k.startswith(prefix) and (x := number(v)) is not None}

    val, train, after = numbers("val/"), numbers("train/"), numbers("test/", strip=True)
    loss_cfg = cfg.get("loss") if isinstance(cfg.get("loss"), Mapping) else {}
    results: dict[str, Any] | None = {
        "config": cfg, "loss": loss_cfg.get("name"), "beta": loss_cfg.get("beta", cfg.get("beta")), "seed": seed,
        "trainable_parameters": raw_config.get("trainable_parameters"),
        "global_steps": number(summary.get("trainer/global_step")), "val": val, "train": train, "wandb_run": run_path,
    }
    if after:
        results["after"] = after
    error = None
    if state != "finished":
        results, error = None, f"W&B run state is {state!r}"
    elif not val and not train:
        results, error = None, "W&B run has no train/ or val/ metrics in its summary"
    curve = None
    if results is not None:
        if history is None and hasattr(run, "scan_history"):
            history = run.scan_history(page_size=1000)
        curve = history_to_curve(history or [])
    return JobResult(name=name, overrides=overrides, seed=seed, results=results, curve=curve, path=run_path,
                     error=error, translations_note="W&B holds no test translations")


def load_wandb(project: str, group: str | None, entity: str | None = None, timeout: int = 30,
               ignored: Iterable[str] = IGNORED_KEYS, api: Any = None) -> list[JobResult]:
    """The runs of a W&B project (one group: a sweep) as jobs. Needs network access and a login."""
    if not project:
        raise ValueError("source=wandb needs wandb.project")
    path = f"{entity}/{project}" if entity else project
    mode = os.environ.get("WANDB_MODE")
    hint = ("source=wandb needs network access to the W&B server and a login (WANDB_API_KEY or `wandb login`)"
            + (f"; WANDB_MODE={mode} is set" if mode in ("offline", "disabled", "dryrun") else "")
            + ". For runs on this machine use source=local sweep=<multirun folder>.")
    try:
        if api is None:
            import wandb

            api = wandb.Api(timeout=timeout)
        runs = list(api.runs(path, filters={"group": group} if group else None, lazy=False))
    except Exception as e:
        raise WandbUnavailable(f"cannot read runs of W&B project {path!r} (group {group!r}): "
                               f"{type(e).__name__}: {e}. {hint}") from e
    if not runs:
        raise WandbUnavailable(f"W&B project {path!r} has no runs" + (f" in group {group!r}" if group else ""))
    try:
        jobs = [wandb_run_to_job(r) for r in runs]
    except Exception as e:
        raise WandbUnavailable(f"reading W&B runs of {path!r} failed: {type(e).__name__}: {e}. {hint}") from e
    if any(not j.overrides for j in jobs):
        # Run names that are not "k=v,..." (renamed runs): use the config keys that differ between runs.
        flat = [_flatten(j.results["config"]) if j.results else {} for j in jobs]
        keys = sorted({k for f in flat for k in f})
        varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat if f}) > 1]
        for j, f in zip(jobs, flat):
            if not j.overrides:
                j.overrides = {k: str(f.get(k)) for k in varying}
    jobs.sort(key=lambda j: j.name)
    assign_labels(jobs, ignored)
    return jobs
