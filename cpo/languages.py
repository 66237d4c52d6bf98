"""Language codes and the full names ALMA's prompt uses (SPEC section 4)."""

LANGUAGES: dict[str, str] = {
    "en": "English",
    "de": "German",
    "cs": "Czech",
    "is": "Icelandic",
    "zh": "Chinese",
    "ru": "Russian",
    "ja": "Japanese",
    "fr": "French",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "nl": "Dutch",
    "pl": "Polish",
    "uk": "Ukrainian",
    "ha": "Hausa",
    "he": "Hebrew",
    "ko": "Korean",
    "ar": "Arabic",
    "tr": "Turkish",
    "fi": "Finnish",
    "et": "Estonian",
    "lt": "Lithuanian",
    "lv": "Latvian",
    "ro": "Romanian",
    "hi": "Hindi",
    "gu": "Gujarati",
    "kk": "Kazakh",
    "sv": "Swedish",
    "da": "Danish",
    "no": "Norwegian",
    "hu": "Hungarian",
    "el": "Greek",
    "bg": "Bulgarian",
    "hr": "Croatian",
    "sk": "Slovak",
    "sl": "Slovenian",
    "sr": "Serbian",
    "vi": "Vietnamese",
    "th": "Thai",
    "id": "Indonesian",
    # The embedded demo's synthetic source language (cpo/demo).
    "zb": "Zorbish",
}


def language_name(code: str, where: str = "") -> str:
    """Full name of a language code; an unknown code stops with a sentence naming where it came from."""
    try:
        return LANGUAGES[code]
    except KeyError:
        known = ", ".join(sorted(LANGUAGES))
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}unknown language code {code!r} (known: {known})") from None


def sacrebleu_tokenizer(tgt_lang: str) -> str:
    """BLEU tokenizer by target language (SPEC section 6): ``zh``, ``ja-mecab`` for Japanese, ``13a`` otherwise.

    Korean gets ``13a`` too, as ALMA's evaluation did (sacrebleu's own default for Korean is
    ``ko-mecab``, so Korean figures differ from sacrebleu's command line without ``-tok``).
    ``ja-mecab`` needs MeCab and its IPA dictionary (``pip install "sacrebleu[ja]"``, the project's
    ``ja`` extra). Without them Japanese falls back to ``char`` with a warning; the BLEU signature
    then says ``tok:char``, so such a figure is never mistaken for a ``ja-mecab`` one.
    """
    if tgt_lang == "zh":
        return "zh"
    if tgt_lang == "ja":
        try:
            import ipadic  # noqa: F401
            import MeCab  # noqa: F401
        except ImportError:
            import warnings

            warnings.warn('Japanese BLEU: MeCab is not installed (pip install "sacrebleu[ja]"), so the tokenizer '
                          "is char instead of ja-mecab (see tok: in the signature)", stacklevel=2)
            return "char"
        return "ja-mecab"
    return "13a"


def language_pair(direction: str, where: str) -> tuple[str, str]:
    """``"de-en"`` -> ``("de", "en")``; a malformed pair or an unknown code is a wrong setting named by ``where``.

    Raises ``cpo.cli.UsageError`` (imported on the error path only: cpo.cli imports torch).
    """
    parts = str(direction).split("-")
    problem = None
    if len(parts) != 2 or not all(parts):
        problem = f"{direction!r} is not of the form <src>-<tgt> (e.g. de-en)"
    else:
        unknown = [c for c in parts if c not in LANGUAGES]
        if unknown:
            problem = f"unknown language code {unknown[0]!r} in {direction} (known: {', '.join(sorted(LANGUAGES))})"
    if problem:
        from cpo.cli import UsageError

        raise UsageError(f"{where}: {problem}")
    return parts[0], parts[1]
