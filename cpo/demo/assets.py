"""Builds and caches the embedded demo's assets: the real pipeline in miniature.

parallel data (gilded references) -> tokenizer -> tiny Llama -> supervised warm start (ALMA's SFT
analogue) -> candidates (reference, demo systems, the warm start's own translations) -> scored by
the demo QE -> preference pairs by the paper's rule -> train/val JSONL; plus a held-out test set
with clean translations. Everything is keyed by a hash of the settings, built in a temporary
folder and renamed into place, so parallel sweep jobs never see a half-built cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cpo.io import atomic_write_json, atomic_write_jsonl, normalize_permissions

log = logging.getLogger(__name__)
VERSION = "demo-v1"
SRC, TGT = "zb", "en"


@dataclass(frozen=True)
class DemoSettings:
    seed: int = 0  # the task's seed, fixed across training seeds so sweeps share one cache
    n_parallel: int = 3000
    n_train_sources: int = 2000
    n_val_sources: int = 150
    n_test_sources: int = 200
    reference_flaw_rate: float = 0.3
    vocab_size: int = 1000
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    warm_start_steps: int = 800
    warm_start_lr: float = 3e-3
    warm_start_batch_size: int = 32
    # Candidate systems in tie-breaking order: ref (the gilded reference), the demo systems
    # (strong, weak) and warm_start (the warm-start model's own translations).
    candidates: tuple[str, ...] = ("ref", "strong", "weak", "warm_start")
    negatives: str = "real"  # or "noised": the rejected side is a noised copy of the chosen one
    # The strong system's own translator habits (words it always drops, leaves untranslated or confuses), so
    # that the preferred candidates are themselves imperfect, as GPT-4's and ALMA's outputs are.
    strong_habits: bool = False

    PAIR_FIELDS = ("candidates", "negatives", "strong_habits")

    def key(self) -> str:
        """Key of the corpus, tokenizer and warm start (shared by every candidate set)."""
        base = {k: v for k, v in asdict(self).items() if k not in self.PAIR_FIELDS}
        return _hash({"version": VERSION, **base})

    def pairs_key(self) -> str:
        # Fields at their default stay out of the key, so adding a field never renames existing caches.
        defaults = DemoSettings()
        return _hash({k: getattr(self, k) for k in self.PAIR_FIELDS
                      if k in ("candidates", "negatives") or getattr(self, k) != getattr(defaults, k)})


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class DemoAssets:
    root: Path  # corpus, tokenizer, warm start, test set
    pairs: Path  # one candidate set's preference pairs, inside root

    @property
    def model_dir(self) -> Path:
        return self.root / "warm_start"

    @property
    def test_file(self) -> Path:
        return self.root / "test.jsonl"

    @property
    def train_file(self) -> Path:
        return self.pairs / "train.jsonl"

    @property
    def val_file(self) -> Path:
        return self.pairs / "val.jsonl"

    @property
    def report_file(self) -> Path:
        return self.pairs / "build_report.json"


def ensure_demo_assets(
    cache_dir: str | os.PathLike, settings: DemoSettings = DemoSettings(), progress=print
) -> DemoAssets:
    """The cached assets for ``settings``, building what is missing (about half a minute on a laptop CPU)."""
    root = Path(cache_dir).expanduser() / "demo" / f"{VERSION}-{settings.key()}"
    assets = DemoAssets(root, root / f"pairs-{settings.pairs_key()}")
    _build_once(root, lambda tmp: _build_base(tmp, settings, progress), progress, "warm start and test set")
    _build_once(assets.pairs, lambda tmp: _build_pairs(assets, tmp, settings, progress), progress, "preference pairs")
    return assets


def _build_once(final: Path, build, progress, what: str) -> None:
    """Build into a temporary folder and rename it into place; a finished folder is reused."""
    if (final / "DONE").exists():
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        t0 = time.time()
        progress(f"[demo] building {what} in {final} (first run only)")
        build(tmp)
        (tmp / "DONE").write_text(f"built in {time.time() - t0:.1f}s\n")
        # mkdtemp's 0700 folder and safetensors' 0600 weights: the umask's permissions, as plain writes give
        normalize_permissions(tmp)
        if final.exists():  # an unfinished leftover of a killed run
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
        progress(f"[demo] {what} ready in {time.time() - t0:.1f}s")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _split(s: DemoSettings):
    from cpo.demo.language import gilded_references, reference_habits, sample_sentences

    n_pref = s.n_train_sources + s.n_val_sources
    sents = sample_sentences(s.n_parallel + n_pref + s.n_test_sources, s.seed)
    parallel, pref, test = (
        sents[: s.n_parallel], sents[s.n_parallel : s.n_parallel + n_pref], sents[s.n_parallel + n_pref :]
    )
    habits = reference_habits(s.seed)
    return (
        sents, parallel, pref, test, habits,
        gilded_references(parallel, s.reference_flaw_rate, s.seed, habits=habits),
        gilded_references(pref, s.reference_flaw_rate, s.seed, habits=habits),
    )


def _build_base(tmp: Path, s: DemoSettings, progress) -> None:
    from cpo.data import format_prompt
    from cpo.train.tiny import build_tiny_llama, save_model_and_tokenizer, train_bpe_tokenizer

    sents, parallel, _, test, habits, par_refs, _ = _split(s)
    progress("[demo] training the tokenizer")
    texts = [x.source for x in sents] + [x.translation for x in sents] + par_refs + [format_prompt("x", SRC, TGT)]
    tok = train_bpe_tokenizer(texts, s.vocab_size)
    model = build_tiny_llama(tok, s.hidden_size, s.num_hidden_layers, s.num_attention_heads, s.num_key_value_heads,
                             seed=s.seed)
    progress(f"[demo] warm start: supervised training on {len(parallel)} gilded references "
             f"({s.warm_start_steps} steps)")
    warm_start(model, tok, [x.source for x in parallel], par_refs, s, progress)
    save_model_and_tokenizer(model, tok, tmp / "warm_start")
    atomic_write_jsonl(tmp / "test.jsonl", [
        {"source": x.source, "reference": x.translation, "src_lang": SRC, "tgt_lang": TGT} for x in test
    ])
    atomic_write_json(tmp / "habits.json", {
        "dropped": sorted(habits.dropped),
        "untranslated": sorted(habits.untranslated),
        "confused_numbers": habits.confused_numbers,
    })


def demo_candidates(assets: DemoAssets, s: DemoSettings, names, progress=print):
    """(preference sentences, their gilded references, {candidate name: its output per sentence}) for the
    candidate systems ``names`` among ref, the demo systems and warm_start (the warm start's greedy output)."""
    from cpo.demo.systems import DEFAULT_SYSTEMS

    _, _, pref, _, _, _, pref_refs = _split(s)
    systems = {x.name: x for x in DEFAULT_SYSTEMS}
    if s.strong_habits:
        from cpo.demo.systems import with_own_habits

        systems["strong"] = with_own_habits(systems["strong"], seed=s.seed + 1000)
    unknown = [c for c in names if c not in ("ref", "warm_start", *systems)]
    if unknown:
        raise ValueError(f"data.candidates={list(names)}: need two or more of ref, warm_start, {', '.join(systems)}")
    candidates: dict[str, list[str]] = {}
    for name in names:
        if name == "ref":
            candidates[name] = pref_refs
        elif name == "warm_start":
            from cpo.mt.generation import translate
            from cpo.train.models import load_causal_lm, load_tokenizer

            model, tok = load_causal_lm(str(assets.model_dir)), load_tokenizer(str(assets.model_dir))
            candidates[name] = translate(model, tok, [x.source for x in pref], SRC, TGT, batch_size=128, num_beams=1,
                                         max_new_tokens=48)
        else:
            candidates[name] = systems[name].translate(pref, s.seed)
    return pref, pref_refs, candidates


def _build_pairs(assets: DemoAssets, tmp: Path, s: DemoSettings, progress) -> None:
    from cpo.demo.quality import DemoQualityEstimator
    from cpo.pairs.build import build_pairs

    if len(s.candidates) < (1 if s.negatives == "noised" else 2):
        raise ValueError(f"data.candidates={list(s.candidates)}: need two or more of ref, warm_start, strong, weak")
    progress(f"[demo] candidates {list(s.candidates)}, negatives {s.negatives}")
    pref, pref_refs, candidates = demo_candidates(assets, s, s.candidates, progress)
    qe = DemoQualityEstimator()
    sources = [x.source for x in pref]
    scores = {name: qe.score(sources, texts) for name, texts in candidates.items()}
    # The same selection code as scripts/build_preferences.py (SPEC section 2 rule).
    rows, counts = build_pairs(sources, candidates, scores, SRC, TGT, qe.identity, references=pref_refs,
                               negatives=s.negatives)
    val_sources = {x.source for x in pref[s.n_train_sources :]}
    atomic_write_jsonl(tmp / "train.jsonl", [r for r in rows if r["source"] not in val_sources])
    atomic_write_jsonl(tmp / "val.jsonl", [r for r in rows if r["source"] in val_sources])
    report = {"settings": asdict(s), "candidate_mean_qe": {n: sum(v) / len(v) for n, v in scores.items()},
              "pairs": counts.as_dict()}
    atomic_write_json(tmp / "build_report.json", report)
    progress(f"[demo] {counts.kept} preference pairs kept, {sum(counts.dropped.values())} dropped "
             f"{dict(counts.dropped)}; mean QE by candidate: "
             + ", ".join(f"{n} {v:.3f}" for n, v in report["candidate_mean_qe"].items()))


def warm_start(model, tok, sources: list[str], references: list[str], s: DemoSettings, progress) -> None:
    """Plain supervised training (token-mean NLL of the reference), the ALMA SFT analogue."""
    from cpo.data import PairEncoder, _left_pad, _right_pad, format_prompt
    from cpo.train.logprobs import completion_logps

    enc = PairEncoder(tok, max_prompt_length=64, max_length=128)
    data = []
    for src, ref in zip(sources, references):
        prompt = format_prompt(src, SRC, TGT)
        p = enc.prompt_ids(prompt)
        data.append((p, enc.completion_ids(prompt, p, ref)))
    opt = torch.optim.AdamW(model.parameters(), lr=s.warm_start_lr, weight_decay=0.0)
    warm = max(1, s.warm_start_steps // 16)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warm) * max(0.05, 1 - k / s.warm_start_steps)
    )
    rng = random.Random(s.seed)
    model.train()
    t0 = time.time()
    for step in range(s.warm_start_steps):
        batch = rng.sample(data, min(s.warm_start_batch_size, len(data)))
        pi, pm = _left_pad([b[0] for b in batch], tok.pad_token_id)
        ci, cm = _right_pad([b[1] for b in batch], tok.pad_token_id)
        (out,) = completion_logps(model, pi, pm, [(ci, cm)], tok.pad_token_id)
        loss = -out.sum.sum() / out.n_tokens.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % max(1, s.warm_start_steps // 4) == 0:
            progress(f"[demo]   step {step + 1}/{s.warm_start_steps}  nll {loss.item():.3f}  ({time.time() - t0:.0f}s)")
    model.eval()
