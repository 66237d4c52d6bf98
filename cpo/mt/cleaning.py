"""How generated text becomes a translation: ALMA's cue rule and the chat formats' end-of-turn rule (SPEC section 4).

Each prompt format cleans by its own rule (``BoundPrompt.clean``); these are the rules. Every cleaned output
also says which rule found it, so that generation can count them (``scripts/generate.py``'s summary).
"""
from __future__ import annotations

from cpo.languages import language_name
from cpo.text import is_blank

#: How :func:`clean_translation` found a translation, in the order it tries (SPEC section 4).
CLEANING_RULES = ("first_line", "second_line", "third_line", "after_repeated_cue", "none")
#: How :func:`clean_turn` ended: at a stop id (the template's end of turn, or EOS), or cut by max_new_tokens.
TURN_RULES = ("end_of_turn", "max_new_tokens")


def clean_translation(generated: str, tgt_lang: str, cue: str | None = None) -> tuple[str, str]:
    """(translation, rule) from the text generated after the prompt, as ALMA's evaluation cleans it.

    The cue is ``\\n{Tgt}:``, a new line starting with the target language's name (or the ``cue`` given, a
    template format's); ``{Tgt}:`` inside a line is part of the translation ("Beautiful English: Letters ...").
    The text up to a repeated cue is split into lines: the first line if it is not blank, else the second if
    not blank, else the third (stripped, even if blank); only where those lines do not exist, the first line
    after the repeated cue; else the empty string (rule ``"none"``). A result with nothing visible is ``""``.
    """
    if cue is None:
        cue = f"\n{language_name(tgt_lang)}:"
    parts = generated.split(cue) if cue else [generated]
    lines = parts[0].split("\n")
    for k, rule in enumerate(CLEANING_RULES[:3]):
        if k >= len(lines):
            break
        if k == 2 or not is_blank(lines[k]):
            text = lines[k].strip()
            return ("" if is_blank(text) else text), rule
    if len(parts) > 1:
        text = parts[1].split("\n")[0].strip()
        return ("" if is_blank(text) else text), CLEANING_RULES[3]
    return "", CLEANING_RULES[4]


def postprocess(generated: str, tgt_lang: str) -> str:
    """The translation in the text generated after the prompt (:func:`clean_translation`)."""
    return clean_translation(generated, tgt_lang)[0]


def clean_turn(tokenizer, generated_ids: list[int], stop_ids: list[int]) -> tuple[str, str]:
    """(translation, rule) from an assistant turn's generated ids: the text before the first stop id, special
    tokens dropped, stripped, its lines joined by a space (one translation per line of output).

    The rule is ``"end_of_turn"`` when a stop id ended the turn, ``"max_new_tokens"`` when none did (the output
    was cut). Nothing after the end of the turn is read: that is where a chat model's turn ends.
    """
    stops = set(stop_ids)
    cut = next((k for k, t in enumerate(generated_ids) if t in stops), None)
    kept = generated_ids if cut is None else generated_ids[:cut]
    text = tokenizer.decode(kept, skip_special_tokens=True)
    text = " ".join(line.strip() for line in text.splitlines() if not is_blank(line))
    return ("" if is_blank(text) else text), TURN_RULES[0] if cut is not None else TURN_RULES[1]
