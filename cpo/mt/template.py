"""A prompt written by a user's format string (``prompt=template``), for base models with their own convention."""
from __future__ import annotations

from cpo.mt.cleaning import clean_translation
from cpo.mt.prompt import BoundPrompt, EncodedPrompt, PromptFormat, check_placeholders, fill, fit_source, too_short


class TemplatePrompt(PromptFormat):
    """A prompt written by a format string (``prompt=template``), for base models with their own convention.

    ``template`` names ``{source}`` once and may name the languages (:data:`cpo.mt.prompt.PLACEHOLDERS`); the
    completion follows it after ``separator``, then EOS. ``cue`` is the text generated output is cut at when the
    model repeats it (a format string; null: the template's text after ``{source}``, e.g. ``\\n{tgt_lang}:``).
    ``add_bos`` puts the tokenizer's BOS first, as ALMA does. An over-long prompt loses the beginning of its
    source, never the template's own text.
    """

    def __init__(self, template: str = "{src_lang}: {source}\n{tgt_lang}:", cue: str | None = None,
                 separator: str = " ", add_bos: bool = True):
        check_placeholders(template, "prompt.template", source=True)
        if cue is None:
            cue = template.split("{source}", 1)[1]
        check_placeholders(cue, "prompt.cue", source=False)
        self.template, self.cue, self.separator, self.add_bos = template, cue, separator, bool(add_bos)
        self._args = {"template": template, "cue": cue, "separator": separator, "add_bos": self.add_bos}

    def bind(self, tokenizer, max_length: int | None = None, truncation: str = "left") -> "TemplateEncoder":
        return TemplateEncoder(self, tokenizer, max_length, truncation)


class TemplateEncoder(BoundPrompt):
    def __init__(self, fmt: TemplatePrompt, tokenizer, max_length: int | None = None, truncation: str = "left"):
        super().__init__(tokenizer, max_length, truncation)
        self.fmt = fmt

    def describe(self) -> dict:
        return self.fmt.describe()

    @property
    def _head(self) -> list[int]:
        return super()._head if self.fmt.add_bos else []

    def encode(self, source: str, src_lang: str, tgt_lang: str) -> EncodedPrompt | None:
        def render(kept: str) -> list[int]:
            return self.full_ids(fill(self.fmt.template, kept, src_lang, tgt_lang))

        text = fill(self.fmt.template, source, src_lang, tgt_lang)
        full, head = self.with_head(text)
        if self.max_length is None or len(full) <= self.max_length:
            return EncodedPrompt(text, full, full, False, head, self.fmt.separator)
        ids = fit_source(render, source, self.tok, self.max_length)
        if ids is None:
            raise too_short(self.max_length, len(render("")))
        if self.truncation == "reject":
            return None
        return EncodedPrompt(text, ids, full, True, head, self.fmt.separator)

    def clean(self, generated_ids: list[int], tgt_lang: str) -> tuple[str, str]:
        cue = fill(self.fmt.cue, "", None, tgt_lang)
        return clean_translation(self.tok.decode(generated_ids, skip_special_tokens=True), tgt_lang, cue=cue)
