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

from cpo.io import atomic_write_json, atomic_write_jsonl

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
    own_candidates: bool = True  # the warm start's own translations join the candidates

    def key(self) -> str:
        blob = json.dumps({"version": VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class DemoAssets:
    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / "warm_start"

    @property
    def train_file(self) -> Path:
        return self.root / "train.jsonl"

    @property
    def val_file(self) -> Path:
        return self.root / "val.jsonl"

    @property
    def test_file(self) -> Path:
        return self.root / "test.jsonl"

    @property
    def report_file(self) -> Path:
        return self.root / "build_report.json"


def ensure_demo_assets(cache_dir: str | os.PathLike, settings: DemoSettings = DemoSettings(), progress=print) -> DemoAssets:
    """The cached assets for ``settings``, building them on first use (about a minute on a laptop CPU)."""
    root = Path(cache_dir).expanduser() / "demo" / f"{VERSION}-{settings.key()}"
    if (root / "DONE").exists():
        return DemoAssets(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        t0 = time.time()
        progress(f"[demo] building assets in {root} (first run only)")
        _build(DemoAssets(tmp), settings, progress)
        (tmp / "DONE").write_text(f"built in {time.time() - t0:.1f}s\n")
        try:
            os.replace(tmp, root)
        except OSError:  # another process finished first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
        progress(f"[demo] assets ready in {time.time() - t0:.1f}s")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DemoAssets(root)


def _build(assets: DemoAssets, s: DemoSettings, progress) -> None:
    from cpo.data import format_prompt
    from cpo.demo.language import gilded_references, reference_habits, sample_sentences
    from cpo.demo.quality import DemoQualityEstimator
    from cpo.demo.systems import DEFAULT_SYSTEMS
    from cpo.preferences import build_pairs
    from cpo.tiny import build_tiny_llama, save_model_and_tokenizer, train_bpe_tokenizer

    n_pref = s.n_train_sources + s.n_val_sources
    sents = sample_sentences(s.n_parallel + n_pref + s.n_test_sources, s.seed)
    parallel, pref, test = sents[: s.n_parallel], sents[s.n_parallel : s.n_parallel + n_pref], sents[s.n_parallel + n_pref :]
    habits = reference_habits(s.seed)
    par_refs = gilded_references(parallel, s.reference_flaw_rate, s.seed, habits=habits)
    pref_refs = gilded_references(pref, s.reference_flaw_rate, s.seed, habits=habits)

    progress("[demo] training the tokenizer")
    texts = [x.source for x in sents] + [x.translation for x in sents] + par_refs + [format_prompt("x", SRC, TGT)]
    tok = train_bpe_tokenizer(texts, s.vocab_size)
    model = build_tiny_llama(tok, s.hidden_size, s.num_hidden_layers, s.num_attention_heads, s.num_key_value_heads, seed=s.seed)

    progress(f"[demo] warm start: supervised training on {len(parallel)} gilded references ({s.warm_start_steps} steps)")
    warm_start(model, tok, [x.source for x in parallel], par_refs, s, progress)
    save_model_and_tokenizer(model, tok, assets.model_dir)

    progress("[demo] candidates: reference, demo systems" + (", warm-start translations" if s.own_candidates else ""))
    candidates = {"ref": pref_refs}
    for system in DEFAULT_SYSTEMS:
        candidates[system.name] = system.translate(pref, s.seed)
    if s.own_candidates:
        from cpo.generation import translate

        candidates["warm_start"] = translate(model, tok, [x.source for x in pref], SRC, TGT, batch_size=128, num_beams=1, max_new_tokens=48)
    qe = DemoQualityEstimator()
    sources = [x.source for x in pref]
    scores = {name: qe.score(sources, texts) for name, texts in candidates.items()}
    rows, counts = build_pairs(sources, candidates, scores, SRC, TGT, qe.identity, references=pref_refs)
    val_sources = {x.source for x in pref[s.n_train_sources :]}
    atomic_write_jsonl(assets.train_file, [r for r in rows if r["source"] not in val_sources])
    atomic_write_jsonl(assets.val_file, [r for r in rows if r["source"] in val_sources])
    atomic_write_jsonl(assets.test_file, [{"source": x.source, "reference": x.translation, "src_lang": SRC, "tgt_lang": TGT} for x in test])
    report = {
        "settings": asdict(s),
        "habits": {"dropped": sorted(habits.dropped), "untranslated": sorted(habits.untranslated), "confused_numbers": habits.confused_numbers},
        "candidate_mean_qe": {n: sum(v) / len(v) for n, v in scores.items()},
        "pairs": counts.as_dict(),
    }
    atomic_write_json(assets.report_file, report)
    progress(f"[demo] {counts.kept} preference pairs kept, {sum(counts.dropped.values())} dropped {dict(counts.dropped)}; "
             f"mean QE by candidate: " + ", ".join(f"{n} {v:.3f}" for n, v in report["candidate_mean_qe"].items()))


def warm_start(model, tok, sources: list[str], references: list[str], s: DemoSettings, progress) -> None:
    """Plain supervised training (token-mean NLL of the reference), the ALMA SFT analogue."""
    from cpo.data import PairEncoder, _left_pad, _right_pad, format_prompt
    from cpo.logprobs import completion_logps

    enc = PairEncoder(tok, max_prompt_length=64, max_length=128)
    data = []
    for src, ref in zip(sources, references):
        prompt = format_prompt(src, SRC, TGT)
        p = enc.prompt_ids(prompt)
        data.append((p, enc.completion_ids(prompt, p, ref)))
    opt = torch.optim.AdamW(model.parameters(), lr=s.warm_start_lr, weight_decay=0.0)
    warm = max(1, s.warm_start_steps // 16)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / warm) * max(0.05, 1 - k / s.warm_start_steps))
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
