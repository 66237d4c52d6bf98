"""Held-out evaluation of a policy: preference accuracy and margin on held-out pairs, and the quality of its
translations of test sources (BLEU, chrF, health checks, QE/COMET scorers). Used for the before/after
table that closes every training run, and for ``test_translations.jsonl``, the per-sentence record that
``scripts/compare.py`` resamples for significance tests."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from cpo.data.sources import TestSet
from cpo.mt.evaluation import table_metric_keys
from cpo.train.chunked_logps import LogpsSettings
from cpo.train.logprobs import completion_logps


@dataclass(frozen=True)
class GenerationSettings:
    num_beams: int = 5
    max_new_tokens: int = 256
    batch_size: int = 16
    max_prompt_length: int | None = None
    prompt_format: Any = None  # the run's cpo.mt.prompt.PromptFormat (None: ALMA's)


@dataclass
class Evaluation:
    metrics: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)  # one per test sentence: source, reference, hypothesis, scores


def accelerator(trainer_cfg) -> torch.device:
    """The device training runs on (rank 0's): held-out evaluation and reference log-probs run there too,
    never on the CPU of a GPU machine (Lightning moves the model back to the CPU when fit ends)."""
    accel = str(trainer_cfg.get("accelerator", "auto"))
    if accel in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def on_accelerator(model, trainer_cfg):
    """``model`` on the training device, under the training precision's autocast; put back afterwards."""
    device = accelerator(trainer_cfg)
    home = next(model.parameters()).device
    precision = str(trainer_cfg.get("precision", "32-true"))
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16 if device.type == "cuda" else torch.bfloat16}
    cast = torch.autocast(device.type, dtype=dtype[precision]) if precision in dtype else contextlib.nullcontext()
    model.to(device)
    try:
        with cast:
            yield model
    finally:
        model.to(home)


@torch.no_grad()
def pair_metrics(policy, loader, pad_id: int, logps: LogpsSettings = LogpsSettings()) -> dict[str, float]:
    """Share of held-out pairs where log pi(y_w|x) > log pi(y_l|x), and the mean log-prob margin."""
    was_training = policy.training
    chunk = logps.chunk_for(policy)
    policy.eval()
    device = next(policy.parameters()).device
    n, wins, margin = 0, 0.0, 0.0
    try:
        for batch in loader:
            b = {k: v.to(device) for k, v in batch.items()}
            c, r = completion_logps(
                policy, b["prompt_ids"], b["prompt_mask"],
                [(b["chosen_ids"], b["chosen_mask"]), (b["rejected_ids"], b["rejected_mask"])], pad_id, chunk,
            )
            n += c.sum.shape[0]
            wins += float((c.sum > r.sum).sum())
            margin += float((c.sum - r.sum).sum())
    finally:
        policy.train(was_training)
    return {"pref_accuracy": wins / max(n, 1), "logp_margin": margin / max(n, 1), "pairs": n}


def _translate_with_progress(policy, tokenizer, test: TestSet, gen: GenerationSettings, bar: bool, say) -> list[str]:
    """All translations; a progress bar in a terminal, else a line about every 30 s (beam search on real data
    takes minutes, and a log file should show that it is moving)."""
    from cpo.mt.generation import translate

    def run(sources: list[str], progress: bool) -> list[str]:
        return translate(policy, tokenizer, sources, test.src_lang, test.tgt_lang, batch_size=gen.batch_size,
                         num_beams=gen.num_beams, max_new_tokens=gen.max_new_tokens, progress=progress,
                         max_prompt_length=gen.max_prompt_length, prompt_format=gen.prompt_format)

    if bar or len(test.sources) <= 4 * gen.batch_size:
        return run(test.sources, bar)
    hyps: list[str] = []
    t0 = last = time.time()
    chunk = 4 * gen.batch_size
    for start in range(0, len(test.sources), chunk):
        hyps += run(test.sources[start:start + chunk], False)
        if time.time() - last >= 30:
            last = time.time()
            say(f"  translated {len(hyps)}/{len(test.sources)} ({len(hyps) / (last - t0):.1f} sentences/s)")
    return hyps


