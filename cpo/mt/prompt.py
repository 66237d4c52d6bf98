"""The prompt a translator sees: one format, chosen in ``conf/prompt/``, for training and generation alike.

A :class:`PromptFormat` (built from ``conf/prompt/<name>.yaml``, whose ``_target_`` names its class) says how
a translation request is written for a model. Bound to the model's tokenizer and a prompt budget
(:meth:`PromptFormat.bind`) it is a :class:`BoundPrompt`: prompt token ids with the one truncation rule, the
completion ids training scores (ending with what the model emits to stop), the ids generation stops at, and
the rule that cleans generated text. Training (``cpo.data.encoding.PairEncoder``), the validation and
before/after translations and ``scripts/generate.py`` all receive the same object, so a policy never
translates a prompt in a form it was not trained on; ``policy/cpo_prompt.json`` records it (SPEC section 4).

Formats here: ALMA's (the default, :class:`AlmaPrompt`); a user format string for base models with their own
convention is in :mod:`cpo.mt.template`, chat-template formats are in :mod:`cpo.mt.chat`.

ALMA's template, ``Translate this from {Src} to {Tgt}:\\n{Src}: {source}\\n{Tgt}:``, begins with BOS (ALMA-R's
training omitted it while its inference added it: a mismatch not to repeat). Prompts longer than the budget
are cut on the left, keeping BOS and the ``\\n{Tgt}:`` cue the model continues from (ALMA-R's rule), or
rejected. The other formats cut the source text only, never the template around it.
"""
from __future__ import annotations

import importlib
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cpo.errors import ConfigError
from cpo.io import DataError
from cpo.languages import language_name
from cpo.mt.cleaning import clean_translation
from cpo.text import is_blank

TRUNCATION_MODES = ("left", "reject")
#: What a format's text may name: the source and the two languages, by name (German) or code (de).
PLACEHOLDERS = ("source", "src_lang", "tgt_lang", "src_code", "tgt_code")
#: The record of a trained policy's prompt format, beside its weights (``policy/``).
PROMPT_RECORD = "cpo_prompt.json"

ALMA_TEMPLATE = "Translate this from {src_lang} to {tgt_lang}:\n{src_lang}: {source}\n{tgt_lang}:"


def format_prompt(source: str, src_lang: str, tgt_lang: str) -> str:
    """ALMA's prompt; the completion follows as ' {translation}' + EOS."""
    src, tgt = language_name(src_lang), language_name(tgt_lang)
    return f"Translate this from {src} to {tgt}:\n{src}: {source}\n{tgt}:"


def target_cue(tgt_lang: str) -> str:
    """The text that ends every prompt and that generated text is cut at: a new line with the target's name."""
    return f"\n{language_name(tgt_lang)}:"


