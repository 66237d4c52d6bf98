"""N candidate translations per source: sampling with a seed, N returned beams, or both (SPEC section 9).

On-policy preference data needs several candidates per source from the policy itself. Two decoders,
usable together (returned beams first, then samples):

- **Beam search with N returned beams** (``num_beams`` wide, the best ``num_return_beams`` kept, in rank order).
- **Sampling** (``num_samples`` per source) at a ``temperature``, after ``top_k`` / ``top_p`` filtering.
  Samples are drawn by the Gumbel-max trick: each (source, sample) row adds Gumbel noise from a random
  generator of its own to the filtered, tempered logits and takes the argmax, which is an exact draw from
  the same distribution as ``do_sample=True``. Because the noise of a row depends only on ``seed``, the
  direction, the source text and the sample's index, a sample is reproducible whatever the batch size,
  the order of the sources or the other sources in the file (HF's sampling draws from one global stream).

Batches are sorted by prompt length and left-padded, as in ``cpo.mt.generation.translate``; prompts are built
and cut by the prompt format exactly as in training, generation stops at the format's stop ids, and each
candidate is cleaned by the format's rule, as ``translate`` does. A batch holds ``batch_size`` sources with all
their candidates. With ``logprobs``, each candidate's summed log-probability under the generating model
(temperature 1, no filtering: the model's own ``log p(y | x)`` of the generated tokens, the stop token
included) comes from one teacher-forced forward pass per batch. A NaN score stops generation in one sentence
(``cpo.mt.finite``).
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import LogitsProcessorList

from cpo.console import progress as progress_display
from cpo.mt.candidates import duplicate_marks
from cpo.mt.finite import NanScores, check_finite
from cpo.mt.prompt import AlmaPrompt, PromptFormat
from cpo.text import is_blank

BEAM, SAMPLE = "beam", "sample"


@dataclass(frozen=True)
class CandidateSettings:
    """How many candidates per source and how they are decoded."""

    num_samples: int = 0          # sampled candidates per source
    num_return_beams: int = 1     # beam candidates per source (0: none; at most num_beams)
    num_beams: int = 5
    temperature: float = 1.0
    top_p: float = 1.0            # nucleus: the smallest set of tokens whose probability reaches top_p (1: all)
    top_k: int = 0                # the k most probable tokens only (0: all)
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.num_samples >= 0, "num_samples must be >= 0"),
            (self.num_return_beams >= 0, "num_return_beams must be >= 0"),
            (self.num_samples + self.num_return_beams >= 1, "num_samples + num_return_beams must be at least 1"),
            (self.num_beams >= max(1, self.num_return_beams), "num_beams must be >= num_return_beams"),
            (self.temperature > 0, "temperature must be > 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message} (got {self})")

    @property
    def n(self) -> int:
        return self.num_return_beams + self.num_samples

    @property
    def origins(self) -> list[str]:
        return [BEAM] * self.num_return_beams + [SAMPLE] * self.num_samples


def row_seed(seed: int, src_lang: str, tgt_lang: str, source: str, sample: int) -> int:
    """The random seed of one sample: a function of the settings' seed and the sample's identity only."""
    payload = json.dumps([seed, src_lang, tgt_lang, source, sample], ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(payload.encode("utf-8")).digest()[:8], "big") >> 1


class SeededSampling:
    """A logits processor for greedy decoding that turns it into sampling, one random stream per row.

    temperature -> top-k -> top-p (HF's order and rules), then Gumbel(0, 1) noise from each row's generator:
    the argmax of ``logits / T + G`` over the kept tokens is a draw from their softmax.
    """

    def __init__(self, generators: list[torch.Generator], temperature: float, top_k: int, top_p: float):
        self.generators, self.temperature, self.top_k, self.top_p = generators, temperature, top_k, top_p

    def filtered(self, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float() / self.temperature
        if self.top_k and self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            # HF's TopPLogitsWarper: drop the tokens whose cumulative probability, from the least likely up, stays
            # at or below 1 - top_p; the most likely token always stays.
            sorted_logits, order = torch.sort(scores, descending=False, dim=-1)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            remove = cum <= (1 - self.top_p)
            remove[..., -1] = False
            scores = scores.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
        return scores

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = self.filtered(scores)
        noise = torch.stack([
            torch.rand(scores.shape[-1], generator=g, device=g.device, dtype=torch.float64) for g in self.generators
        ]).to(scores.device)
        gumbel = -torch.log(-torch.log(noise.clamp_(min=1e-300, max=1 - 1e-16)))
        return scores + gumbel.to(scores.dtype)


@dataclass
class GenerationStats:
    """What a candidate generation did: counts and rates for the progress line and the benchmark."""

    sources: int = 0
    candidates: int = 0
    duplicates: int = 0
    empty: int = 0
    seconds: float = 0.0
    cleaning: Counter | None = None

    @property
    def sentences_per_s(self) -> float:
        return self.sources / self.seconds if self.seconds > 0 else float("nan")

    @property
    def candidates_per_s(self) -> float:
        return self.candidates / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict:
        return {"sources": self.sources, "candidates": self.candidates, "duplicates": self.duplicates,
                "empty": self.empty, "seconds": round(self.seconds, 3),
                "sentences_per_s": round(self.sentences_per_s, 3), "candidates_per_s": round(self.candidates_per_s, 3),
                "cleaning": dict(self.cleaning or {})}


def _left_batch(encoded: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, e in enumerate(encoded):
        ids[r, width - len(e):] = torch.tensor(e)
        mask[r, width - len(e):] = 1
    return ids, mask, width


def _generated(rows: torch.Tensor, stop_ids: set[int]) -> list[list[int]]:
    """Each row's generated ids up to and including its first stop id (the rest is padding)."""
    out = []
    for row in rows.tolist():
        ids = []
        for t in row:
            ids.append(t)
            if t in stop_ids:
                break
        out.append(ids)
    return out


@torch.no_grad()
def sequence_logprobs(model, prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> list[float]:
    """Summed log p(completion | prompt) under ``model`` (temperature 1), one teacher-forced forward pass."""
    device = next(model.parameters()).device
    seqs = [p + c for p, c in zip(prompts, completions)]
    ids, mask, width = _left_batch(seqs, pad_id)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    target = ids[:, 1:].to(device)
    tok = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    out = []
    for r, c in enumerate(completions):
        n = len(c)
        out.append(float(tok[r, width - 1 - n: width - 1].sum()) if n else 0.0)
    return out


@torch.no_grad()
def generate_candidates(
    model,
    tokenizer,
    sources: Sequence[str],
    src_lang: str,
    tgt_lang: str,
    settings: CandidateSettings,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    max_prompt_length: int | None = None,
    logprobs: bool = False,
    progress: bool = False,
    stats: GenerationStats | None = None,
    prompt_format: PromptFormat | None = None,
) -> list[dict]:
    """Per source, in input order: ``{"candidates": [...], "origins": [...], "logprobs": [...]?}``
    (``settings.n`` candidates: returned beams by rank, then samples by index), with the prompts of
    ``prompt_format`` (None: ALMA's). ``stats`` (when given) is filled in; ``progress`` shows a bar in a terminal
    and a line every 30 s in a log file (``cpo.console.progress``)."""
    t0 = time.time()
    stats = stats if stats is not None else GenerationStats()
    stats.cleaning = stats.cleaning if stats.cleaning is not None else Counter()
    if not sources:
        return []
    model_was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # A candidate per source: never reject here.
    prompts = (prompt_format or AlmaPrompt()).bind(tokenizer, max_prompt_length, "left")
    stop_ids = prompts.stop_ids_for(model)
    stop, eos = set(stop_ids), (stop_ids[0] if len(stop_ids) == 1 else stop_ids)
    nan = NanScores()  # a model whose outputs are NaN would give empty candidates: stop instead
    encoded = []
    for s in sources:
        p = prompts.encode(s, src_lang, tgt_lang)
        stats.cleaning["prompt_truncated"] += p.truncated
        encoded.append(p.ids)
    order = sorted(range(len(sources)), key=lambda i: len(encoded[i]))
    out: list[dict] = [{} for _ in sources]
    bar = progress_display(len(sources), f"candidates {src_lang}-{tgt_lang}", "sent", enabled=progress)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids, mask, width = _left_batch([encoded[i] for i in idx], pad_id)
            ids, mask = ids.to(device), mask.to(device)
            per_source: dict[int, list[list[int]]] = {i: [] for i in idx}
            if settings.num_return_beams:
                gen = model.generate(input_ids=ids, attention_mask=mask, num_beams=settings.num_beams,
                                     num_return_sequences=settings.num_return_beams, do_sample=False,
                                     max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos,
                                     use_cache=True, logits_processor=LogitsProcessorList([nan]))
                check_finite(nan, f"generating candidates {src_lang}-{tgt_lang}")
                rows = _generated(gen[:, width:], stop)
                for r, row in enumerate(rows):
                    per_source[idx[r // settings.num_return_beams]].append(row)
            if settings.num_samples:
                k = settings.num_samples
                gens = []
                for i in idx:
                    for j in range(k):
                        g = torch.Generator(device=device)
                        g.manual_seed(row_seed(settings.seed, src_lang, tgt_lang, sources[i], j))
                        gens.append(g)
                sampler = SeededSampling(gens, settings.temperature, settings.top_k, settings.top_p)
                gen = model.generate(input_ids=ids.repeat_interleave(k, 0), attention_mask=mask.repeat_interleave(k, 0),
                                     num_beams=1, do_sample=False, logits_processor=LogitsProcessorList([nan, sampler]),
                                     max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos,
                                     use_cache=True)
                check_finite(nan, f"sampling candidates {src_lang}-{tgt_lang}")
                rows = _generated(gen[:, width:], stop)
                for r, row in enumerate(rows):
                    per_source[idx[r // k]].append(row)
            if logprobs:
                flat = [(encoded[i], row) for i in idx for row in per_source[i]]
                lps = sequence_logprobs(model, [p for p, _ in flat], [c for _, c in flat], pad_id)
            pos = 0
            for i in idx:
                texts = []
                for row in per_source[i]:
                    text, rule = prompts.clean(row, tgt_lang)
                    stats.cleaning[rule] += 1
                    texts.append(text)
                out[i] = {"candidates": texts, "origins": settings.origins}
                if logprobs:
                    out[i]["logprobs"] = lps[pos:pos + len(texts)]
                pos += len(per_source[i])
            bar.update(len(idx))
    finally:
        bar.close()
        model.train(model_was_training)
    stats.sources += len(sources)
    stats.candidates += sum(len(o["candidates"]) for o in out)
    stats.duplicates += sum(m is not None for o in out for m in duplicate_marks(o["candidates"]))
    stats.empty += sum(is_blank(t) for o in out for t in o["candidates"])
    stats.seconds += time.time() - t0
    return out
