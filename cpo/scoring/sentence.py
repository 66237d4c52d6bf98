"""sacrebleu's sentence BLEU and chrF as scorers: reference-based, cheap, deterministic."""
from __future__ import annotations

from typing import Any

from cpo.languages import sacrebleu_tokenizer
from cpo.scoring.base import Scorer


def _sacrebleu_version() -> str:
    import sacrebleu

    return sacrebleu.__version__


class SentenceBleuScorer(Scorer):
    """sacrebleu sentence BLEU (exp smoothing, effective order, as ``sacrebleu.sentence_bleu``).

    With ``tokenize=None`` the tokenizer follows the target language
    (:func:`cpo.languages.sacrebleu_tokenizer`), so ``tgt_lang`` is then required.
    """

    name = "sentence_bleu"
    requires_reference = True
    uses_reference = True

    def __init__(self, tokenize: str | None = None, name: str = "sentence_bleu") -> None:
        self.tokenize = tokenize
        self.name = name
        self.uses_tgt_lang = tokenize is None
        self._metrics: dict[str, Any] = {}

    @property
    def identity(self) -> str:
        return f"sacrebleu{_sacrebleu_version()}:sentence_bleu:tok={self.tokenize or 'by-tgt-lang'}"

    def _metric(self, tokenize: str):
        if tokenize not in self._metrics:  # building a tokenizer (mecab) is not free
            from sacrebleu.metrics import BLEU

            self._metrics[tokenize] = BLEU(tokenize=tokenize, effective_order=True)
        return self._metrics[tokenize]

    def _score(self, sources, hypotheses, references, tgt_lang):
        if self.tokenize is None and not tgt_lang:
            raise ValueError(
                f"scorer {self.name!r}: tgt_lang is needed to choose the BLEU tokenizer "
                "(or configure tokenize: 13a|zh|ja-mecab|...)"
            )
        bleu = self._metric(self.tokenize or sacrebleu_tokenizer(tgt_lang))
        return [bleu.sentence_score(h, [r]).score for h, r in zip(hypotheses, references)]


class SentenceChrfScorer(Scorer):
    """sacrebleu sentence chrF (character 6-grams, beta 2, as ``sacrebleu.sentence_chrf``)."""

    requires_reference = True
    uses_reference = True

    def __init__(self, name: str = "sentence_chrf") -> None:
        self.name = name
        self._metric = None

    @property
    def identity(self) -> str:
        return f"sacrebleu{_sacrebleu_version()}:sentence_chrf"

    def _score(self, sources, hypotheses, references, tgt_lang):
        if self._metric is None:
            from sacrebleu.metrics import CHRF

            self._metric = CHRF()
        return [self._metric.sentence_score(h, [r]).score for h, r in zip(hypotheses, references)]
