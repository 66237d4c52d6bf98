"""The demo's quality estimator (``cpo.demo.quality``) behind the project's scorer interface.

It lives with the demo so that the scorer layer (``cpo.scoring``) never depends on the demo;
``conf/scorer/demo_qe.yaml`` names it.
"""
from __future__ import annotations

from cpo.demo.quality import DemoQualityEstimator
from cpo.io import DataError
from cpo.scoring.base import Scorer


class DemoQEScorer(Scorer):
    """The embedded demo's reference-free quality estimator: a stand-in for KIWI/XCOMET on the CPU."""

    requires_reference = False
    uses_reference = False

    def __init__(self, name: str = "demo_qe") -> None:
        self.name = name
        self.estimator = DemoQualityEstimator()

    @property
    def identity(self) -> str:
        return str(self.estimator.identity)

    def _score(self, sources, hypotheses, references, tgt_lang):
        scores = []
        for i, (src, hyp) in enumerate(zip(sources, hypotheses), 1):
            try:
                scores.append(self.estimator.score_one(src, hyp))
            except ValueError as e:  # not a sentence of the demo's invented language
                raise DataError(f"scorer {self.name}: source {i} is not a Zorbish sentence of the demo ({e}); "
                                f"demo_qe scores only the demo task, use a COMET scorer (e.g. scorer=kiwi)") from None
        return scores
