"""The "noised negatives" ablation of SPEC section 7: the rejected side is a noised copy of the chosen translation."""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

from cpo.pairs.rule import (DROP_EMPTY_TEXT, DROP_NOISE_FAILED, DROP_TOO_FEW, Candidate, Selection, _check_finite,
                            select_chosen)
from cpo.text import is_blank


@dataclass(frozen=True)
class NoiseSettings:
    """Word drop and adjacent-word swap applied to the chosen translation (negatives=noised).

    Each token is dropped with probability ``drop_prob`` (never all of them), then each adjacent
    pair of tokens is swapped with probability ``swap_prob``. The random stream is seeded by
    ``seed``, the source and the chosen text, so a sentence's negative does not depend on which
    other sentences are in the build. Tokens are whitespace-separated words, or characters for
    languages written without spaces (Chinese, Japanese, Thai).
    """

    drop_prob: float = 0.15
    swap_prob: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("drop_prob", "swap_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"noise.{name} must be in [0, 1], got {value}")


CHARACTER_LANGUAGES = frozenset({"zh", "ja", "th"})


def _noise_rng(settings: NoiseSettings, source: str, text: str) -> random.Random:
    payload = json.dumps([settings.seed, source, text], ensure_ascii=False)
    return random.Random(int.from_bytes(hashlib.sha256(payload.encode("utf-8")).digest()[:8], "big"))


def noise_text(text: str, source: str, settings: NoiseSettings, tgt_lang: str | None = None) -> tuple[str, dict] | None:
    """A noised copy of ``text`` that differs from it, with counts of the edits; None if impossible.

    When the random edits leave the text unchanged, one edit is forced: a swap of two adjacent
    different tokens, else a drop of one token, else (a one-token text) a swap of two adjacent
    different characters inside it. A text with no such edit (one character, or one repeated
    character) cannot be noised and gives None.
    """
    chars = tgt_lang in CHARACTER_LANGUAGES
    tokens = [c for c in text.strip() if not c.isspace()] if chars else text.split()
    joiner = "" if chars else " "
    original = joiner.join(tokens)
    rng = _noise_rng(settings, source, text)
    kept = [t for t in tokens if rng.random() >= settings.drop_prob]
    if not kept:  # never drop everything: keep one token at random
        kept = [tokens[rng.randrange(len(tokens))]] if tokens else []
    dropped = len(tokens) - len(kept)
    swapped = 0
    i = 0
    while i < len(kept) - 1:
        if rng.random() < settings.swap_prob:
            kept[i], kept[i + 1] = kept[i + 1], kept[i]
            swapped += 1
            i += 2  # a token moves at most once
        else:
            i += 1
    noised = joiner.join(kept)
    forced = None
    if noised == original or not noised.strip():
        kept = list(tokens)
        dropped = swapped = 0
        pairs = [j for j in range(len(kept) - 1) if kept[j] != kept[j + 1]]
        if pairs:
            j = rng.choice(pairs)
            kept[j], kept[j + 1] = kept[j + 1], kept[j]
            swapped, forced = 1, "swap"
        elif len(kept) > 1:
            kept.pop(rng.randrange(len(kept)))
            dropped, forced = 1, "drop"
        elif kept:
            word = kept[0]
            spots = [j for j in range(len(word) - 1) if word[j] != word[j + 1]]
            if not spots:
                return None
            j = rng.choice(spots)
            kept = [word[:j] + word[j + 1] + word[j] + word[j + 2 :]]
            swapped, forced = 1, "char_swap"
        else:
            return None
        noised = joiner.join(kept)
    if noised.strip() == text.strip() or not noised.strip():
        return None
    info = {"dropped": dropped, "swapped": swapped}
    if forced:
        info["forced"] = forced
    return noised, info


def noised_system_name(system: str) -> str:
    return f"noised({system})"


def noised_pair(
    candidates: list[Candidate], source: str, settings: NoiseSettings, tgt_lang: str | None = None
) -> tuple[Selection, dict | None]:
    """(chosen = argmax candidate, rejected = its noised copy) and the noise edit counts."""
    if not candidates:
        return Selection(None, None, DROP_TOO_FEW), None
    _check_finite(candidates)
    chosen = select_chosen(candidates)
    if is_blank(chosen.text):
        return Selection(chosen, None, DROP_EMPTY_TEXT), None
    out = noise_text(chosen.text, source, settings, tgt_lang)
    if out is None:
        return Selection(chosen, None, DROP_NOISE_FAILED), None
    text, info = out
    return Selection(chosen, Candidate(noised_system_name(chosen.system), text, float("nan"))), info
