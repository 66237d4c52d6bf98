"""Preference examples and the readers of the project's preference JSONL and TRL's two preference formats."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cpo.io import DataError, iter_jsonl
from cpo.languages import LANGUAGES
from cpo.mt.chat import check_messages
from cpo.text import is_blank


@dataclass
class PreferenceExample:
    """One preference triple. ``prompt`` is set only for rows that bring their own prompt text (TRL's standard
    format): it then replaces the prompt format's, and the completions follow it verbatim. ``messages`` is set
    only for rows that bring their own chat messages (TRL's conversational format): the prompt format's chat
    template renders them, and ``chosen``/``rejected`` are the assistant messages' texts. ``origin`` is the
    ``file:line`` the row came from, for messages."""

    source: str
    chosen: str
    rejected: str
    src_lang: str | None
    tgt_lang: str | None
    reference: str | None = None
    provenance: dict = field(default_factory=dict)
    prompt: str | None = None
    messages: list[dict] | None = None
    origin: str | None = None


REQUIRED_FIELDS = ("source", "chosen", "rejected", "src_lang", "tgt_lang")
TRL_FIELDS = ("prompt", "chosen", "rejected")
#: The formats a row can be in (one per file): what :func:`row_format` says.
ROW_FORMATS = ("the project's", "TRL standard", "TRL conversational")


def _text(obj: dict, key: str, where: str) -> str:
    if key not in obj:
        raise DataError(f"{where}: missing field {key!r}")
    value = obj[key]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        raise DataError(f"{where}: field {key!r} is a list of chat messages in a row whose other fields are strings; "
                        "a conversational row (TRL's format) has lists for prompt, chosen and rejected")
    if isinstance(value, list):
        raise DataError(f"{where}: field {key!r} is a list, not a string (chat messages would be objects with "
                        "'role' and 'content'); give the text as one string")
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if is_blank(value):
        raise DataError(f"{where}: field {key!r} is empty")
    return value


def _language(obj: dict, key: str, where: str, required: bool) -> str | None:
    code = obj.get(key)
    if code is None and not required:
        return None
    if key not in obj:
        raise DataError(f"{where}: missing field {key!r}")
    if not isinstance(code, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(code).__name__}")
    if code not in LANGUAGES:
        raise DataError(f"{where}: field {key!r}: unknown language code {code!r}")
    return code


def row_format(obj: dict) -> str:
    """Which of :data:`ROW_FORMATS` a JSON object is written in."""
    if "source" in obj:
        return ROW_FORMATS[0]
    if isinstance(obj.get("prompt"), list) or ("prompt" not in obj and isinstance(obj.get("chosen"), list)):
        return ROW_FORMATS[2]
    return ROW_FORMATS[1] if "prompt" in obj else ROW_FORMATS[0]


def _answer(obj: dict, key: str, where: str, prompt: list[dict] | None) -> tuple[list[dict], str]:
    """(prompt messages, the assistant's text) of a conversational side; with no explicit prompt (TRL's implicit
    prompt) the side is the whole conversation and its last message the answer."""
    if key not in obj:
        raise DataError(f"{where}: missing field {key!r}")
    msgs = check_messages(obj[key], where, key)
    if prompt is None:
        prompt, msgs = msgs[:-1], msgs[-1:]
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise DataError(f"{where}: field {key!r} must hold one assistant message (the answer), got roles "
                        f"{[m['role'] for m in msgs]}")
    if is_blank(msgs[0]["content"]):
        raise DataError(f"{where}: field {key!r}: the assistant message is empty")
    return prompt, msgs[0]["content"]


def _conversation(obj: dict, where: str) -> tuple[list[dict], str, str]:
    """(prompt messages, chosen text, rejected text) of a TRL conversational row."""
    explicit = check_messages(obj["prompt"], where, "prompt") if "prompt" in obj else None
    prompt_c, chosen = _answer(obj, "chosen", where, explicit)
    prompt_r, rejected = _answer(obj, "rejected", where, explicit)
    if prompt_c != prompt_r:
        raise DataError(f"{where}: fields 'chosen' and 'rejected' differ before their last message; with no "
                        "'prompt' field both must be the same conversation up to the answer")
    if not prompt_c or prompt_c[-1]["role"] != "user" or is_blank(prompt_c[-1]["content"]):
        raise DataError(f"{where}: the prompt's messages must end with a non-empty user message (the request)")
    return prompt_c, chosen, rejected


def example_from_record(obj: dict, where: str) -> PreferenceExample:
    """Validate one JSONL record; errors name the field.

    The project's format has ``source``, ``chosen``, ``rejected``, ``src_lang``, ``tgt_lang`` and optional
    ``reference`` / ``provenance``. A row with ``prompt`` and no ``source`` is TRL's standard preference format:
    its prompt is used as it is, and ``src_lang`` / ``tgt_lang`` are optional. A row whose ``prompt`` is a list of
    chat messages (``chosen``/``rejected``: one assistant message each), or, without ``prompt``, whose
    ``chosen``/``rejected`` are whole conversations ending with the answer, is TRL's conversational format.
    """
    if "prompt" in obj and "source" in obj:
        raise DataError(f"{where}: the row has both 'source' (the project's format, prompted by the prompt format) and "
                        "'prompt' (TRL's format, its own prompt); one of them would be ignored: keep one")
    kind = row_format(obj)
    langs = {k: _language(obj, k, where, required=kind == ROW_FORMATS[0]) for k in ("src_lang", "tgt_lang")}
    ref = obj.get("reference")
    if ref is not None and (not isinstance(ref, str) or is_blank(ref)):
        raise DataError(f"{where}: field 'reference' must be a non-empty string when present")
    messages = None
    if kind == ROW_FORMATS[2]:
        messages, chosen, rejected = _conversation(obj, where)
        texts = {"source": messages[-1]["content"], "chosen": chosen, "rejected": rejected}
    else:
        texts = {k: _text(obj, k, where) for k in (TRL_FIELDS if kind == ROW_FORMATS[1] else REQUIRED_FIELDS[:3])}
    return PreferenceExample(
        source=texts.get("source", texts.get("prompt", "")),
        chosen=texts["chosen"],
        rejected=texts["rejected"],
        src_lang=langs["src_lang"],
        tgt_lang=langs["tgt_lang"],
        reference=ref,
        provenance=obj.get("provenance") or {},
        prompt=texts.get("prompt"),
        messages=messages,
        origin=where,
    )


def read_preference_jsonl(path: str | Path) -> list[PreferenceExample]:
    """The project's preference JSONL (written by scripts/build_preferences.py), or TRL's prompt/chosen/rejected
    rows (standard or conversational); one file holds one of these formats."""
    examples, first = [], None
    for i, obj in iter_jsonl(path):
        where = f"{path}:{i}"
        kind = row_format(obj)
        if first is None:
            first = (kind, i)
        elif kind != first[0]:
            raise DataError(f"{where}: a row in {kind} format after rows in {first[0]} format (line {first[1]}); "
                            "one file holds one format: convert or split it")
        examples.append(example_from_record(obj, where))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def pair_scorers(examples: list[PreferenceExample]) -> list[dict]:
    """Which scorer chose the sides of these pairs, from each row's provenance: ``[{"scorer", "scorer_identity",
    "pairs"}]`` per distinct scorer (``scorer`` None for rows without provenance, e.g. TRL's format). A run records
    it, so that a report can tell when its selection metric or verdict is the scorer that built the pairs (SPEC
    section 9, metric interference)."""
    counts: dict[tuple, int] = {}
    for e in examples:
        prov = e.provenance if isinstance(e.provenance, dict) else {}
        key = (prov.get("scorer"), prov.get("scorer_identity"))
        key = tuple(k if isinstance(k, str) else None for k in key)
        counts[key] = counts.get(key, 0) + 1
    return [{"scorer": s, "scorer_identity": i, "pairs": n} for (s, i), n in counts.items()]
