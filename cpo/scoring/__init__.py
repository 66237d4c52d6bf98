"""One interface for every segment-level translation scorer (SPEC sections 2 and 6).

Preference data needs a score per candidate translation, and which model gives it is
configuration, not code: CometKiwi, XCOMET, their mean (the paper's choice), a reference-based
COMET, sentence BLEU/chrF, or the embedded demo's estimator (``cpo.demo.scorer``). They all answer
``score(sources, hypotheses, references=None, tgt_lang=None) -> list[float]``, and a score that is
not a finite number is an error (:class:`ScoreError`), never a silent NaN.

- ``base``: the interface and ``ScoreError``;
- ``comet``: any unbabel-comet model, by hub name (identity carries the hub commit) or local path;
- ``sentence``: sacrebleu sentence BLEU and chrF;
- ``mean``: the weighted mean of scorers (KIWI-XXL + XCOMET-XXL);
- ``cache``: scores on disk, keyed by the scorer's identity and the exact texts;
- ``build``: scorers from ``conf/scorer`` presets or ``_target_`` configs.
"""
from cpo.scoring.base import Scorer, ScoreError
from cpo.scoring.build import SCORER_PRESET_DIR, ScorerConfigError, build_scorer, load_scorer_preset
from cpo.scoring.cache import CACHE_FORMAT, CachedScorer
from cpo.scoring.comet import CometScorer
from cpo.scoring.mean import MeanScorer
from cpo.scoring.sentence import SentenceBleuScorer, SentenceChrfScorer

__all__ = [
    "CACHE_FORMAT",
    "SCORER_PRESET_DIR",
    "CachedScorer",
    "CometScorer",
    "MeanScorer",
    "ScoreError",
    "Scorer",
    "ScorerConfigError",
    "SentenceBleuScorer",
    "SentenceChrfScorer",
    "build_scorer",
    "load_scorer_preset",
]
