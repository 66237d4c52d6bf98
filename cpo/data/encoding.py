"""Token ids of a preference pair: the prompt format's prompt and completions (cpo.mt.prompt), truncation."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from cpo.data.records import PreferenceExample
from cpo.mt.prompt import AlmaPrompt, EncodedPrompt, PromptFormat
from cpo.text import normalize_space


@dataclass(frozen=True)
class EncodedPair:
    index: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    reference_ids: list[int] | None = None


class PairEncoder:
    """Token ids for prompt and completions with an exact boundary and the truncation rules (SPEC section 4).

    The prompt and the completions are the prompt format's (``prompt_format``, built from ``conf/prompt``; None:
    ALMA's), bound to the tokenizer with the prompt budget, exactly as generation encodes them: ALMA's prompt
    starts with BOS and is cut on the left or rejected; a chat format's completion is the assistant turn with
    its end-of-turn token. A completion is encoded as the continuation of the *whole* prompt: tokenize
    prompt + completion and keep what follows the prompt's tokens; when a token would span the boundary (the
    joint tokenization does not start with the prompt's ids) the completion is encoded on its own (counted as
    ``boundary_fallback``), so no token straddles prompt and completion. Completions are tokenized against the
    prompt before it is cut, so their ids do not depend on whether the prompt was truncated.

    A row brings its source and languages (the project's format, ALMA-R's rows), its own prompt text (TRL's
    standard format: used verbatim, completions follow it verbatim + EOS), or its own chat messages (TRL's
    conversational format: rendered by the format's chat template; other formats refuse it, naming the row).
    """

    def __init__(self, tokenizer, max_prompt_length: int = 256, max_length: int = 512, prompt_truncation: str = "left",
                 prompt_format: PromptFormat | None = None):
        if max_prompt_length < 2 or max_length <= max_prompt_length:
            raise ValueError(
                f"need 2 <= data.max_prompt_length < data.max_length, got {max_prompt_length} and {max_length}"
            )
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; completions must end with one")
        self.tok = tokenizer
        self.format = prompt_format if prompt_format is not None else AlmaPrompt()
        self.prompts = self.format.bind(tokenizer, max_prompt_length, prompt_truncation)
        self.max_prompt_length = max_prompt_length
        self.max_length = max_length
        self.counts: Counter = Counter()

    def prompt_ids(self, prompt: str) -> list[int]:
        """BOS + the tokens of a prompt text, untruncated."""
        return self.prompts.full_ids(prompt)

    def completion_ids(self, prompt: str, prompt_ids: list[int], completion: str, separator: str = " ") -> list[int]:
        """Completion ids + EOS after a prompt text (``prompt_ids``: its untruncated ids, with BOS)."""
        head = 1 if self.tok.bos_token_id is not None else 0
        encoded = EncodedPrompt(prompt, prompt_ids, prompt_ids, False, head, separator)
        ids, exact = self.prompts.continuation_ids(encoded, completion)
        if not exact:
            self.counts["boundary_fallback"] += 1
        return ids

    def encode_prompt(self, ex: PreferenceExample) -> EncodedPrompt | None:
        if ex.messages is not None:  # TRL's conversational rows: the row's own chat messages
            return self.prompts.encode_messages(ex.messages, ex.origin)
        if ex.prompt is not None:  # a row that brings its own prompt text (TRL's standard format)
            return self.prompts.encode_text(ex.prompt)
        return self.prompts.encode(ex.source, ex.src_lang, ex.tgt_lang)

    def encode(self, index: int, ex: PreferenceExample, with_reference: bool = False) -> EncodedPair | None:
        """Encoded pair, or None (counted by reason) when it is degenerate or cannot fit."""
        if normalize_space(ex.chosen) == normalize_space(ex.rejected):
            self.counts["equal_sides"] += 1  # nothing to prefer: the preference term would be a constant
            return None
        prompt = self.encode_prompt(ex)
        if prompt is None:
            self.counts["prompt_too_long"] += 1
            return None
        if prompt.truncated:
            self.counts["prompt_truncated"] += 1
        budget = self.max_length - len(prompt.ids)  # >= 1, since max_prompt_length < max_length
        sides = [ex.chosen, ex.rejected] + ([ex.reference] if with_reference else [])
        encoded = []
        for text in sides:
            ids, exact = self.prompts.completion_ids(prompt, text)
            if not exact:
                self.counts["boundary_fallback"] += 1
            if len(ids) > budget:
                ids = ids[:budget]  # right truncation, never to zero tokens (budget >= 1)
                self.counts["completion_truncated"] += 1
            encoded.append(ids)
        self.counts["kept"] += 1
        return EncodedPair(index, prompt.ids, encoded[0], encoded[1], encoded[2] if with_reference else None)