def translation_metrics(policy, tokenizer, test: TestSet, scorers=(), gen: GenerationSettings = GenerationSettings(),
                        progress: bool = False, say=print) -> Evaluation:
    """Translate ``test`` and score it: corpus metrics (cpo.mt.evaluation) and every scorer's segment scores."""
    from cpo.mt.evaluation import corpus_metrics

    hyps = _translate_with_progress(policy, tokenizer, test, gen, progress, say)
    metrics = corpus_metrics(hyps, test.references, test.tgt_lang, sources=test.sources, src_lang=test.src_lang)
    segment: dict[str, list[float]] = {}
    for scorer in scorers:  # scored here, not inside corpus_metrics, to keep the segment scores
        segment[scorer.name] = scorer.score(test.sources, hyps, test.references, tgt_lang=test.tgt_lang)
        metrics[scorer.name] = sum(segment[scorer.name]) / len(hyps)
    rows = [{"source": s, "reference": r, "hypothesis": h, "src_lang": test.src_lang, "tgt_lang": test.tgt_lang,
             "scores": {name: v[i] for name, v in segment.items()}}
            for i, (s, r, h) in enumerate(zip(test.sources, test.references, hyps))]
    return Evaluation(metrics, rows)


def evaluate_policy(policy, tokenizer, heldout_loader, pad_id: int, test: TestSet | None, scorers,
                    gen: GenerationSettings, say=print, progress: bool = False,
                    logps: LogpsSettings = LogpsSettings()) -> Evaluation:
    """Pair metrics on the held-out pairs (when any) and translation metrics on ``test`` (when given)."""
    t0 = time.time()
    metrics = pair_metrics(policy, heldout_loader, pad_id, logps) if heldout_loader is not None else {}
    rows: list[dict] = []
    if test is not None:
        say(f"translating {len(test.sources)} test sentences ({test.src_lang}-{test.tgt_lang}, beam {gen.num_beams}, "
            f"up to {gen.max_new_tokens} new tokens)")
        ev = translation_metrics(policy, tokenizer, test, scorers, gen, progress, say)
        metrics.update({k: v for k, v in ev.metrics.items() if isinstance(v, (int, float)) and k != "n"})
        metrics.update({k: v for k, v in ev.metrics.items() if k.endswith("_signature")})
        metrics["sentences"] = len(test.sources)
        rows = ev.rows
    say(f"held-out evaluation done in {time.time() - t0:.1f}s")
    return Evaluation(metrics, rows)


def logged_metrics(metrics: dict, prefix: str) -> dict:
    """The numbers of a held-out evaluation as logger metrics (``before/bleu``), less the sizes of its table."""
    return {f"{prefix}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in ("pairs", "sentences")}


def before_after_table(before: dict, after: dict) -> str:
    """A Markdown table of the numeric metrics present in both."""
    lines = ["| metric | before | after | change |", "|---|---:|---:|---:|"]
    for k in table_metric_keys(before, after):
        lines.append(f"| {k} | {before[k]:.4g} | {after[k]:.4g} | {after[k] - before[k]:+.4g} |")
    return "\n".join(lines)


# Below these a before/after change is mostly noise: with 50 pairs a preference accuracy's 95% interval is about
# +-0.14, and one sentence in fewer than 50 moves corpus BLEU by points.
MIN_HELDOUT_PAIRS = 50
MIN_TEST_SENTENCES = 50


def table_basis(metrics: dict, test: TestSet | None) -> tuple[str, list[str]]:
    """(what the held-out table rests on, as one line; a warning (without its ``warning:``) per count below its floor).

    ``metrics`` is :func:`evaluate_policy`'s (``pairs``: held-out pairs, ``sentences``: test sentences)."""
    pairs, sentences = metrics.get("pairs"), metrics.get("sentences")
    parts = [f"{pairs} held-out preference pairs (pref_accuracy, logp_margin)" if pairs else
             "no held-out preference pairs (data.val_size or data.val_file)"]
    if sentences and test is not None:
        parts.append(f"{sentences} test sentences {test.src_lang}-{test.tgt_lang} against their {test.label}s "
                     f"(the translation metrics)")
    else:
        parts.append("no test set, so no translation metrics (data.test_file)")
    warnings = []
    if pairs and pairs < MIN_HELDOUT_PAIRS:
        warnings.append(f"the held-out table's pref_accuracy and logp_margin rest on {pairs} pairs (fewer "
                        f"than {MIN_HELDOUT_PAIRS}), too few to tell a change from noise: hold out more "
                        f"(data.val_size, data.val_file)")
    if sentences and sentences < MIN_TEST_SENTENCES:
        warnings.append(f"the held-out table's translation metrics rest on {sentences} test sentences "
                        f"(fewer than {MIN_TEST_SENTENCES}), too few to tell a change from noise: use a larger test "
                        f"set (data.test_file, evaluate.max_sentences)")
    return "Rests on " + " and ".join(parts) + ".", warnings
