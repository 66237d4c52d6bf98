"""Generation throughput: batched beam search (cpo.mt.generation.translate) against one sentence at a time, and
N candidates per source (cpo.mt.sampling.generate_candidates): sentences/s and candidates/s at N = 1, 4, 8."""

from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch

from cpo.bench.workload import SRC, TGT, build_model, build_tokenizer, make_examples


def _oom_errors() -> tuple[type, ...]:
    return (torch.cuda.OutOfMemoryError,) if hasattr(torch.cuda, "OutOfMemoryError") else ()


def _sources(tok, n: int, seed: int, lengths: str) -> list[str]:
    """``n`` source sentences: the demo's, or length-matched to ALMA-R's (cpo.bench.lengths)."""
    from cpo.bench.lengths import length_matched_examples

    examples = make_examples(n, seed + 7) if lengths == "demo" else length_matched_examples(tok, n, seed + 7)
    return [e.source for e in examples]


def run_generation_bench(
    models: Sequence[str],
    threads: int,
    n_sentences: int = 64,
    n_single: int = 8,
    batch_sizes: Sequence[int] = (16, 64),
    num_beams: int = 5,
    max_new_tokens: int = 24,
    reps: int = 3,
    seed: int = 0,
    log=print,
    device: str = "cpu",
    dtype: str = "float32",
    lengths: str = "demo",
    batches_per_size: int | None = None,
    warmup_new_tokens: int | None = None,
) -> dict:
    """Sentences/s of cpo.mt.generation.translate batched vs one sentence at a time (interleaved repetitions).

    The models are random-initialised, so beams rarely stop early: every sentence decodes
    ``max_new_tokens`` tokens in both modes, which keeps the per-sentence work equal (and makes it the
    worst case). ``batches_per_size``: each batch size translates that many full batches instead of all
    ``n_sentences``. A batch size that runs out of GPU memory is reported as such and the others go on.
    """
    from cpo.mt.generation import translate

    torch.set_num_threads(threads)
    tok = build_tokenizer(seed)
    sources = _sources(tok, max([n_sentences, n_single] + [b * (batches_per_size or 0) for b in batch_sizes]),
                       seed, lengths)
    out = {
        "mode": "generation",
        "threads": threads,
        "num_beams": num_beams,
        "max_new_tokens": max_new_tokens,
        "sentences": n_sentences,
        "single_sentences": n_single,
        "batch_sizes": list(batch_sizes),
        "device": device,
        "dtype": dtype,
        "lengths": lengths,
        "batches_per_size": batches_per_size,
        "models": {},
    }

    def count(bs: int) -> int:
        return n_single if bs == 1 else (bs * batches_per_size if batches_per_size else n_sentences)

    for name in models:
        model = build_model(tok, name, seed, device=device, dtype=dtype).eval()
        runs: dict[int, list[float]] = {bs: [] for bs in (1, *batch_sizes)}
        errors: dict[int, str] = {}

        def attempt(bs: int, n: int, new_tokens: int, model=model) -> float | None:
            try:
                t = time.perf_counter()
                translate(model, tok, sources[:n], SRC, TGT, batch_size=bs, num_beams=num_beams,
                          max_new_tokens=new_tokens)
                return n / (time.perf_counter() - t)
            except _oom_errors() as e:
                errors[bs] = f"batch {bs} ran out of GPU memory ({str(e).splitlines()[0][:160]})"
                torch.cuda.empty_cache()
                return None

        for bs in runs:  # warm-up
            attempt(bs, max(bs, 1), warmup_new_tokens or max_new_tokens)
        for r in range(reps):
            order = list(runs) if r % 2 == 0 else list(runs)[::-1]
            for bs in order:
                if bs not in errors:
                    rate = attempt(bs, count(bs), max_new_tokens)
                    if rate is not None:
                        runs[bs].append(rate)
        res: dict = {"batched": {}}
        if runs[1]:
            res.update(single_sent_per_s_median=statistics.median(runs[1]), single_sent_per_s_max=max(runs[1]))
        else:
            res["single_error"] = errors.get(1, "no measurement")
        for bs in batch_sizes:
            if not runs[bs]:
                res["batched"][bs] = {"error": errors.get(bs, "no measurement"), "sentences": count(bs)}
                log(f"== generation {name}: batch {bs}: {res['batched'][bs]['error']}")
                continue
            med, best = statistics.median(runs[bs]), max(runs[bs])
            row = {"sent_per_s_median": med, "sent_per_s_max": best, "sentences": count(bs)}
            if runs[1]:
                row.update(
                    speedup_median=med / res["single_sent_per_s_median"],
                    speedup_best=best / res["single_sent_per_s_max"],
                )
            res["batched"][bs] = row
            vs = ""
            if runs[1]:
                single, single_best = res["single_sent_per_s_median"], res["single_sent_per_s_max"]
                vs = (f" vs one at a time {single:.1f} sent/s (best {single_best:.1f}): "
                      f"speedup median {row['speedup_median']:.1f}x, best {row['speedup_best']:.1f}x")
            log(f"== generation {name}: {num_beams} beams, {max_new_tokens} new tokens: batch {bs}: {med:.1f} sent/s "
                f"(best {best:.1f})" + vs)
        out["models"][name] = res
        del model, attempt  # before the next model is built
    return out


