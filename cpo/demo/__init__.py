"""The embedded demo's synthetic task: Zorbish->English, gilded references, MT systems, and a rule-based QE.

It lets `python train.py` show the CPO paper's point on a laptop CPU: see language.py for why.
"""
from cpo.demo.language import (
    FLAWS,
    LEXICON,
    ZORBISH_WORDS,
    Sentence,
    apply_flaw,
    gilded_references,
    parse,
    resolve_flaw,
    sample_sentences,
    translate,
)
from cpo.demo.quality import ERROR_COSTS, ERROR_TYPES, DemoQualityEstimator
from cpo.demo.systems import DEFAULT_SYSTEMS, DemoSystem

__all__ = [
    "DEFAULT_SYSTEMS",
    "ERROR_COSTS",
    "ERROR_TYPES",
    "FLAWS",
    "LEXICON",
    "ZORBISH_WORDS",
    "DemoQualityEstimator",
    "DemoSystem",
    "Sentence",
    "apply_flaw",
    "gilded_references",
    "parse",
    "resolve_flaw",
    "sample_sentences",
    "translate",
]
