"""The scorer interface: one float per (source, hypothesis[, reference]) item, and never a NaN."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

from cpo.io import DataError


def _excerpt(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


class ScoreError(DataError):
    """A scorer gave a score that is not a finite number (NaN, inf).

    Used silently, one NaN turns a mean into NaN and makes every comparison with it false, so a
    preference pair would be dropped as if its scores were equal. ``index`` is the 0-based segment
    of the call that failed; ``located`` re-states the error for a caller that knows where the
    segment came from (a chunk of a larger call, a line of a file).
    """

    def __init__(self, scorer: str, identity: str, value: float, index: int, hypothesis: str, where: str | None = None):
        self.scorer, self.identity, self.value, self.index, self.hypothesis = scorer, identity, value, index, hypothesis
        head = where or f"segment {index + 1}"
        super().__init__(
            f"{head}: scorer {scorer!r} ({identity}) gave {value} for the hypothesis {_excerpt(hypothesis)}; a score "
            "must be a finite number: check the model (half precision can overflow) and this input, then score again"
        )

    def located(self, index: int | None = None, where: str | None = None) -> ScoreError:
        return ScoreError(self.scorer, self.identity, self.value, self.index if index is None else index,
                          self.hypothesis, where)


class Scorer(ABC):
    """A segment-level scorer: one float per (source, hypothesis[, reference]) item.

    Attributes:
        name: short label used as a metric / column name (``kiwi``, ``xcomet``, ``chrf``).
        identity: model and version; two scorers with the same identity give the same scores,
            which is what makes the on-disk cache and provenance records safe.
        requires_reference: scoring without references is an error.
        uses_reference: references are used when given (and so are part of the cache key).
        uses_tgt_lang: the score depends on ``tgt_lang`` (e.g. the BLEU tokenizer).
    """

    name: str
    requires_reference: bool = False
    uses_reference: bool = False
    uses_tgt_lang: bool = False

    @property
    @abstractmethod
    def identity(self) -> str:
        """Model + version string (see class docstring)."""

    def score(
        self,
        sources: Sequence[str],
        hypotheses: Sequence[str],
        references: Sequence[str] | None = None,
        tgt_lang: str | None = None,
    ) -> list[float]:
        """Score each hypothesis; validates inputs, defers to ``_score``, and refuses non-finite scores.

        References are dropped before ``_score`` when the scorer does not use them, so a
        reference-free model really is evaluated reference-free. A NaN or infinite score raises
        :class:`ScoreError` naming the scorer and the segment.
        """
        sources, hypotheses, references = self.check_inputs(sources, hypotheses, references)
        if not self.uses_reference:
            references = None
        if not hypotheses:
            return []
        scores = [float(s) for s in self._score(sources, hypotheses, references, tgt_lang)]
        if len(scores) != len(hypotheses):
            raise RuntimeError(
                f"scorer {self.name!r} returned {len(scores)} scores for {len(hypotheses)} hypotheses"
            )
        for i, s in enumerate(scores):
            if not math.isfinite(s):
                raise ScoreError(self.name, self.identity, s, i, hypotheses[i])
        return scores

    def score_components(
        self,
        sources: Sequence[str],
        hypotheses: Sequence[str],
        references: Sequence[str] | None = None,
        tgt_lang: str | None = None,
    ) -> dict[str, list[float]]:
        """Scores by name: ``{self.name: scores}``; composites add their members' scores.

        Preference records keep every score that led to a choice (SPEC section 2), not only
        the final one.
        """
        return {self.name: self.score(sources, hypotheses, references, tgt_lang)}

    def set_progress(self, on: bool) -> None:
        """Show or hide progress bars, the model's own included; composites pass it to their members."""
        if hasattr(self, "progress"):
            self.progress = bool(on)

    @abstractmethod
    def _score(
        self,
        sources: list[str],
        hypotheses: list[str],
        references: list[str] | None,
        tgt_lang: str | None,
    ) -> list[float]:
        """Score validated, non-empty inputs."""

    def check_inputs(
        self,
        sources: Sequence[str],
        hypotheses: Sequence[str],
        references: Sequence[str] | None,
    ) -> tuple[list[str], list[str], list[str] | None]:
        """Same lengths, strings only, references present when required."""
        sources, hypotheses = list(sources), list(hypotheses)
        refs = None if references is None else list(references)
        if len(sources) != len(hypotheses):
            raise ValueError(
                f"scorer {self.name!r}: {len(sources)} sources but {len(hypotheses)} hypotheses"
            )
        if refs is not None and len(refs) != len(hypotheses):
            raise ValueError(
                f"scorer {self.name!r}: {len(refs)} references but {len(hypotheses)} hypotheses"
            )
        if refs is None and self.requires_reference:
            raise ValueError(
                f"scorer {self.name!r} needs references, but none were given; "
                "pass references or use a reference-free scorer (e.g. kiwi, xcomet without reference)"
            )
        for field, texts in (("source", sources), ("hypothesis", hypotheses), ("reference", refs or [])):
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise TypeError(
                        f"scorer {self.name!r}: {field} {i} is {type(t).__name__}, expected str"
                    )
        return sources, hypotheses, refs

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
