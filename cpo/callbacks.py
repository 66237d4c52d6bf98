"""Lightning callbacks assembled from the config: translation quality and sample tables at validation."""
from __future__ import annotations

import lightning as L
import torch
from omegaconf import DictConfig

from cpo.data.sources import TestSet


class TranslationEval(L.Callback):
    """At each validation, translate the data source's dev set and log BLEU, chrF, the health checks and
    scorer means (``val/bleu``, ``val/chrf``, ``val/<scorer>``, ...), plus a W&B table of sample
    translations next to the preferred and dis-preferred candidates of the same source."""

    def __init__(self, dev: TestSet, tokenizer, scorers=(), examples=(), table_rows: int = 8, batch_size: int = 32,
                 max_new_tokens: int = 64, max_prompt_length: int | None = None):
        self.dev, self.tokenizer, self.scorers = dev, tokenizer, list(scorers)
        self.pairs = {e.source: e for e in examples}
        self.table_rows, self.batch_size, self.max_new_tokens = table_rows, batch_size, max_new_tokens
        self.max_prompt_length = max_prompt_length

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        from cpo.evaluation import corpus_metrics
        from cpo.generation import translate

        d = self.dev
        hyps = translate(pl_module.policy, self.tokenizer, d.sources, d.src_lang, d.tgt_lang, batch_size=self.batch_size,
                         num_beams=1, max_new_tokens=self.max_new_tokens, max_prompt_length=self.max_prompt_length)
        m = corpus_metrics(hyps, d.references, d.tgt_lang, sources=d.sources, scorers=self.scorers, src_lang=d.src_lang)
        metrics = {f"val/{k}": float(v) for k, v in m.items() if isinstance(v, (int, float)) and k != "n"}
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)
            if type(lg).__name__ == "WandbLogger" and self.table_rows:
                rows = []
                for src, ref, hyp in list(zip(d.sources, d.references, hyps))[: self.table_rows]:
                    pair = self.pairs.get(src)
                    rows.append([src, ref, pair.chosen if pair else "", pair.rejected if pair else "", hyp])
                lg.log_table("val/samples", columns=["source", d.label, "chosen", "rejected", "policy"], data=rows,
                             step=trainer.global_step)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})


def build_callbacks(cfg: DictConfig, tokenizer, data, scorers=()) -> list:
    t = cfg.evaluate.get("during_training") or {}
    if not t.get("enabled", False) or data.dev is None:
        return []
    dev = data.dev.head(int(t.get("max_sentences", 200)))
    return [TranslationEval(dev, tokenizer, scorers, data.val, t.get("table_rows", 8),
                            max_prompt_length=cfg.data.max_prompt_length)]
