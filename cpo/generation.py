"""Batched translation with a causal LM and ALMA's output post-processing (SPEC sections 4 and 6)."""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from tqdm.auto import tqdm

from cpo.languages import language_name
from cpo.prompt import PromptEncoder

log = logging.getLogger(__name__)


def postprocess(generated: str, tgt_lang: str) -> str:
    """Text after the prompt, cut at the first newline or at a repeated '{Tgt}:' marker, stripped."""
    marker = f"{language_name(tgt_lang)}:"
    text = generated.split(marker, 1)[0]
    for line in text.split("\n"):
        if line.strip():  # ALMA skips an empty first line after the cue
            return line.strip()
    return ""


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
) -> list[str]:
    """Translations of ``sources``, in order. Batches are sorted by length (less padding) and left-padded.

    Prompts are built and cut exactly as in training (:class:`cpo.prompt.PromptEncoder`): pass the
    training run's ``data.max_prompt_length`` so that an over-long source is left-truncated the same way.
    """
    if not sources:
        return []
    model_was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = PromptEncoder(tokenizer, max_prompt_length, "left")  # an output per source: never reject here
    encoded = [prompts.encode(s, src_lang, tgt_lang).ids for s in sources]
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
                out[i] = postprocess(t, tgt_lang)
            bar.update(len(idx))
    finally:
        bar.close()
        model.train(model_was_training)
    return out