def run_candidates_bench(
    models: Sequence[str],
    threads: int,
    n_sentences: int = 32,
    ns: Sequence[int] = (1, 4, 8),
    batch_size: int = 16,
    max_new_tokens: int = 24,
    temperature: float = 1.0,
    reps: int = 3,
    seed: int = 0,
    log=print,
    device: str = "cpu",
    dtype: str = "float32",
    lengths: str = "demo",
) -> dict:
    """Sentences/s and candidates/s of N sampled candidates per source (the candidates stage of a rounds run), per N,
    median and best of ``reps`` interleaved repetitions after a warm-up. ``batch_size`` counts sources (each with its
    N candidates, as the rounds app batches). Random-initialised models rarely stop early, so every candidate decodes
    ``max_new_tokens`` tokens: the worst case, the same work per candidate at every N."""
    from cpo.mt.sampling import CandidateSettings, GenerationStats, generate_candidates

    torch.set_num_threads(threads)
    tok = build_tokenizer(seed)
    sources = _sources(tok, n_sentences, seed, lengths)
    out = {"mode": "candidates", "threads": threads, "sentences": n_sentences, "ns": list(ns), "batch_size": batch_size,
           "max_new_tokens": max_new_tokens, "temperature": temperature, "device": device, "dtype": dtype,
           "models": {}}
    for name in models:
        model = build_model(tok, name, seed, device=device, dtype=dtype).eval()
        rates: dict[int, list[tuple[float, float]]] = {n: [] for n in ns}

        def once(n: int, k: int, model=model) -> tuple[float, float]:
            stats = GenerationStats()
            settings = CandidateSettings(num_samples=n, num_return_beams=0, temperature=temperature, seed=seed)
            generate_candidates(model, tok, sources[:k], SRC, TGT, settings, batch_size=batch_size,
                                max_new_tokens=max_new_tokens, stats=stats)
            return stats.sentences_per_s, stats.candidates_per_s

        for n in ns:  # warm-up
            once(n, min(batch_size, n_sentences))
        for r in range(reps):
            for n in (list(ns) if r % 2 == 0 else list(ns)[::-1]):
                rates[n].append(once(n, n_sentences))
        res = {}
        for n in ns:
            sent = [a for a, _ in rates[n]]
            cand = [b for _, b in rates[n]]
            res[n] = {"sent_per_s_median": statistics.median(sent), "sent_per_s_max": max(sent),
                      "cand_per_s_median": statistics.median(cand), "cand_per_s_max": max(cand)}
            log(f"== candidates {name}: N={n} sampled per source, {max_new_tokens} new tokens, batch {batch_size} "
                f"sources: {res[n]['sent_per_s_median']:.1f} sentences/s, {res[n]['cand_per_s_median']:.1f} "
                f"candidates/s (best {res[n]['sent_per_s_max']:.1f} / {res[n]['cand_per_s_max']:.1f})")
        out["models"][name] = res
        del model, once
    return out
