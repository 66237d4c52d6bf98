"""Small text predicates shared by readers, preference building and evaluation."""
from __future__ import annotations

import re

# Characters that render as nothing: a text made only of these (and whitespace) is empty.
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
_INVISIBLE = re.compile(f"[\\s{ZERO_WIDTH}]+")


def is_blank(text: str) -> bool:
    """True for a text with nothing visible: whitespace and zero-width characters only."""
    return not _INVISIBLE.sub("", text)


def normalize_space(text: str) -> str:
    """Runs of whitespace and zero-width characters as one space, trimmed: two texts that read the same
    compare equal."""
    return _INVISIBLE.sub(" ", text).strip()
