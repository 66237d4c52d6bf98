"""Composition of one training run from a validated config: data -> model -> loss -> Trainer.fit -> save.

train.py is a thin Hydra entry around :func:`run`; tests call :func:`run` (or the script) directly.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from cpo.config import validate
from cpo.data import LoadContext, PreferenceDataModule, RunData, TestSet, build_source
from cpo.heldout import before_after_table, pair_metrics, translation_metrics
from cpo.io import atomic_write_json, atomic_write_text
from cpo.losses import PreferenceLoss
from cpo.models import LoraSettings, build_policy, build_reference, count_parameters, is_peft, load_tokenizer
from cpo.module import OptimSettings, PreferenceModule

log = logging.getLogger(__name__)


def say(msg: str) -> None:
    if rank_zero_only.rank == 0:
        print(msg, flush=True)


def load_data(cfg: DictConfig) -> RunData:
    """The configured data source's examples, dev/test sets and models (cpo.data.sources)."""
    source = build_source(cfg.data)
    ctx = LoadContext(cfg.cache_dir, cfg.seed, OmegaConf.to_container(cfg.model, resolve=True), progress=say)
    return source.load(ctx)


def resolve_model_path(cfg: DictConfig, data: RunData) -> str:
    """``model.name_or_path``, or the local model of that name that the data source provides (the demo's)."""
    name = cfg.model.name_or_path
    if name in data.models:
        return data.models[name]
    if name == "demo":
        from cpo.config import ConfigError

        raise ConfigError("model.name_or_path=demo is the embedded demo's warm start, which only data=demo provides; "
                          "name a model (model=hf model.name_or_path=...)")
    return name


def build_loss(cfg: DictConfig) -> PreferenceLoss:
    """The configured objective: every key of ``cfg.loss`` that is a ``PreferenceLoss`` field."""
    from dataclasses import fields

    names = {f.name for f in fields(PreferenceLoss)}
    return PreferenceLoss(**{k: v for k, v in OmegaConf.to_container(cfg.loss, resolve=True).items() if k in names})


def build_loggers(cfg: DictConfig, out_dir: Path) -> list:
    lg = cfg.logger
    if lg.name == "none":
        return []
    from lightning.pytorch.loggers import CSVLogger

    # A local CSV of every logged metric, beside W&B too: scripts/compare.py reads it with no server.
    csv = CSVLogger(save_dir=str(out_dir), name="csv", version="")
    if lg.name == "csv":
        return [csv]
    wandb_dir = out_dir / "wandb_files"
    for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"), ("WANDB_CONFIG_DIR", "config")):
        (wandb_dir / sub).mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(wandb_dir / sub)  # keep every W&B file in the run directory, never in $HOME
    os.environ.setdefault("WANDB_DISABLE_GIT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    from lightning.pytorch.loggers import WandbLogger

    names = run_names(cfg)
    return [
        WandbLogger(
            project=lg.project, entity=lg.entity, mode=lg.mode, save_dir=str(wandb_dir), dir=str(wandb_dir),
            group=lg.group or names["group"], job_type=cfg.loss.name, name=names["name"],
            tags=list(lg.tags) + ([cfg.experiment_name] if cfg.experiment_name else []), log_model=lg.log_model,
        ),
        csv,
    ]


def run_names(cfg: DictConfig) -> dict[str, str | None]:
    """W&B group (the sweep) and run name (only the overrides that vary across the sweep's jobs)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except ValueError:  # not under Hydra (library use)
        return {"name": cfg.loss.name, "group": cfg.experiment_name}
    if hc.mode != RunMode.MULTIRUN:
        return {"name": hc.job.override_dirname or cfg.loss.name, "group": cfg.experiment_name}
    varying = sweep_keys(hc)
    parts = [o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") in varying]
    name = ",".join(sorted(parts)) or cfg.loss.name
    # An experiment's sweep directory is stable (re-launches resume into the same group); a plain
    # sweep is named by its date and time folders so that sweeps of different days never share one.
    group = cfg.experiment_name or "sweep-" + "/".join(Path(hc.sweep.dir).parts[-2:])
    return {"name": name, "group": group}


def sweep_keys(hc) -> set[str]:
    """Keys swept on the command line (a,b / range() / choice()) or in an experiment's sweeper params."""
    import sys

    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys: set[str] = set()
    args = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
    try:
        for o in OverridesParser.create().parse_overrides(args):
            if o.is_sweep_override():
                keys.add(o.get_key_element().lstrip("+~"))
    except Exception:  # an argument Hydra itself accepted but we cannot parse: fall back to all overrides
        keys.update(a.split("=", 1)[0].lstrip("+~") for a in args)
    params = hc.sweeper.get("params") or {}
    keys.update(str(k) for k in params)
    return keys


def build_trainer(cfg: DictConfig, out_dir: Path, loggers: list, callbacks: list | None = None) -> L.Trainer:
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    kwargs: dict[str, Any] = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if v is not None}
    if isinstance(kwargs.get("strategy"), dict):
        kwargs["strategy"] = instantiate(cfg.trainer.strategy)
    ckpt = ModelCheckpoint(dirpath=str(out_dir / "checkpoints"), save_last=True, save_top_k=0)
    return L.Trainer(
        default_root_dir=str(out_dir), logger=loggers or False, callbacks=[ckpt] + (callbacks or []),
        enable_checkpointing=True, **kwargs,
    )


