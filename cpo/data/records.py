"""Preference examples and the readers of the project's preference JSONL (and TRL's format, as it is)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cpo.io import DataError, iter_jsonl
from cpo.languages import LANGUAGES
from cpo.text import is_blank


@dataclass
class PreferenceExample:
    """One preference triple. ``prompt`` is set only for rows that bring their own prompt text (TRL's
    format): it then replaces ALMA's template, and the completions follow it verbatim."""

    source: str
    chosen: str
    rejected: str
    src_lang: str | None
    tgt_lang: str | None
    reference: str | None = None
    provenance: dict = field(default_factory=dict)
    prompt: str | None = None


REQUIRED_FIELDS = ("source", "chosen", "rejected", "src_lang", "tgt_lang")
TRL_FIELDS = ("prompt", "chosen", "rejected")


def _text(obj: dict, key: str, where: str) -> str:
    if key not in obj:
        raise DataError(f"{where}: missing field {key!r}")
    value = obj[key]
    if isinstance(value, list):
        raise DataError(f"{where}: field {key!r} is a list of chat messages (TRL's conversational format), "
                        "which has no translation prompt to train on; convert the rows to the standard format "
                        "(strings)")
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


def example_from_record(obj: dict, where: str) -> PreferenceExample:
    """Validate one JSONL record; errors name the field.

    The project's format has ``source``, ``chosen``, ``rejected``, ``src_lang``, ``tgt_lang`` and
    optional ``reference`` / ``provenance``. A row with ``prompt`` and no ``source`` is TRL's standard
    preference format: its prompt is used as it is, and ``src_lang`` / ``tgt_lang`` are optional.
    """
    trl = "prompt" in obj and "source" not in obj
    texts = {k: _text(obj, k, where) for k in (TRL_FIELDS if trl else REQUIRED_FIELDS[:3])}
    langs = {k: _language(obj, k, where, required=not trl) for k in ("src_lang", "tgt_lang")}
    ref = obj.get("reference")
    if ref is not None and (not isinstance(ref, str) or is_blank(ref)):
        raise DataError(f"{where}: field 'reference' must be a non-empty string when present")
    return PreferenceExample(
        source=texts.get("source", texts.get("prompt", "")),
        chosen=texts["chosen"],
        rejected=texts["rejected"],
        src_lang=langs["src_lang"],
        tgt_lang=langs["tgt_lang"],
        reference=ref,
        provenance=obj.get("provenance") or {},
        prompt=texts.get("prompt"),
    )


def read_preference_jsonl(path: str | Path) -> list[PreferenceExample]:
    """The project's preference JSONL (written by scripts/build_preferences.py), or TRL's
    prompt/chosen/rejected rows."""
    examples = [example_from_record(obj, f"{path}:{i}") for i, obj in iter_jsonl(path)]
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples
