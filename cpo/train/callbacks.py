"""Lightning callbacks assembled from the config: translation quality and sample tables at validation."""
from __future__ import annotations

import time

import lightning as L
import torch
from omegaconf import DictConfig

from cpo.console import say
from cpo.data.sources import TestSet


class TranslationEval(L.Callback):
    """At each validation, translate the data source's dev set and log BLEU, chrF, the health checks and
    scorer means (``val/bleu``, ``val/chrf``, ``val/<scorer>``, ...), plus a W&B table of sample
    translations next to the preferred and dis-preferred candidates of the same source."""

    def __init__(self, dev: TestSet, tokenizer, scorers=(), examples=(), table_rows: int = 8, batch_size: int = 32,
                 max_new_tokens: int = 64, max_prompt_length: int | None = None, metrics=("bleu", "chrf", "chrfpp"),
                 prompt_format=None):
        self.dev, self.tokenizer, self.scorers = dev, tokenizer, list(scorers)
        self.pairs = {e.source: e for e in examples}
        self.table_rows, self.batch_size, self.max_new_tokens = table_rows, batch_size, max_new_tokens
        self.max_prompt_length, self.metrics = max_prompt_length, tuple(metrics)
        self.prompt_format = prompt_format  # the run's (cpo.mt.prompt), as training encodes it

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        from cpo.mt.evaluation import corpus_metrics
        from cpo.mt.generation import translate

        d = self.dev
        hyps = translate(pl_module.policy, self.tokenizer, d.sources, d.src_lang, d.tgt_lang,
                         batch_size=self.batch_size, num_beams=1, max_new_tokens=self.max_new_tokens,
                         max_prompt_length=self.max_prompt_length, prompt_format=self.prompt_format)
        m = corpus_metrics(hyps, d.references, d.tgt_lang, sources=d.sources, scorers=self.scorers, src_lang=d.src_lang,
                           metrics=self.metrics)
        metrics = {f"val/{k}": float(v) for k, v in m.items() if isinstance(v, (int, float)) and k != "n"}
        step = trainer.fit_loop.epoch_loop._batches_that_stepped  # the step Lightning's own rows carry
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step)
            if type(lg).__name__ == "WandbLogger" and self.table_rows:
                rows = []
                for src, ref, hyp in list(zip(d.sources, d.references, hyps))[: self.table_rows]:
                    pair = self.pairs.get(src)
                    rows.append([src, ref, pair.chosen if pair else "", pair.rejected if pair else "", hyp])
                lg.log_table("val/samples", columns=["source", d.label, "chosen", "rejected", "policy"], data=rows,
                             step=step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})


class ProgressLog(L.Callback):
    """One progress line every ``every_seconds`` of training (step, loss, speed): the progress bar's stand-in
    in logs that are not a terminal (sweeps, SLURM files), where a bar writes a carriage return per step."""

    def __init__(self, every_seconds: float = 30.0):
        self.every = every_seconds
        self._t0 = self._last = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = self._last = time.time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.time()
        if now - self._last < self.every or not trainer.is_global_zero:
            return
        self._last = now
        loss = trainer.callback_metrics.get("train/loss")
        rate = trainer.global_step / max(now - self._t0, 1e-9)
        say(f"step {trainer.global_step}/{trainer.estimated_stepping_batches}"
            + (f"  loss {float(loss):.4f}" if loss is not None else "") + f"  ({rate:.2f} steps/s)")


class FinalTrainMetrics(L.Callback):
    """Training metrics of the last step reach the loggers even when a short run ends between two logging
    steps (a 5-step run with ``log_every_n_steps=10`` logged nothing), and the step of the last validation
    is remembered (``last_val_step``) so the run validates once more at its end if it must."""

    def __init__(self):
        self.last_val_step: int | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.last_val_step = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        every = max(1, int(trainer.log_every_n_steps))
        if trainer.global_step == 0 or trainer.global_step % every == 0 or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step - 1)
            lg.save()


class PreemptionDeferral(L.Callback):
    """SIGTERM stops training at an optimizer step, never inside gradient accumulation.

    Lightning stops at the end of the batch during which SIGTERM arrived; inside an accumulation window the
    gradients of the window's first micro-batches live only in memory, so a checkpoint written there could
    not resume to the uninterrupted run. The stop is held back to the end of the window (at most
    ``accumulate - 1`` micro-batches), where the checkpoint callback saves ``last.ckpt``.
    """

    def __init__(self):
        self._seen, self._pending = 0, False

    def on_train_start(self, trainer, pl_module) -> None:
        self._seen = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stepped, self._seen = trainer.global_step != self._seen, trainer.global_step
        signals = trainer._signal_connector  # Lightning's flag, read by its loops after this hook
        # Ranks agree, so that all of them stop at the same step even if the signal reached them apart.
        stop = trainer.strategy.reduce_boolean_decision(bool(signals.received_sigterm) or self._pending, all=False)
        if stop and not stepped:
            signals.received_sigterm, self._pending = False, True
        elif stop and stepped:
            signals.received_sigterm = True


def build_callbacks(cfg: DictConfig, tokenizer, data, scorers=(), prompt_format=None) -> list:
    t = cfg.evaluate.get("during_training") or {}
    if not t.get("enabled", False) or data.dev is None:
        return []
    if cfg.get("build_in_configure_model", False):
        # FSDP / ZeRO-3 shard the weights: generating on rank 0 alone would wait forever for the other ranks.
        say("evaluate.during_training is off under a sharded strategy (FSDP, DeepSpeed ZeRO-3): validation logs "
            "the preference metrics only; translate the saved policy with scripts/generate.py")
        return []
    dev = data.dev.head(int(t.get("max_sentences", 200)))
    # Greedy for speed, but as long as the data's evaluation allows, so long sentences are not cut short.
    e = cfg.evaluate
    max_new = int(e.max_new_tokens if e.get("max_new_tokens") is not None else data.generation["max_new_tokens"])
    return [TranslationEval(dev, tokenizer, scorers, data.val, t.get("table_rows", 8), max_new_tokens=max_new,
                            max_prompt_length=cfg.data.max_prompt_length,
                            metrics=t.get("metrics") or ("bleu", "chrf", "chrfpp"), prompt_format=prompt_format)]
