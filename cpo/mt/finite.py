"""A model whose outputs are not numbers translates into empty lines, silently: notice it while generating.

A NaN in the weights (a diverged or damaged checkpoint) or an overflow of a half-precision forward turns every
logit into NaN; greedy and beam search then pick token 0 over and over, the decoded text is empty, and a file
of empty lines looked like a finished translation. :class:`NanScores` watches the scores of every generation
step without a device synchronisation (a flag tensor, read once the batch is generated), and
:func:`check_finite` turns what it saw into one sentence (:class:`cpo.errors.ModelError`).
"""
from __future__ import annotations

import torch
from transformers import LogitsProcessor

from cpo.errors import ModelError


class NanScores(LogitsProcessor):
    """A logits processor that leaves the scores as they are and remembers whether any of them was NaN.

    ``-inf`` is a legitimate score (a banned token); NaN never is.
    """

    def __init__(self):
        self.seen: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        nan = torch.isnan(scores).any()
        self.seen = nan if self.seen is None else self.seen | nan
        return scores

    @property
    def found(self) -> bool:
        return self.seen is not None and bool(self.seen)


def check_finite(guard: NanScores, what: str) -> None:
    """Stop with one sentence when ``guard`` saw a NaN score while generating ``what``."""
    if guard.found:
        raise ModelError(
            f"the model's outputs are not numbers (NaN) while {what}: its weights hold NaN values (a diverged or "
            "damaged checkpoint) or its dtype overflows (try dtype=float32); no translation was kept"
        )
