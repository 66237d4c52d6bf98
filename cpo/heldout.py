"""Held-out evaluation of a policy: preference accuracy and margin on held-out pairs, and the
quality of its translations of test sources (BLEU, chrF, a QE/COMET scorer). Used for the
before/after table that closes every training run."""
from __future__ import annotations

import torch

from cpo.data.sources import TestSet
from cpo.logprobs import completion_logps


@torch.no_grad()
def pair_metrics(policy, loader, pad_id: int) -> dict[str, float]:
    """Share of held-out pairs where log pi(y_w|x) > log pi(y_l|x), and the mean log-prob margin."""
    was_training = policy.training
    policy.eval()
    device = next(policy.parameters()).device
    n, wins, margin = 0, 0.0, 0.0
    try:
        for batch in loader:
            b = {k: v.to(device) for k, v in batch.items()}
            c, r = completion_logps(policy, b["prompt_ids"], b["prompt_mask"], [(b["chosen_ids"], b["chosen_mask"]), (b["rejected_ids"], b["rejected_mask"])], pad_id)
            n += c.sum.shape[0]
            wins += float((c.sum > r.sum).sum())
            margin += float((c.sum - r.sum).sum())
    finally:
        policy.train(was_training)
    return {"pref_accuracy": wins / max(n, 1), "logp_margin": margin / max(n, 1), "pairs": n}


def translation_metrics(policy, tokenizer, test: TestSet, scorers=(), batch_size: int = 64, num_beams: int = 1,
                        max_new_tokens: int = 64, max_prompt_length: int | None = None) -> tuple[dict, list[str]]:
    from cpo.evaluation import corpus_metrics
    from cpo.generation import translate

    hyps = translate(policy, tokenizer, test.sources, test.src_lang, test.tgt_lang, batch_size=batch_size,
                     num_beams=num_beams, max_new_tokens=max_new_tokens, max_prompt_length=max_prompt_length)
    metrics = corpus_metrics(hyps, test.references, test.tgt_lang, sources=test.sources, scorers=scorers, src_lang=test.src_lang)
    return metrics, hyps


def before_after_table(before: dict, after: dict) -> str:
    """A Markdown table of the numeric metrics present in both."""
    keys = [k for k in before if k in after and isinstance(before[k], (int, float)) and k not in ("n", "pairs")]
    lines = ["| metric | before | after | change |", "|---|---:|---:|---:|"]
    for k in keys:
        lines.append(f"| {k} | {before[k]:.4g} | {after[k]:.4g} | {after[k] - before[k]:+.4g} |")
    return "\n".join(lines)
