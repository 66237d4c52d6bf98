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
    """BLEU tokenizer by target language (SPEC section 6)."""
    return {"zh": "zh", "ja": "ja-mecab", "ko": "ko-mecab"}.get(tgt_lang, "13a")
