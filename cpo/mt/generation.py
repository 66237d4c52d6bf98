"""Batched translation with a causal LM and ALMA's output post-processing (SPEC sections 4 and 6)."""
from __future__ import annotations

import logging
from collections import Counter
from typing import Sequence

import torch
from tqdm.auto import tqdm

from cpo.mt.prompt import PromptEncoder, target_cue
from cpo.text import is_blank

log = logging.getLogger(__name__)

#: How :func:`clean_translation` found a translation, in the order it tries (SPEC section 4).
CLEANING_RULES = ("first_line", "second_line", "third_line", "after_repeated_cue", "none")


def clean_translation(generated: str, tgt_lang: str) -> tuple[str, str]:
    """(translation, rule) from the text generated after the prompt, as ALMA's evaluation cleans it.

    The cue is ``\\n{Tgt}:``, a new line starting with the target language's name; ``{Tgt}:`` inside a
    line is part of the translation ("Beautiful English: Letters ..."). The text up to a repeated cue
    is split into lines: the first line if it is not blank, else the second if not blank, else the
    third (stripped, even if blank); only where those lines do not exist, the first line after the
    repeated cue; else the empty string (rule ``"none"``). A result with nothing visible is ``""``.
    """
    parts = generated.split(target_cue(tgt_lang))
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


@torch.no_grad()
def translate(
    model,
    tokenizer,
    sources: Sequence[str],
    src_lang: str,
    tgt_lang: str,
    batch_size: int = 16,
    num_beams: int = 5,
    max_new_tokens: int = 256,
    progress: bool = False,
    max_prompt_length: int | None = None,
    cleaning: Counter | None = None,
) -> list[str]:
    """Translations of ``sources``, in order. Batches are sorted by length (less padding) and left-padded.

    Prompts are built and cut exactly as in training (:class:`cpo.mt.prompt.PromptEncoder`): pass the
    training run's ``data.max_prompt_length`` so that an over-long source is left-truncated the same way.
    ``cleaning`` (a Counter), when given, counts how each output was cleaned (:data:`CLEANING_RULES`)
    and the prompts that were cut (``"prompt_truncated"``).
    """
    if not sources:
        return []
    model_was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = PromptEncoder(tokenizer, max_prompt_length, "left")  # an output per source: never reject here
    encoded_prompts = [prompts.encode(s, src_lang, tgt_lang) for s in sources]
    encoded = [p.ids for p in encoded_prompts]
    if cleaning is not None:
        cleaning["prompt_truncated"] += sum(p.truncated for p in encoded_prompts)
    order = sorted(range(len(sources)), key=lambda i: len(encoded[i]))
    out: list[str] = [""] * len(sources)
    bar = tqdm(total=len(sources), desc=f"translate {src_lang}-{tgt_lang}", disable=not progress, unit="sent")
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, i in enumerate(idx):
                ids[r, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[r, width - len(encoded[i]) :] = 1
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                num_beams=num_beams,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                eos_token_id=tokenizer.eos_token_id,
                use_cache=True,
            )
            texts = tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
            for i, t in zip(idx, texts):
                out[i], rule = clean_translation(t, tgt_lang)
                if cleaning is not None:
                    cleaning[rule] += 1
            bar.update(len(idx))
    finally:
        bar.close()
        model.train(model_was_training)
    return out
