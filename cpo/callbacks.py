"""Lightning callbacks assembled from the config: translation quality and sample tables at validation."""
from __future__ import annotations

import lightning as L
import torch
from omegaconf import DictConfig


class TranslationEval(L.Callback):
    """At each validation, translate a few held-out sources and log BLEU, chrF and scorer means
    (``val/bleu``, ``val/chrf``, ``val/<scorer>``), plus a W&B table of sample translations next
    to the preferred and dis-preferred candidates."""

    def __init__(self, examples: list, tokenizer, scorers=(), max_sentences: int = 32, table_rows: int = 8, batch_size: int = 32, max_new_tokens: int = 64):
        by_direction = [e for e in examples if (e.src_lang, e.tgt_lang) == (examples[0].src_lang, examples[0].tgt_lang)]
        self.examples = by_direction[:max_sentences]
        self.tokenizer, self.scorers = tokenizer, list(scorers)
        self.table_rows, self.batch_size, self.max_new_tokens = table_rows, batch_size, max_new_tokens

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.examples or not trainer.is_global_zero:
            return
        from cpo.evaluation import corpus_metrics
        from cpo.generation import translate

        ex = self.examples
        hyps = translate(pl_module.policy, self.tokenizer, [e.source for e in ex], ex[0].src_lang, ex[0].tgt_lang,
                         batch_size=self.batch_size, num_beams=1, max_new_tokens=self.max_new_tokens)
        refs = [e.reference or e.chosen for e in ex]  # the preferred side stands in when there is no reference
        m = corpus_metrics(hyps, refs, ex[0].tgt_lang, sources=[e.source for e in ex], scorers=self.scorers)
        metrics = {f"val/{k}": float(v) for k, v in m.items() if isinstance(v, (int, float)) and k != "n"}
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)
            if type(lg).__name__ == "WandbLogger" and self.table_rows:
                rows = [[e.source, e.reference or "", e.chosen, e.rejected, h] for e, h in list(zip(ex, hyps))[: self.table_rows]]
                lg.log_table("val/samples", columns=["source", "reference", "chosen", "rejected", "policy"], data=rows, step=trainer.global_step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})


def build_callbacks(cfg: DictConfig, tokenizer, data, scorers=()) -> list:
    t = cfg.evaluate.get("during_training") or {}
    if not t.get("enabled", False) or not data.val:
        return []
    return [TranslationEval(data.val, tokenizer, scorers, t.get("max_sentences", 32), t.get("table_rows", 8))]