def evaluate_policy(policy, tokenizer, dm: PreferenceDataModule, test: TestSet | None, cfg: DictConfig, scorers) -> tuple[dict, list[str]]:
    metrics = pair_metrics(policy, dm.heldout_dataloader(), dm.collator.pad_id) if dm.val_pairs else {}
    hyps: list[str] = []
    if test is not None:
        e = cfg.evaluate
        n = min(len(test.sources), e.max_sentences)
        sub = test.head(n)
        tm, hyps = translation_metrics(policy, tokenizer, sub, scorers, e.batch_size, e.num_beams, e.max_new_tokens, cfg.data.max_prompt_length)
        metrics.update({k: v for k, v in tm.items() if isinstance(v, (int, float)) and k != "n"})
        metrics["bleu_signature"] = tm.get("bleu_signature")
    return metrics, hyps


def default_scorers(cfg: DictConfig, data: RunData) -> list:
    from cpo.scoring import build_scorer

    names = cfg.evaluate.get("scorers")
    if names is None:
        names = list(data.default_scorers)
    return [build_scorer(n) for n in names]


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Train one configuration; returns the results written to ``out_dir/results.json``."""
    validate(cfg)
    out_dir = Path(out_dir)
    if cfg.get("resume", True) and (out_dir / "results.json").exists():
        # Re-launching a sweep into the same directory skips the jobs that already finished.
        say(f"{out_dir}: already finished (results.json exists), skipping; pass resume=false to train again")
        return json.loads((out_dir / "results.json").read_text())
    t_start = time.time()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = load_data(cfg)
    model_path = resolve_model_path(cfg, data)

    tokenizer = load_tokenizer(model_path)
    m = cfg.model
    lora = LoraSettings(**OmegaConf.to_container(m.lora)) if m.lora is not None else None
    def make_policy():
        return build_policy(model_path, m.dtype, lora, m.gradient_checkpointing, m.attn_implementation, m.trust_remote_code)

    # Sharded strategies (FSDP, ZeRO-3) build the model in LightningModule.configure_model instead.
    lazy = bool(cfg.get("build_in_configure_model", False))
    policy = None if lazy else make_policy()
    trainable, total = count_parameters(policy) if policy is not None else (0, 0)
    if policy is not None:
        say(f"policy {m.name}: {trainable:,} trainable of {total:,} parameters" + (" (LoRA)" if is_peft(policy) else ""))

    loss = build_loss(cfg)
    d = cfg.data
    dm = PreferenceDataModule(
        data.train, data.val, tokenizer, batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
        max_prompt_length=d.max_prompt_length, max_length=d.max_length, prompt_truncation=d.prompt_truncation,
        nll_target=loss.nll_target, group_by_length=d.group_by_length, seed=cfg.seed, num_workers=d.num_workers,
    )
    say(f"data {d.name}: {len(dm.train_pairs)} train / {len(dm.val_pairs)} val pairs; tokenization {dm.drop_counts}")

    reference = None
    if loss.needs_reference_model:
        if lazy and cfg.loss.reference != "adapter_disabled":
            from cpo.config import ConfigError

            raise ConfigError("with build_in_configure_model=true, DPO needs loss.reference=adapter_disabled (LoRA)")
        if cfg.loss.reference == "cached":
            from cpo.reference_cache import attach_cached_reference

            attach_cached_reference(cfg, policy, dm, model_path, say)
        else:
            reference = build_reference(cfg.loss.reference, policy)
            say(f"DPO reference: {reference.mode}")

    module = PreferenceModule(policy if policy is not None else make_policy, loss, OptimSettings(**OmegaConf.to_container(cfg.optim)), dm.collator.pad_id, reference, cfg.forward)
    loggers = build_loggers(cfg, out_dir)
    from cpo.callbacks import build_callbacks

    # Built once: a COMET scorer loads its model, and both the callback and the table use it.
    scorers = default_scorers(cfg, data) if cfg.evaluate.before_after or cfg.evaluate.during_training.enabled else []
    trainer = build_trainer(cfg, out_dir, loggers, build_callbacks(cfg, tokenizer, data, scorers))
    for lg in loggers:
        lg.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True), "trainable_parameters": trainable, "total_parameters": total})

    before = None
    if cfg.evaluate.before_after and rank_zero_only.rank == 0 and policy is not None:
        say("evaluating the starting policy on held-out data")
        before, _ = evaluate_policy(policy, tokenizer, dm, data.test, cfg, scorers)

    t_fit = time.time()
    last = out_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if cfg.get("resume", True) and last.exists() else None
    if ckpt_path:
        say(f"resuming from {ckpt_path}")
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    fit_seconds = time.time() - t_fit

    policy = module.policy
    # Gathered through the strategy (a collective under FSDP/ZeRO-3), so every rank takes part.
    state = trainer.strategy.lightning_module_state_dict() if cfg.save_policy else None
    if lazy and trainer.is_global_zero:
        trainable, total = count_parameters(policy)
    results: dict[str, Any] = {}
    if trainer.is_global_zero:
        results = {
            "config": OmegaConf.to_container(cfg, resolve=True),
            "loss": loss.name, "beta": loss.beta, "seed": cfg.seed, "start_model": model_path,
            "trainable_parameters": trainable, "total_parameters": total,
            "train_pairs": len(dm.train_pairs), "val_pairs": len(dm.val_pairs), "tokenization": dm.drop_counts,
            "global_steps": trainer.global_step, "fit_seconds": round(fit_seconds, 2),
            "val": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
            "train": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")},
        }
        if before is not None:
            say("evaluating the trained policy on held-out data")
            after, hyps = evaluate_policy(policy, tokenizer, dm, data.test, cfg, scorers)
            results.update(before=before, after=after)
            table = before_after_table(before, after)
            say("\nHeld-out results, before -> after training (" + loss.name + "):\n" + table + "\n")
            atomic_write_text(out_dir / "before_after.md", table + "\n")
            if hyps:
                atomic_write_text(out_dir / "test_hypotheses.txt", "".join(h + "\n" for h in hyps))
            for lg in loggers:
                lg.log_metrics({f"test/{k}": v for k, v in after.items() if isinstance(v, (int, float)) and k != "pairs"})
        if cfg.save_policy:
            save_dir = out_dir / "policy"
            sd = {k[len("policy.") :]: v for k, v in state.items() if k.startswith("policy.")}
            policy.save_pretrained(save_dir, state_dict=sd)
            tokenizer.save_pretrained(save_dir)
            results["policy_dir"] = str(save_dir)
            say(f"saved policy to {save_dir}")
        results["total_seconds"] = round(time.time() - t_start, 2)
        atomic_write_json(out_dir / "results.json", results)
    finish_wandb(loggers)
    return results


def finish_wandb(loggers: list) -> None:
    """End the W&B run so the next job of a sequential multirun starts its own."""
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish()
