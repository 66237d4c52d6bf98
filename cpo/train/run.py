"""One training run from a validated config: data -> model -> loss -> Trainer.fit -> evaluation -> save.

train.py is a thin Hydra entry around :func:`run`; tests call :func:`run` (or the script) directly.
The run folder is guarded (cpo.runs): one writer at a time, finished results reused only when the
configuration that changes them is the same, checkpoints written atomically and often, and a run that
diverges or is stopped by a signal leaves nothing that looks finished.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from cpo.cli import accept_launch
from cpo.train.chunked_logps import LogpsSettings
from cpo.train.config import ConfigError, validate
from cpo.console import interactive, say, warn
from cpo.data import LoadContext, PreferenceDataModule, RunData, build_source
from cpo.train.guards import Diverged, DivergenceGuard, check_finite_weights, check_heldout_collapse
from cpo.train.heldout import (Evaluation, GenerationSettings, before_after_table, evaluate_policy, logged_metrics,
                               on_accelerator, table_basis)
from cpo.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, normalize_permissions
from cpo.train.loggers import build_loggers, finish_wandb, hyperparameters
from cpo.train.model_card import check_hub_access, command, publish, render, write_card
from cpo.train.losses import PreferenceLoss
from cpo.train.models import LoraSettings, build_policy, build_reference, count_parameters, is_peft, load_tokenizer
from cpo.train.models import save_policy as save_pretrained_policy
from cpo.train.module import OptimSettings, PreferenceModule
from cpo.mt.prompt import PromptFormat, build_prompt_format, write_prompt_record
from cpo.train.preflight import check_hardware, check_hub_names, check_numerics, resolve_model_dtype
from cpo.train.provenance import provenance
from cpo.train.ranks import decide, follow
from cpo.train.sigterm import SigtermGuard, interruption
from cpo.train.trainer import BatchPlan, build_trainer, plan_batch


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
        raise ConfigError("model.name_or_path=demo is the embedded demo's warm start, which only data=demo provides; "
                          "name a model (model=hf model.name_or_path=...)")
    return name


def build_loss(cfg: DictConfig) -> PreferenceLoss:
    """The configured objective: every key of ``cfg.loss`` that is a ``PreferenceLoss`` field."""
    return PreferenceLoss.from_config(OmegaConf.to_container(cfg.loss, resolve=True))


def build_logps(cfg: DictConfig) -> LogpsSettings:
    """``logps.*``: full logits or the chunked output projection, for every log-prob of the run."""
    return LogpsSettings(**OmegaConf.to_container(cfg.logps, resolve=True))


def run_identity(cfg: DictConfig, plan: BatchPlan) -> dict:
    """What decides whether a folder's results or checkpoint belong to this run: the resolved config, the
    batch layout this hardware gives (a resume on another number of GPUs would be at another data position),
    and fingerprints of the local files the config names (data, model, adapter): a file rewritten at the same
    path makes another run. Files derived from the config (the demo's cache) need none."""
    from cpo.train.reference_cache import file_fingerprint, folder_fingerprint

    files: dict[str, object] = {}
    for key in ("train_file", "val_file", "test_file", "dev_file", "path"):
        value = cfg.data.get(key)
        p = Path(str(value)) if isinstance(value, str) else None
        if p is not None and p.is_file():
            files[f"data.{key}"] = file_fingerprint(p)
        elif p is not None and p.is_dir():
            files[f"data.{key}"] = {f.name: file_fingerprint(f) for f in sorted(p.glob("*.json*")) if f.is_file()}
    lora = cfg.model.get("lora")
    adapter = lora.get("adapter") if lora is not None else None  # `+model.lora.r=16` names no adapter
    for key, value in (("model.name_or_path", cfg.model.name_or_path), ("model.lora.adapter", adapter)):
        if isinstance(value, str) and Path(value).is_dir():
            files[key] = folder_fingerprint(value)
    identity = OmegaConf.to_container(cfg, resolve=True)
    identity["inputs"] = {"batch": plan.as_dict(), "files": files}
    return identity


def default_scorers(cfg: DictConfig, data: RunData) -> list:
    from cpo.scoring import build_scorer

    names = cfg.evaluate.get("scorers")
    if names is None:
        names = list(data.default_scorers)
    return [build_scorer(n) for n in names]


def generation_settings(cfg: DictConfig, data: RunData,
                        prompt_format: PromptFormat | None = None) -> GenerationSettings:
    e = cfg.evaluate
    return GenerationSettings(
        num_beams=int(e.num_beams if e.num_beams is not None else data.generation["num_beams"]),
        max_new_tokens=int(e.max_new_tokens if e.max_new_tokens is not None else data.generation["max_new_tokens"]),
        batch_size=int(e.batch_size), max_prompt_length=int(cfg.data.max_prompt_length), prompt_format=prompt_format,
    )


def run(cfg: DictConfig, out_dir: str | Path, overrides: list[str] | None = None) -> dict:
    """Train one configuration; returns the results written to ``out_dir/results.json``. ``overrides``: what names
    the run in a sweep, kept in run.json (default: the launch's command line; scripts/rounds.py gives each round's)."""
    from cpo.runs import RunFolder

    validate(cfg)
    check_numerics(cfg)
    check_hub_access(cfg)  # push_to_hub: an upload that cannot happen is refused now, not after training
    resolve_model_dtype(cfg)  # model.dtype=auto -> the dtype loaded, recorded as such in the run's identity
    check_hardware(cfg)
    check_hub_names(cfg)
    plan = plan_batch(cfg)
    out_dir = Path(out_dir)
    folder = RunFolder(out_dir)
    # Rank 0 owns the folder; processes Lightning starts for the other ranks follow its decision.
    owner = rank_zero_only.rank == 0 and "CPO_RUN_DECISION" not in os.environ
    started = False
    resume_from = [cfg.ckpt_path]  # what a SIGTERM's message names: the checkpoint this run starts from, once known
    with SigtermGuard(lambda signum: interruption(signum, out_dir, resume_from[0])) as guard, \
            folder.acquire() if owner else contextlib.nullcontext():
        try:
            identity = run_identity(cfg, plan)
            shared = decide(cfg, identity, folder, overrides) if owner else follow(out_dir)
            if shared["skip"]:
                results = shared.get("results") or {}
            else:
                accept_launch(record=owner)  # the folder is this run's: Hydra's record and the log file go there now
                started = True
                resume_from[0] = shared["ckpt_path"]
                results = _Run(cfg, identity, out_dir, plan, folder, shared["ckpt_path"], shared["log_step"],
                               guard).execute()
            if owner:  # push_to_hub, after results.json: a failed upload never undoes the run
                publish(cfg, out_dir, say)
            return results
        finally:
            if owner:  # the decision is this run's only: the next run in this process decides again
                os.environ.pop("CPO_RUN_DECISION", None)
            if owner and started:  # whatever wrote them (W&B's staging copies, a failed save): files others can read
                normalize_permissions(out_dir)

class _Run:
    """The steps of one run, sharing what they build."""

    def __init__(self, cfg: DictConfig, identity: dict, out_dir: Path, plan: BatchPlan, folder, ckpt_path: str | None,
                 log_step: int | None, guard: SigtermGuard):
        self.cfg, self.identity, self.out_dir, self.plan, self.folder = cfg, identity, out_dir, plan, folder
        self.ckpt_path, self.log_step = ckpt_path, log_step
        self.guard = guard
        self.fit_metrics: dict[str, float] = {}
        self.t_start = time.time()

    # ------------------------------------------------------------------ building
    def build(self) -> None:
        cfg = self.cfg
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        # The prompt format (conf/prompt) every consumer receives: data encoding, validation and held-out
        # translations, the policy's record. A format the tokenizer cannot serve (a chat format without a chat
        # template) stops before the data is encoded or the model loaded.
        self.prompt_format = build_prompt_format(cfg.get("prompt"))
        self.data = data = load_data(cfg)
        self.model_path = resolve_model_path(cfg, data)
        self.tokenizer = load_tokenizer(self.model_path)
        self.prompt_format.check(self.tokenizer)
        m = cfg.model
        self.lora = lora = LoraSettings(**OmegaConf.to_container(m.lora)) if m.lora is not None else None
        self.loss = loss = build_loss(cfg)
        self.logps = build_logps(cfg)
        d = cfg.data
        # Encoded before the model is loaded: a row the format cannot write or a budget too short stops here.
        self.dm = dm = PreferenceDataModule(
            data.train, data.val, self.tokenizer, batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
            max_prompt_length=d.max_prompt_length, max_length=d.max_length, prompt_truncation=d.prompt_truncation,
            nll_target=loss.nll_target, group_by_length=d.group_by_length, seed=cfg.seed, num_workers=d.num_workers,
            prompt_format=self.prompt_format,
        )

        # Sharded strategies (FSDP, ZeRO-3) build the model in LightningModule.configure_model instead.
        self.lazy = bool(cfg.get("build_in_configure_model", False))

        def make_policy():
            # Seeded here again: a fresh adapter's initial weights must depend on the seed alone, not on what
            # ran before (a cold cache builds the demo's assets first and would shift the random stream).
            L.seed_everything(cfg.seed, workers=True, verbose=False)
            return build_policy(self.model_path, m.dtype, lora, m.gradient_checkpointing, m.attn_implementation,
                                m.trust_remote_code, m.disable_dropout, sharded=self.lazy)

        policy = None if self.lazy else make_policy()
        self.trainable, self.total = count_parameters(policy) if policy is not None else (0, 0)
        if policy is not None:
            say(f"policy {m.name}: {self.trainable:,} trainable of {self.total:,} parameters"
                + (" (LoRA)" if is_peft(policy) else ""))
        say(f"data {d.name}: {len(dm.train_pairs)} train / {len(dm.val_pairs)} val pairs; "
            f"tokenization {dm.drop_counts}; global batch {self.plan.global_batch} = {self.plan.per_device} per device "
            f"x {self.plan.devices} devices x {self.plan.nodes} nodes x {self.plan.accumulate} accumulated")
        reference = self._reference(policy)
        self.module = PreferenceModule(policy if policy is not None else make_policy, loss,
                                       OptimSettings(**OmegaConf.to_container(cfg.optim)), dm.collator.pad_id,
                                       reference, cfg.forward, self.logps)
        # Built once: a COMET scorer loads its model, and both the callback and the table use it.
        e = cfg.evaluate
        self.scorers = default_scorers(cfg, data) if e.before_after or e.during_training.enabled else []
        self.gen = generation_settings(cfg, data, self.prompt_format)

    def _reference(self, policy):
        cfg, loss = self.cfg, self.loss
        if not loss.needs_reference_model:
            return None
        reference = build_reference(cfg.loss.reference, policy, self.lora, sharded=self.lazy)
        if reference is None:  # loss.reference=cached: log-probs of the starting policy travel with the batches
            from cpo.train.reference_cache import attach_cached_reference

            attach_cached_reference(cfg, policy, self.dm, self.model_path, say, self.logps)
            return None
        say(f"DPO reference: {reference.mode}")
        return reference

    def trainer(self) -> L.Trainer:
        from cpo.train.callbacks import FinalTrainMetrics, PreemptionDeferral, ProgressLog, build_callbacks
        from cpo.runs import AtomicCheckpointIO, RandomState, checkpoint_callback, fingerprint
        from cpo.train.policy_selection import build_selection_callbacks
        from cpo.runs.fingerprint import canonical_config

        cfg = self.cfg
        resolved = self.identity
        g, c = cfg.guard, cfg.checkpoint
        callbacks = [DivergenceGuard(g.max_nll_ratio, g.window, g.min_nll_rise), PreemptionDeferral(),
                     FinalTrainMetrics(), RandomState(), self.guard.callback()]
        callbacks += build_callbacks(cfg, self.tokenizer, self.data, self.scorers, self.prompt_format)
        callbacks += build_selection_callbacks(cfg, self.data, self.scorers, len(self.dm.val_pairs))
        if not interactive() and cfg.trainer.get("enable_progress_bar") is not True:
            callbacks.append(ProgressLog(float(cfg.get("progress_every_seconds", 30))))
        callbacks.append(checkpoint_callback(self.out_dir, c.every_n_steps, c.every_minutes, fingerprint(resolved),
                                             canonical_config(resolved)))
        self.loggers = build_loggers(cfg, self.out_dir, self.log_step)
        return build_trainer(cfg, self.out_dir, self.plan, self.loggers, callbacks, plugins=[AtomicCheckpointIO()])

    # ------------------------------------------------------------------ steps
    def execute(self) -> dict:
        self.build()
        trainer = self.trainer()
        from cpo.data.records import pair_scorers

        self.provenance = provenance(self.data.files, self.plan.as_dict(), pair_scorers(self.data.train),
                                     {s.name: s.identity for s in self.scorers})
        for lg in self.loggers:
            lg.log_hyperparams(hyperparameters(self.cfg, self.provenance, self.trainable, self.total))
        before = self.evaluate_before()
        t_fit = time.time()
        if self.ckpt_path:
            say(f"resuming from {self.ckpt_path}")
        with self.guard.lightning():  # SIGTERM here is Lightning's to act on, at an optimizer step
            try:
                trainer.fit(self.module, datamodule=self.dm, ckpt_path=self.ckpt_path)
                self.fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # validate() clears them
                self.validate_at_end(trainer)
            except Diverged as e:
                self.fail(trainer, e)
            except SIGTERMException:
                self.interrupted(trainer)
        fit_seconds = time.time() - t_fit
        # Gathered through the strategy (a collective under FSDP/ZeRO-3), so every rank takes part.
        state = trainer.strategy.lightning_module_state_dict() if self.cfg.save_policy else None
        results: dict[str, Any] = {}
        if trainer.is_global_zero:
            try:
                check_finite_weights(self.module.policy)
            except Diverged as e:
                self.fail(trainer, e)
            try:
                results = self.finish(trainer, before, state, fit_seconds)
            except Diverged as e:  # the held-out numbers say the policy collapsed (guards.check_heldout_collapse)
                self.fail(trainer, e)
            except BaseException:  # e.g. a full disk: no report or policy may look finished without results.json
                self.folder.discard_outputs()
                raise
        self.guard.release()  # results.json is written: nothing is left to resume
        finish_wandb(self.loggers)
        return results

    def evaluate_before(self) -> dict | None:
        """The starting policy's held-out metrics (rank 0); kept in before.json so a resumed run reuses them."""
        cfg = self.cfg
        if not cfg.evaluate.before_after or rank_zero_only.rank != 0 or self.module.policy is None:
            return None
        if not self.dm.val_pairs and self.data.test is None:  # nothing to evaluate: no empty table
            warn("no held-out pairs and no test set, so no before/after table: give data.val_file, data.test_file "
                 "or a data.val_size that holds out at least one source")
            return None
        saved = self.out_dir / "before.json"
        if self.ckpt_path and saved.is_file():
            return json.loads(saved.read_text())
        say("evaluating the starting policy on held-out data")
        before = self._evaluate().metrics
        atomic_write_json(saved, before)
        for lg in self.loggers:  # beside test/* after training, so the change shows in W&B and TensorBoard
            lg.log_metrics(logged_metrics(before, "before"), step=0)
        return before

    def _test_set(self):
        test = self.data.test
        return test.head(int(self.cfg.evaluate.max_sentences)) if test is not None else None

    def _evaluate(self) -> Evaluation:
        test = self._test_set()
        loader = self.dm.heldout_dataloader() if self.dm.val_pairs else None
        with on_accelerator(self.module.policy, self.cfg.trainer) as policy:
            return evaluate_policy(policy, self.tokenizer, loader, self.dm.collator.pad_id, test, self.scorers,
                                   self.gen, say, progress=interactive(), logps=self.logps)

    def validate_at_end(self, trainer: L.Trainer) -> None:
        """A run stopped by a step limit ends without validating: validate once more so results always hold val/*."""
        if not self.dm.val_pairs or self.cfg.trainer.get("limit_val_batches") == 0:
            return
        from cpo.train.callbacks import FinalTrainMetrics

        tracker = next((c for c in trainer.callbacks if isinstance(c, FinalTrainMetrics)), None)
        if tracker is not None and tracker.last_val_step == trainer.global_step:
            return
        trainer.validate(self.module, datamodule=self.dm, verbose=False)

    def fail(self, trainer: L.Trainer, e: Diverged) -> None:
        if trainer.is_global_zero:
            self.folder.discard_outputs()
        finish_wandb(self.loggers)
        raise e

    def interrupted(self, trainer: L.Trainer) -> None:
        import signal

        finish_wandb(self.loggers)
        raise interruption(signal.SIGTERM, self.out_dir, self.ckpt_path)

    def finish(self, trainer: L.Trainer, before: dict | None, state, fit_seconds: float) -> dict:
        cfg, out_dir, loss = self.cfg, self.out_dir, self.loss
        if self.lazy:
            self.trainable, self.total = count_parameters(self.module.policy)
        from cpo.runs import last_logged
        from cpo.train.policy_selection import callback_summaries, select_policy

        # The metrics history first: a resume of a finished fit trains no step and leaves callback_metrics empty.
        history = last_logged(out_dir / "csv" / "metrics.csv") if (out_dir / "csv" / "metrics.csv").is_file() else {}
        metrics = {**history, **self.fit_metrics, **{k: float(v) for k, v in trainer.callback_metrics.items()}}
        state, last_state, selection = select_policy(trainer, self.module, state)  # callbacks=best_policy
        results: dict[str, Any] = {
            "config": OmegaConf.to_container(cfg, resolve=True),
            "loss": loss.name, "beta": loss.beta, "ignored_keys": list(loss.ignored_keys), "seed": cfg.seed,
            "start_model": self.model_path,
            "trainable_parameters": self.trainable, "total_parameters": self.total,
            "train_pairs": len(self.dm.train_pairs), "val_pairs": len(self.dm.val_pairs),
            "tokenization": self.dm.drop_counts, "global_batch": self.plan.as_dict(),
            "global_steps": trainer.global_step, "fit_seconds": round(fit_seconds, 2),
            "val": {k: float(v) for k, v in metrics.items() if k.startswith("val/")},
            "train": {k: float(v) for k, v in metrics.items() if k.startswith("train/")},
            "dev_references": self.data.dev.label if self.data.dev is not None else None,
            "provenance": self.provenance, "command": command(),
        }
        results.update(callback_summaries(trainer, selection))
        table = None
        if before is not None:
            say("evaluating the trained policy on held-out data")
            after = self._evaluate()
            results.update(before=before, after=after.metrics)
            basis, warnings = table_basis(after.metrics, self._test_set())
            table = basis + "\n\n" + before_after_table(before, after.metrics)
            say("\nHeld-out results, before -> after training (" + loss.name + "):\n" + table + "\n")
            for warning in warnings:
                warn(warning)
            atomic_write_text(out_dir / "before_after.md", table + "\n")
            if after.rows:
                atomic_write_jsonl(out_dir / "test_translations.jsonl", after.rows)
            for lg in self.loggers:
                lg.log_metrics(logged_metrics(after.metrics, "test"), step=trainer.global_step)
            check_heldout_collapse(before, after.metrics, cfg.guard.get("min_chrf_ratio"))  # no policy, no results
        if cfg.save_policy:
            langs = {x for t in (self.data.test, self.data.dev) if t is not None for x in (t.src_lang, t.tgt_lang)}
            for name, st in (("policy", state), ("policy_last", last_state)):
                if st is not None:  # each folder with its model card (README.md)
                    card = render(results["config"], results, table, name, langs)
                    results[f"{name}_dir"] = str(self.save_policy(st, name, card))
        results["total_seconds"] = round(time.time() - self.t_start, 2)
        return self.folder.finish(results)  # results.json last: it means "finished"

    def save_policy(self, state, name: str = "policy", card: str | None = None) -> Path:
        """``policy/`` (and its model card) via a temporary folder renamed into place, so a kill never leaves half a
        policy."""
        import shutil
        import tempfile

        final = self.out_dir / name
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.out_dir))
        try:
            sd = {k[len("policy."):]: v for k, v in state.items() if k.startswith("policy.")}
            save_pretrained_policy(self.module.policy, tmp, state_dict=sd)  # the trained adapter, not the reference
            self.tokenizer.save_pretrained(tmp)
            write_prompt_record(tmp, self.prompt_format)  # scripts/generate.py translates with it
            if card is not None:
                write_card(tmp, card)
            normalize_permissions(tmp)  # mkdtemp's 0700 and safetensors' private 0600 file: the umask's modes
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        say(f"saved policy to {final}")
        return final

