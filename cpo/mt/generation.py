"""Batched translation with a causal LM: prompts, stop ids and cleaning from the prompt format (SPEC sections 4, 6)."""
from __future__ import annotations

import logging
from collections import Counter
from typing import Sequence

import torch
from transformers import LogitsProcessorList

from cpo.console import progress as progress_display
from cpo.mt.cleaning import CLEANING_RULES, clean_translation, postprocess  # noqa: F401 - their home before
from cpo.mt.finite import NanScores, check_finite
from cpo.mt.prompt import AlmaPrompt, PromptEncoder, PromptFormat  # noqa: F401 - PromptEncoder: ALMA's, bound

log = logging.getLogger(__name__)


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
    prompt_format: PromptFormat | None = None,
) -> list[str]:
    """Translations of ``sources``, in order. Batches are sorted by length (less padding) and left-padded.

    Prompts are built and cut exactly as in training, by ``prompt_format`` (None: ALMA's): pass the training
    run's format and ``data.max_prompt_length`` so that an over-long source is cut the same way. Generation
    stops at the format's stop ids (EOS; a chat template's end of turn) and each output is cleaned by the
    format's rule. ``cleaning`` (a Counter), when given, counts how each output was cleaned (ALMA:
    :data:`cpo.mt.cleaning.CLEANING_RULES`; chat: :data:`cpo.mt.cleaning.TURN_RULES`) and the prompts that were
    cut (``"prompt_truncated"``).
    """
    if not sources:
        return []
    model_was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # An output per source: never reject here.
    prompts = (prompt_format or AlmaPrompt()).bind(tokenizer, max_prompt_length, "left")
    stop = prompts.stop_ids_for(model)
    encoded_prompts = [prompts.encode(s, src_lang, tgt_lang) for s in sources]
    encoded = [p.ids for p in encoded_prompts]
    if cleaning is not None:
        cleaning["prompt_truncated"] += sum(p.truncated for p in encoded_prompts)
    order = sorted(range(len(sources)), key=lambda i: len(encoded[i]))
    out: list[str] = [""] * len(sources)
    bar = progress_display(len(sources), f"translate {src_lang}-{tgt_lang}", "sent", enabled=progress)
    nan = NanScores()  # a model whose outputs are NaN would give empty lines: stop instead (cpo/mt/finite.py)
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
                eos_token_id=stop[0] if len(stop) == 1 else stop,
                use_cache=True,
                logits_processor=LogitsProcessorList([nan]),
            )
            check_finite(nan, f"translating {src_lang}-{tgt_lang}")
            for i, row in zip(idx, gen[:, width:].tolist()):
                out[i], rule = prompts.clean(row, tgt_lang)
                if cleaning is not None:
                    cleaning[rule] += 1
            bar.update(len(idx))
    finally:
        bar.close()
        model.train(model_was_training)
    return out
