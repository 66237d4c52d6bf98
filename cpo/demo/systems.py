"""Simulated MT systems for the demo: candidate translators with known flaw rates and flaw mixes.

They play the roles of GPT-4 and ALMA in the paper's preference data (SPEC section 2): their
outputs are mostly correct and, when wrong, fluent and near-correct (one flaw, sometimes two),
i.e. the hard negatives CPO learns from. The strong system is better than the gilded references
(flaw rate 0.15 against 0.3), which is the situation where imitating references caps quality.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Sequence

from cpo.demo.language import FLAWS, Habits, Sentence, apply_flaw, as_sentence, reference_habits, sentence_rng


@dataclass(frozen=True)
class DemoSystem:
    """A translator that is right with probability 1 - flaw_rate; otherwise it makes one flaw drawn
    from flaw_weights, and with probability double_flaw_rate a second one of another type."""

    name: str
    flaw_rate: float
    flaw_weights: dict[str, float]
    double_flaw_rate: float = 0.2
    # Systematic errors of its own (like a real system's): applied with probability habit_rate to every
    # sentence that has a habit word, before the random flaws of the other sentences.
    habits: Habits | None = None
    habit_rate: float = 0.9

    def __post_init__(self) -> None:
        for field_name in ("flaw_rate", "double_flaw_rate"):
            value = getattr(self, field_name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"system {self.name!r}: {field_name} must be in [0, 1], got {value}")
        unknown = set(self.flaw_weights) - set(FLAWS)
        if unknown:
            raise ValueError(f"system {self.name!r}: unknown flaws {sorted(unknown)} (known: {', '.join(FLAWS)})")
        if any(weight < 0 for weight in self.flaw_weights.values()) or sum(self.flaw_weights.values()) <= 0:
            raise ValueError(f"system {self.name!r}: flaw_weights must be >= 0 with a positive sum")

    def translate(self, sentences: Sequence[Sentence | str], seed: int) -> list[str]:
        """One output per sentence (a Sentence or a bare Zorbish source); each depends only on
        (name, seed, source), never on the batch it comes in."""
        return [self._translate_one(as_sentence(item), seed) for item in sentences]

    def _translate_one(self, sentence: Sentence, seed: int) -> str:
        rng = sentence_rng("system", self.name, seed, sentence.source)
        habit = self.habits.apply(sentence.translation) if self.habits is not None else None
        if habit is not None and rng.random() < self.habit_rate:
            return habit
        if rng.random() >= self.flaw_rate:
            return sentence.translation
        first = self._draw_flaw(rng, exclude=None)
        once = apply_flaw(sentence.translation, first, rng)
        if rng.random() >= self.double_flaw_rate:
            return once
        twice = apply_flaw(once, self._draw_flaw(rng, exclude=first), rng)
        # A fallback can make the second flaw undo the first (a number changed back); keep one flaw then.
        return once if twice == sentence.translation else twice

    def _draw_flaw(self, rng: random.Random, exclude: str | None) -> str:
        flaws = [flaw for flaw in self.flaw_weights if flaw != exclude and self.flaw_weights[flaw] > 0]
        if not flaws:
            # The only weighted flaw was already made: repeat it rather than skip the second flaw.
            flaws = [exclude]
        return rng.choices(flaws, weights=[self.flaw_weights[flaw] for flaw in flaws])[0]


DEFAULT_SYSTEMS: tuple[DemoSystem, ...] = (
    # Like a strong LLM: rare errors, mostly dropped details.
    DemoSystem("strong", 0.15, {"omission": 0.5, "wrong_number": 0.3, "untranslated": 0.2}),
    # Like a weaker MT system: frequent errors, often copying source words it did not learn.
    DemoSystem("weak", 0.45, {"omission": 0.3, "wrong_number": 0.3, "untranslated": 0.4}),
)


def with_own_habits(system: DemoSystem, seed: int) -> DemoSystem:
    """The system with systematic habits of its own, drawn like a reference translator's but with another seed."""
    return replace(system, habits=reference_habits(seed))