def check_placeholders(text: str, key: str, source: bool) -> None:
    """``text`` is a format string naming only :data:`PLACEHOLDERS`, with ``{source}`` exactly once when
    ``source`` (else never): one sentence naming ``key`` otherwise."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as e:
        raise ConfigError(f"{key}: not a format string ({e}); write a literal brace as {{{{ or }}}}") from None
    unknown = sorted({n for n in names if n not in PLACEHOLDERS})
    if unknown:
        raise ConfigError(f"{key}: unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)} "
                          f"(known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})")
    count = names.count("source")
    if source and count != 1:
        raise ConfigError(f"{key} must name {{source}} exactly once, found {count}")
    if not source and count:
        raise ConfigError(f"{key} cannot name {{source}} (the source goes into the instruction)")


def fill(text: str, source: str, src_lang: str | None, tgt_lang: str | None) -> str:
    """``text`` with its placeholders filled (language names as ALMA writes them)."""
    names = {"source": source, "src_code": src_lang or "", "tgt_code": tgt_lang or "",
             "src_lang": language_name(src_lang) if src_lang else "",
             "tgt_lang": language_name(tgt_lang) if tgt_lang else ""}
    return text.format(**names)


class PromptTooShort(ValueError):
    """The prompt budget leaves no room for any of the source after the template."""


@dataclass(frozen=True)
class EncodedPrompt:
    text: str  # the whole prompt text, untruncated
    ids: list[int]  # what the model sees: the (truncated) prompt's ids
    full_ids: list[int]  # the same before truncation; completions are tokenized against these
    truncated: bool
    head: int = 0  # leading ids the format adds before the text's own tokens (BOS)
    separator: str = " "  # between prompt text and completion text (ALMA's completion is ' {translation}')
    messages: tuple | None = None  # the chat messages, for formats whose completion is an assistant turn


# --------------------------------------------------------------------------- the interface
class PromptFormat:
    """How a translation request is written for a model; a file of ``conf/prompt/`` builds one.

    Subclasses keep their constructor arguments in ``self._args`` (what :meth:`describe` records) and return
    their :class:`BoundPrompt` from :meth:`bind`.
    """

    _args: dict = {}

    def bind(self, tokenizer, max_length: int | None = None, truncation: str = "left") -> "BoundPrompt":
        raise NotImplementedError  # pragma: no cover - interface

    def check(self, tokenizer) -> None:
        """Refuse, in one sentence, a tokenizer this format cannot serve (a chat format without a template)."""
        self.bind(tokenizer)

    def describe(self) -> dict:
        """``_target_`` and arguments: what ``policy/cpo_prompt.json`` holds and :func:`build_prompt_format`
        rebuilds."""
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", **self._args}

    def __eq__(self, other) -> bool:
        return isinstance(other, PromptFormat) and self.describe() == other.describe()

    def __hash__(self) -> int:
        return hash(json.dumps(self.describe(), sort_keys=True))

    def __repr__(self) -> str:
        return short_description(self.describe())


class BoundPrompt:
    """A format bound to a tokenizer and a prompt budget (``max_length`` tokens, None: no limit).

    ``truncation="left"`` cuts an over-long prompt (keeping the end of the source), ``"reject"`` returns None
    for it. A budget so small that no token of the source would survive raises :class:`PromptTooShort`,
    whatever the mode. The methods here are the text-continuation rules every format shares for rows that
    bring their own prompt text (TRL's standard format); subclasses implement :meth:`encode`.
    """

    def __init__(self, tokenizer, max_length: int | None = None, truncation: str = "left"):
        if truncation not in TRUNCATION_MODES:
            raise ValueError(f"prompt truncation must be one of {', '.join(TRUNCATION_MODES)}, got {truncation!r}")
        if max_length is not None and max_length < 2:
            raise ValueError(f"the prompt budget must be at least 2 tokens, got {max_length}")
        self.tok = tokenizer
        self.max_length = max_length
        self.truncation = truncation

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    @property
    def _head(self) -> list[int]:
        bos = self.tok.bos_token_id
        return [bos] if bos is not None else []

    @property
    def stop_ids(self) -> list[int]:
        """The ids generation stops at (``generate``'s ``eos_token_id``)."""
        return [self.tok.eos_token_id]

    def stop_ids_for(self, model) -> list[int]:
        """The stop ids when ``model`` generates (ALMA's: EOS alone, as ALMA-R generates)."""
        return self.stop_ids

    def encode(self, source: str, src_lang: str, tgt_lang: str) -> EncodedPrompt | None:
        raise NotImplementedError  # pragma: no cover - interface

    def with_head(self, text: str) -> tuple[list[int], int]:
        """(BOS + the tokens of a prompt text, how many ids were put before them): no second BOS when the text
        begins with one."""
        ids, head = self._ids(text), self._head
        return (ids, 0) if head and ids[:1] == head else (head + ids, len(head))

    def full_ids(self, text: str) -> list[int]:
        """BOS + the tokens of a prompt text, untruncated."""
        return self.with_head(text)[0]

    def encode_text(self, text: str, cue_tokens: int = 0, separator: str = "") -> EncodedPrompt | None:
        """Ids of a prompt text used as it is (a row's own prompt; ALMA's formatted prompt), cut on the left:
        ``cue_tokens`` trailing tokens must survive with at least one before them."""
        full, head = self.with_head(text)
        if self.max_length is None or len(full) <= self.max_length:
            return EncodedPrompt(text, full, full, False, head, separator)
        kept = self.max_length - head
        if kept <= cue_tokens:
            raise PromptTooShort(
                f"a prompt budget of {self.max_length} tokens keeps none of the source after the "
                f"{cue_tokens}-token cue; raise it (ALMA-R uses 256)"
            )
        if self.truncation == "reject":
            return None
        # Left truncation keeps the end of the source and the cue the model continues from.
        return EncodedPrompt(text, full[:head] + full[len(full) - kept:], full, True, head, separator)

    def encode_messages(self, messages, where: str | None = None) -> EncodedPrompt | None:
        """A conversational row's prompt (chat messages): only chat formats can write one."""
        raise DataError(f"{where or 'a row'}: a conversational row (a list of chat messages) is rendered by the "
                        f"model's chat template, which this prompt format ({short_description(self.describe())}) "
                        "does not use: pass prompt=chat, or write the rows in the project's format")

    def describe(self) -> dict:
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}"}

    def continuation_ids(self, prompt: EncodedPrompt, completion: str) -> tuple[list[int], bool]:
        """(completion ids + EOS, exact): the completion tokenized as the continuation of the *whole* prompt.

        Tokenize prompt + separator + completion and keep what follows the prompt's tokens; where a token would
        span the boundary (the joint tokenization does not start with the prompt's ids) the completion is
        tokenized on its own (``exact`` False), so no token straddles prompt and completion. The prompt is the
        untruncated one, so the ids do not depend on whether it was cut (with a SentencePiece tokenizer a cut
        prompt would otherwise change the first completion token).
        """
        body = prompt.full_ids[prompt.head:]
        joint = self._ids(prompt.text + prompt.separator + completion)
        if joint[: len(body)] == body and len(joint) > len(body):
            ids, exact = joint[len(body):], True
        else:
            ids, exact = self._ids(prompt.separator + completion), False
        return ids + [self.tok.eos_token_id], exact

    def completion_ids(self, prompt: EncodedPrompt, completion: str) -> tuple[list[int], bool]:
        """(ids training scores for ``completion`` after ``prompt``, whether the boundary was exact)."""
        return self.continuation_ids(prompt, completion)

    def clean(self, generated_ids: list[int], tgt_lang: str) -> tuple[str, str]:
        """(translation, rule) from the ids generated after a prompt: ALMA's cue rule
        (:func:`cpo.mt.cleaning.clean_translation`)."""
        return clean_translation(self.tok.decode(generated_ids, skip_special_tokens=True), tgt_lang)


def fit_source(render: Callable[[str], list[int]], source: str, tokenizer, max_length: int) -> list[int] | None:
    """The ids of ``render(kept)`` for the longest end of ``source`` that fits ``max_length`` tokens (None when not
    even its last word does): nothing else of the prompt is cut. The source is cut at the start of a word; a text
    without spaces (Chinese, Japanese) at the start of a token (of a character with a slow tokenizer)."""
    cuts = [k for k in range(1, len(source)) if source[k - 1].isspace() and not source[k].isspace()]
    if not cuts:
        try:
            enc = tokenizer(source, add_special_tokens=False, return_offsets_mapping=True)
            cuts = sorted({s for s, e in enc["offset_mapping"] if 0 < s < len(source) and e > s})
        except (NotImplementedError, TypeError, ValueError):  # slow tokenizers give no offsets
            cuts = list(range(1, len(source)))
        cuts = [c for c in cuts if not is_blank(source[c:])]
    lo, hi, best = 0, len(cuts) - 1, None
    while lo <= hi:  # the first cut whose prompt fits: later cuts keep less of the source
        mid = (lo + hi) // 2
        ids = render(source[cuts[mid]:].lstrip())
        if len(ids) <= max_length:
            best, hi = ids, mid - 1
        else:
            lo = mid + 1
    return best


def too_short(max_length: int, template_tokens: int) -> PromptTooShort:
    return PromptTooShort(f"a prompt budget of {max_length} tokens keeps none of the source: the template alone "
                          f"takes {template_tokens} tokens; raise it")


# --------------------------------------------------------------------------- ALMA (the default)
class AlmaPrompt(PromptFormat):
    """ALMA's prompt (``prompt=alma``, the default): ALMA-R's behaviour exactly, token for token."""

    def __init__(self):
        self._args = {}

    def bind(self, tokenizer, max_length: int | None = None, truncation: str = "left") -> "PromptEncoder":
        return PromptEncoder(tokenizer, max_length, truncation)


class PromptEncoder(BoundPrompt):
    """ALMA's prompt bound to a tokenizer: BOS + the prompt's tokens, and ALMA-R's left truncation.

    ``truncation="left"`` keeps BOS and the last ``max_length - 1`` tokens; ``"reject"`` returns None for a prompt
    over budget. A budget so small that the cue alone fills it would feed the model prompts without their
    source: :meth:`encode` raises :class:`PromptTooShort` then, whatever the truncation mode.
    """

    def __init__(self, tokenizer, max_length: int | None = None, truncation: str = "left"):
        super().__init__(tokenizer, max_length, truncation)
        self._cue_len: dict[str, int] = {}

    def describe(self) -> dict:
        return AlmaPrompt().describe()

    def cue_length(self, tgt_lang: str) -> int:
        """Tokens at the end of a prompt that belong to the cue, not to the source (measured on the template)."""
        if tgt_lang not in self._cue_len:
            probe = format_prompt("x", "en" if tgt_lang != "en" else "de", tgt_lang)
            cue = target_cue(tgt_lang)
            self._cue_len[tgt_lang] = max(1, len(self._ids(probe)) - len(self._ids(probe[: -len(cue)])))
        return self._cue_len[tgt_lang]

    def encode(self, source: str, src_lang: str, tgt_lang: str) -> EncodedPrompt | None:
        text = format_prompt(source, src_lang, tgt_lang)
        return self.encode_text(text, cue_tokens=self.cue_length(tgt_lang), separator=" ")


# --------------------------------------------------------------------------- building and recording
def _plain(node):
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return node
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_prompt_format(node, key: str = "prompt") -> PromptFormat:
    """The format a ``conf/prompt`` node (or a ``cpo_prompt.json`` record) names; None: ALMA's."""
    node = _plain(node)
    if node is None:
        return AlmaPrompt()
    if isinstance(node, PromptFormat):
        return node
    if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
        raise ConfigError(f"{key}: expected a mapping with _target_ (see conf/prompt/), got {node!r}")
    kwargs = {k: v for k, v in node.items() if k != "_target_"}
    module, _, name = node["_target_"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"{key}._target_={node['_target_']} cannot be imported (see conf/prompt/)") from None
    if not (isinstance(cls, type) and issubclass(cls, PromptFormat)):
        raise ConfigError(f"{key}._target_={node['_target_']} is not a prompt format (cpo.mt.prompt.PromptFormat)")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{key}: {node['_target_']} does not take these settings ({e})") from None


def short_description(record: dict) -> str:
    """``alma``, or the class and its settings, for messages."""
    target = str(record.get("_target_", "?")).rsplit(".", 1)[-1]
    args = ", ".join(f"{k}={v!r}" for k, v in record.items() if k != "_target_")
    return f"{target}({args})" if args else target


def write_prompt_record(folder: str | Path, fmt: PromptFormat) -> Path:
    """``<folder>/cpo_prompt.json``: the format a policy was trained with (read by scripts/generate.py)."""
    from cpo.io import atomic_write_json

    return atomic_write_json(Path(folder) / PROMPT_RECORD, fmt.describe())


def read_prompt_record(folder: str | Path | None) -> tuple[PromptFormat, Path] | None:
    """(the recorded format, its file) when ``folder`` holds a ``cpo_prompt.json``; a malformed one is refused."""
    if folder is None:
        return None
    path = Path(folder) / PROMPT_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable prompt record ({e}); remove it or pass prompt=...") from None
    try:
        return build_prompt_format(record, key=str(path)), path
    except ConfigError as e:
        raise DataError(f"{e}; remove the record or pass prompt=...") from None
