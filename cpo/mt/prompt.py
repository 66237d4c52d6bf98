"""The prompt a translator sees, built once for training and generation alike (SPEC section 4).

ALMA's template, ``Translate this from {Src} to {Tgt}:\\n{Src}: {source}\\n{Tgt}:``, begins with BOS
(ALMA-R's training omitted it while its inference added it: a mismatch not to repeat). Prompts
longer than the configured budget are cut on the left, keeping BOS and the ``\\n{Tgt}:`` cue the model
continues from, or rejected. Training (``cpo.data.encoding.PairEncoder``) and generation
(``cpo.mt.generation.translate``) both go through :class:`PromptEncoder`, so a policy never translates a
prompt in a form it was not trained on.
"""
from __future__ import annotations

from dataclasses import dataclass

from cpo.languages import language_name

TRUNCATION_MODES = ("left", "reject")


def format_prompt(source: str, src_lang: str, tgt_lang: str) -> str:
    """ALMA's prompt; the completion follows as ' {translation}' + EOS."""
    src, tgt = language_name(src_lang), language_name(tgt_lang)
    return f"Translate this from {src} to {tgt}:\n{src}: {source}\n{tgt}:"


def target_cue(tgt_lang: str) -> str:
    """The text that ends every prompt and that generated text is cut at: a new line with the target's name."""
    return f"\n{language_name(tgt_lang)}:"


class PromptTooShort(ValueError):
    """The prompt budget leaves no room for any of the source after the template's cue."""


@dataclass(frozen=True)
class EncodedPrompt:
    text: str  # the whole prompt text
    ids: list[int]  # what the model sees: BOS + the (left-truncated) prompt tokens
    full_ids: list[int]  # the same before truncation; completions are tokenized against these
    truncated: bool


class PromptEncoder:
    """Prompt token ids with BOS and the one truncation rule.

    ``max_length`` is the budget in tokens, BOS included (None: no limit). ``truncation="left"`` keeps
    BOS and the last ``max_length - 1`` tokens; ``"reject"`` returns None for a prompt over budget.
    A budget so small that the cue alone fills it would feed the model prompts without their source:
    :meth:`encode` raises :class:`PromptTooShort` then, whatever the truncation mode.
    """

    def __init__(self, tokenizer, max_length: int | None = None, truncation: str = "left"):
        if truncation not in TRUNCATION_MODES:
            raise ValueError(f"prompt truncation must be one of {', '.join(TRUNCATION_MODES)}, got {truncation!r}")
        if max_length is not None and max_length < 2:
            raise ValueError(f"the prompt budget must be at least 2 tokens, got {max_length}")
        self.tok = tokenizer
        self.max_length = max_length
        self.truncation = truncation
        self._cue_len: dict[str, int] = {}

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    @property
    def _head(self) -> list[int]:
        bos = self.tok.bos_token_id
        return [bos] if bos is not None else []

    def cue_length(self, tgt_lang: str) -> int:
        """Tokens at the end of a prompt that belong to the cue, not to the source (measured on the template)."""
        if tgt_lang not in self._cue_len:
            probe = format_prompt("x", "en" if tgt_lang != "en" else "de", tgt_lang)
            cue = target_cue(tgt_lang)
            self._cue_len[tgt_lang] = max(1, len(self._ids(probe)) - len(self._ids(probe[: -len(cue)])))
        return self._cue_len[tgt_lang]

    def encode(self, source: str, src_lang: str, tgt_lang: str) -> EncodedPrompt | None:
        text = format_prompt(source, src_lang, tgt_lang)
        return self.encode_text(text, cue_tokens=self.cue_length(tgt_lang))

    def full_ids(self, text: str) -> list[int]:
        """BOS + the tokens of a formatted prompt, untruncated."""
        return self._head + self._ids(text)

    def encode_text(self, text: str, cue_tokens: int = 0) -> EncodedPrompt | None:
        """Ids of an already formatted prompt; ``cue_tokens`` trailing tokens must survive with at least one
        before them."""
        full = self.full_ids(text)
        if self.max_length is None or len(full) <= self.max_length:
            return EncodedPrompt(text, full, full, False)
        kept = self.max_length - len(self._head)
        if kept <= cue_tokens:
            raise PromptTooShort(
                f"a prompt budget of {self.max_length} tokens keeps none of the source after the "
                f"{cue_tokens}-token cue; raise it (ALMA-R uses 256)"
            )
        if self.truncation == "reject":
            return None
        # Left truncation keeps the end of the source and the "{Tgt}:" cue the model continues from.
        return EncodedPrompt(text, self._head + full[len(full) - kept :], full, True)
