"""Token ids of a preference pair: the prompt (cpo.mt.prompt), completions with an exact boundary, truncation."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from cpo.data.records import PreferenceExample
from cpo.mt.prompt import EncodedPrompt, PromptEncoder
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

    The prompt is encoded exactly as generation encodes it (:class:`cpo.mt.prompt.PromptEncoder`: BOS first,
    left truncation or rejection). A completion is encoded as the continuation of the *whole* prompt:
    tokenize prompt + completion and keep what follows the prompt's tokens; when a token would span the
    boundary (the joint tokenization does not start with the prompt's ids) the completion is encoded on
    its own, so no token straddles prompt and completion. Completions are tokenized against the prompt
    before it is cut, so their ids do not depend on whether the prompt was truncated (with a
    SentencePiece tokenizer, a cut prompt would otherwise change the first completion token).
    """

    def __init__(self, tokenizer, max_prompt_length: int = 256, max_length: int = 512, prompt_truncation: str = "left"):
        if max_prompt_length < 2 or max_length <= max_prompt_length:
            raise ValueError(
                f"need 2 <= data.max_prompt_length < data.max_length, got {max_prompt_length} and {max_length}"
            )
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; completions must end with one")
        self.tok = tokenizer
        self.prompts = PromptEncoder(tokenizer, max_prompt_length, prompt_truncation)
        self.max_prompt_length = max_prompt_length
        self.max_length = max_length
        self.counts: Counter = Counter()

    def prompt_ids(self, prompt: str) -> list[int]:
        """BOS + the prompt's tokens, untruncated."""
        return self.prompts.full_ids(prompt)

    def encode_prompt(self, ex: PreferenceExample) -> EncodedPrompt | None:
        if ex.prompt is not None:  # a row that brings its own prompt (TRL's format)
            return self.prompts.encode_text(ex.prompt)
        return self.prompts.encode(ex.source, ex.src_lang, ex.tgt_lang)

    def completion_ids(self, prompt: str, prompt_ids: list[int], completion: str, separator: str = " ") -> list[int]:
        """Completion ids + EOS; ``prompt_ids`` are the untruncated ids of ``prompt`` (with BOS)."""
        body = prompt_ids[1:] if self.tok.bos_token_id is not None else prompt_ids
        joint = self.tok(prompt + separator + completion, add_special_tokens=False)["input_ids"]
        if joint[: len(body)] == body and len(joint) > len(body):
            ids = joint[len(body) :]
        else:
            self.counts["boundary_fallback"] += 1
            ids = self.tok(separator + completion, add_special_tokens=False)["input_ids"]
        return ids + [self.tok.eos_token_id]

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
        # The template's completion is " {translation}"; a row with its own prompt is followed verbatim.
        separator = "" if ex.prompt is not None else " "
        sides = [ex.chosen, ex.rejected] + ([ex.reference] if with_reference else [])
        encoded = []
        for text in sides:
            ids = self.completion_ids(prompt.text, prompt.full_ids, text, separator)
            if len(ids) > budget:
                ids = ids[:budget]  # right truncation, never to zero tokens (budget >= 1)
                self.counts["completion_truncated"] += 1
            encoded.append(ids)
        self.counts["kept"] += 1
        return EncodedPair(index, prompt.ids, encoded[0], encoded[1], encoded[2] if with_reference else None)
