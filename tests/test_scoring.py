"""Tests of cpo.scoring on real (tiny, offline-built) COMET checkpoints and sacrebleu.

The tiny checkpoints go through exactly the path a hub model takes after download: a local
``checkpoints/model.ckpt`` with ``hparams.yaml`` beside its folder, loaded by comet.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sacrebleu

from cpo.scoring import (
    CachedScorer,
    CometScorer,
    MeanScorer,
    Scorer,
    SentenceBleuScorer,
    SentenceChrfScorer,
    build_scorer,
    load_scorer_preset,
    SCORER_PRESET_DIR,
)

try:
    from tests.helpers.tiny_comet import TinyComet, build_tiny_comet
except ImportError:  # pytest run with tests/ (not the repo root) on sys.path
    from helpers.tiny_comet import TinyComet, build_tiny_comet

REPO = Path(__file__).resolve().parents[1]

SRC = ["der Hund sieht die Katze.", "das Haus ist alt.", "zwei Leute bauen ein Auto.", "heute."]
HYP = ["the dog sees the cat.", "house old the is.", "two people build a car.", "today."]
REF = ["the dog sees the cat.", "the house is old.", "two people build a car.", "today."]


@pytest.fixture(scope="session")
def tiny_comet(tmp_path_factory) -> TinyComet:
    """A reference-free and a reference-based COMET, built and trained once per session."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # much faster and steadier on the shared 2-core machine
    try:
        yield build_tiny_comet(tmp_path_factory.mktemp("tiny_comet"))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def qe_scorer(tiny_comet) -> CometScorer:
    return CometScorer(model=str(tiny_comet.qe_dir), gpus=0, progress=False, name="tiny_qe")


class CountingScorer(Scorer):
    """Deterministic fake: score = len(hypothesis); records every item it is asked to score."""

    requires_reference = False
    uses_reference = False

    def __init__(self, name: str = "count", kill_after_calls: int | None = None) -> None:
        self.name = name
        self.seen: list[str] = []
        self.calls = 0
        self.kill_after_calls = kill_after_calls

    @property
    def identity(self) -> str:
        return f"counting:{self.name}"

    def _score(self, sources, hypotheses, references, tgt_lang):
        self.calls += 1
        if self.kill_after_calls is not None and self.calls > self.kill_after_calls:
            os.kill(os.getpid(), 9)  # SIGKILL: no cleanup, like an OOM kill or a preempted job
        self.seen.extend(hypotheses)
        return [float(len(h)) for h in hypotheses]


# ------------------------------------------------------------------------------ COMET
def test_reference_free_comet_scores_each_item_deterministically(tiny_comet, qe_scorer):
    assert qe_scorer.requires_reference is False and qe_scorer.uses_reference is False
    scores = qe_scorer.score(SRC, HYP)
    assert len(scores) == len(HYP) and all(isinstance(s, float) for s in scores)
    assert qe_scorer.score(SRC, HYP) == scores
    # References given to a reference-free model are ignored, not an error.
    assert qe_scorer.score(SRC, HYP, REF) == scores
    # The .ckpt file and its folder are the same model: same identity, same scores.
    by_file = CometScorer(model=str(tiny_comet.qe_ckpt), gpus=0, progress=False, name="tiny_qe")
    assert by_file.identity == qe_scorer.identity
    assert by_file.score(SRC, HYP) == pytest.approx(scores, abs=1e-6)
    assert qe_scorer.score([], []) == []


def test_reference_model_needs_references(tiny_comet):
    scorer = CometScorer(model=str(tiny_comet.ref_dir), gpus=0, progress=False)
    assert scorer.requires_reference is True and scorer.uses_reference is True
    assert scorer.name == "ref"
    with pytest.raises(ValueError, match="needs references"):
        scorer.score(SRC, HYP)
    scores = scorer.score(SRC, HYP, REF)
    assert len(scores) == len(HYP) and all(isinstance(s, float) for s in scores)


def test_use_reference_must_match_the_model(tiny_comet):
    no_ref = CometScorer(model=str(tiny_comet.ref_dir), gpus=0, progress=False, use_reference=False)
    with pytest.raises(ValueError, match="needs a reference"):
        no_ref.score(SRC, HYP)
    with_ref = CometScorer(model=str(tiny_comet.qe_dir), gpus=0, progress=False, use_reference=True)
    with pytest.raises(ValueError, match="reference-free"):
        with_ref.score(SRC, HYP, REF)


def test_missing_local_checkpoint_and_unavailable_hub_model(tmp_path):
    missing = tmp_path / "nowhere" / "model.ckpt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        CometScorer(model=str(missing))
    empty = tmp_path / "empty_model_dir"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="checkpoints/model.ckpt"):
        CometScorer(model=str(empty), gpus=0).score(SRC, HYP)
    hub = CometScorer(model="Unbabel/no-such-model-for-cpo-tests", gpus=0, use_reference=False)
    assert "Unbabel/no-such-model-for-cpo-tests" in hub.identity  # known without a download
    with pytest.raises(RuntimeError, match="not available offline.*local checkpoint path"):
        hub.score(SRC, HYP)


def test_lengths_are_validated(qe_scorer):
    with pytest.raises(ValueError, match="4 sources but 3 hypotheses"):
        qe_scorer.score(SRC, HYP[:3])
    with pytest.raises(ValueError, match="2 references but 4 hypotheses"):
        SentenceChrfScorer().score(SRC, HYP, REF[:2])


# ------------------------------------------------------------------------------ cache
def test_cache_hits_avoid_a_second_model_call(tiny_comet, tmp_path):
    model = CometScorer(model=str(tiny_comet.qe_dir), gpus=0, progress=False)
    first = CachedScorer(model, tmp_path, progress=False)
    scores = first.score(SRC, HYP)
    assert model.n_model_calls == 1 and first.misses == len(HYP)
    # A new process would build a new CachedScorer over the same folder: nothing re-scored.
    again = CachedScorer(model, tmp_path, progress=False)
    assert again.score(SRC, HYP) == scores
    assert model.n_model_calls == 1 and again.hits == len(HYP) and again.misses == 0
    assert model.score(SRC, HYP) == pytest.approx(scores, abs=1e-6)


def test_cache_scores_only_misses_once_and_keys_on_used_fields(tmp_path):
    inner = CountingScorer()
    cached = CachedScorer(inner, tmp_path, chunk_size=2, progress=False)
    assert cached.score(["a", "b"], ["x", "yy"]) == [1.0, 2.0]
    # Duplicates and already-known items are not scored again; chunks of 2 -> 2 calls for 3 misses.
    assert cached.score(["a", "c", "c", "d", "e"], ["x", "zzz", "zzz", "w", "v"]) == [1.0, 3.0, 3.0, 1.0, 1.0]
    assert inner.seen == ["x", "yy", "zzz", "w", "v"] and inner.calls == 3
    # References are not part of the key of a scorer that does not use them.
    assert cached.score(["a"], ["x"], ["some ref"]) == [1.0] and inner.calls == 3
    # Sentence BLEU depends on the reference and on the target language's tokenizer.
    bleu = CachedScorer(SentenceBleuScorer(), tmp_path, progress=False)
    assert bleu.key("s", "h", "r1", "de") != bleu.key("s", "h", "r2", "de")
    assert bleu.key("s", "h", "r1", "de") != bleu.key("s", "h", "r1", "zh")
    assert cached.key("s", "h", "r1", "de") == cached.key("s", "h", None, None)
    assert bleu.path != cached.path


def test_cache_survives_a_truncated_last_line(tmp_path):
    cached = CachedScorer(CountingScorer(), tmp_path, progress=False)
    cached.score(["a", "b"], ["x", "yy"])
    with open(cached.path, "ab") as f:
        f.write(b'{"k": "deadbeef", "s": 1')  # a write cut by a kill
    inner = CountingScorer()
    reloaded = CachedScorer(inner, tmp_path, progress=False)
    assert reloaded.score(["a", "b", "c"], ["x", "yy", "zzz"]) == [1.0, 2.0, 3.0]
    assert inner.seen == ["zzz"]
    lines = cached.path.read_text(encoding="utf-8").splitlines()
    assert all(json.loads(line) for line in lines)  # the fragment was cut before appending
    assert json.loads(lines[0]) == {"identity": "counting:count"}


def test_cache_resumes_after_sigkill_mid_build(tmp_path):
    """A build killed after two chunks keeps them; the rerun scores only the rest."""
    code = textwrap.dedent(
        f"""
        import sys; sys.path[:0] = [{str(REPO)!r}, {str(Path(__file__).parent)!r}]
        from test_scoring import CountingScorer
        from cpo.scoring import CachedScorer
        cached = CachedScorer(CountingScorer(kill_after_calls=2), {str(tmp_path)!r}, chunk_size=3, progress=False)
        cached.score([str(i) for i in range(10)], ["h" * i for i in range(10)])
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    inner = CountingScorer()
    resumed = CachedScorer(inner, tmp_path, chunk_size=3, progress=False)
    assert resumed.score([str(i) for i in range(10)], ["h" * i for i in range(10)]) == [float(i) for i in range(10)]
    assert inner.seen == ["h" * i for i in range(6, 10)]


# ------------------------------------------------------------------------------ mean
def test_mean_scorer_is_the_mean(qe_scorer):
    count = CountingScorer()
    mean = MeanScorer([qe_scorer, count], name="qe_count")
    a, b = qe_scorer.score(SRC, HYP), count.score(SRC, HYP)
    assert mean.score(SRC, HYP) == pytest.approx([(x + y) / 2 for x, y in zip(a, b)])
    assert mean.requires_reference is False
    assert qe_scorer.identity in mean.identity and count.identity in mean.identity
    parts = mean.score_components(SRC, HYP)
    assert set(parts) == {"tiny_qe", "count", "qe_count"} and parts["count"] == b
    weighted = MeanScorer([qe_scorer, count], weights=[3, 1])
    assert weighted.score(SRC, HYP) == pytest.approx([0.75 * x + 0.25 * y for x, y in zip(a, b)])
    # One reference-based member makes the mean need references.
    with_chrf = MeanScorer([count, SentenceChrfScorer()])
    assert with_chrf.requires_reference is True
    with pytest.raises(ValueError, match="needs references"):
        with_chrf.score(SRC, HYP)
    with pytest.raises(ValueError, match="weights"):
        MeanScorer([count, SentenceChrfScorer()], weights=[1])


# ------------------------------------------------------------------------------ sacrebleu
def test_sentence_chrf_and_bleu_equal_sacrebleu():
    chrf = SentenceChrfScorer().score(SRC, HYP, REF)
    assert chrf == [sacrebleu.sentence_chrf(h, [r]).score for h, r in zip(HYP, REF)]
    bleu = SentenceBleuScorer().score(SRC, HYP, REF, tgt_lang="en")
    assert bleu == [sacrebleu.sentence_bleu(h, [r], tokenize="13a").score for h, r in zip(HYP, REF)]
    zh_hyp, zh_ref = ["今天天气很好。", "我喜欢猫"], ["今天天气很好！", "我喜欢狗"]
    zh = SentenceBleuScorer().score(["a", "b"], zh_hyp, zh_ref, tgt_lang="zh")
    assert zh == [sacrebleu.sentence_bleu(h, [r], tokenize="zh").score for h, r in zip(zh_hyp, zh_ref)]
    assert zh != SentenceBleuScorer(tokenize="13a").score(["a", "b"], zh_hyp, zh_ref)
    with pytest.raises(ValueError, match="tgt_lang"):
        SentenceBleuScorer().score(SRC, HYP, REF)


# ------------------------------------------------------------------------------ config
def test_every_preset_builds_without_downloading():
    names = sorted(p.stem for p in SCORER_PRESET_DIR.glob("*.yaml"))
    assert {"kiwi", "kiwi_xxl", "xcomet_xxl", "comet22", "kiwi_xcomet", "chrf", "bleu", "demo_qe"} <= set(names)
    for name in names:
        scorer = build_scorer(name)
        assert isinstance(scorer, Scorer), name
    paper = build_scorer("kiwi_xcomet")
    assert isinstance(paper, MeanScorer) and [s.name for s in paper.scorers] == ["kiwi", "xcomet"]
    assert [s.model for s in paper.scorers] == ["Unbabel/wmt23-cometkiwi-da-xxl", "Unbabel/XCOMET-XXL"]
    assert paper.uses_reference is False and "XCOMET-XXL" in paper.identity
    assert build_scorer("comet22").requires_reference is True
    assert load_scorer_preset("xcomet_xxl")["use_reference"] is False


def test_build_scorer_from_config_with_cache(tiny_comet, tmp_path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {
            "_target_": "cpo.scoring.MeanScorer",
            "name": "paper_like",
            "scorers": [
                {"_target_": "cpo.scoring.CometScorer", "model": str(tiny_comet.qe_dir), "name": "kiwi",
                 "gpus": 0, "progress": False},
                "chrf",
            ],
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    scorer = build_scorer(cfg)
    assert isinstance(scorer, MeanScorer)
    assert all(isinstance(s, CachedScorer) for s in scorer.scorers)
    assert len(scorer.score(SRC, HYP, REF)) == len(HYP)
    assert len(list((tmp_path / "cache").glob("*.jsonl"))) == 2
    plain = build_scorer({"_target_": "cpo.scoring.SentenceChrfScorer"}, cache_dir=tmp_path / "c2")
    assert isinstance(plain, CachedScorer) and plain.name == "sentence_chrf"


def test_build_scorer_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="cannot build scorer _target_='cpo.scoring.NoSuchScorer'"):
        build_scorer({"_target_": "cpo.scoring.NoSuchScorer"})
    with pytest.raises(ValueError, match="no _target_"):
        build_scorer({"model": "x"})
    with pytest.raises(ValueError, match="unknown scorer 'nope'.*known presets"):
        build_scorer("nope")
    with pytest.raises(TypeError, match="not a cpo.scoring.Scorer"):
        build_scorer({"_target_": "builtins.dict"})
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_scorer({"_target_": "cpo.scoring.CometScorer", "model": str(missing)})


def test_demo_qe_scorer():
    pytest.importorskip("cpo.demo.quality")
    from cpo.demo.language import sample_sentences
    from cpo.demo.quality import DemoQualityEstimator
    from cpo.scoring import DemoQEScorer

    sentences = sample_sentences(3, seed=0)
    sources = [s.source for s in sentences]
    hyps = [sentences[0].translation, sentences[1].translation + " extra", ""]
    scorer = build_scorer("demo_qe")
    assert isinstance(scorer, DemoQEScorer) and scorer.requires_reference is False
    assert scorer.name == "demo_qe" and scorer.identity == DemoQualityEstimator.identity
    assert scorer.score(sources, hyps) == DemoQualityEstimator().score(sources, hyps)
    assert scorer.score(sources, hyps)[0] > scorer.score(sources, hyps)[1]


def test_evaluate_app_with_a_local_comet_checkpoint(tiny_comet, tmp_path):
    """The Hydra evaluation app takes a COMET model by local path just like a hub name."""
    src, ref, hyp = (tmp_path / f"{k}.txt" for k in ("src", "ref", "hyp"))
    for path, lines in ((src, SRC), (ref, REF), (hyp, HYP)):
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    scorer = f"{{_target_: cpo.scoring.CometScorer, model: '{tiny_comet.qe_dir}', name: tiny_kiwi, gpus: 0, progress: false}}"
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate.py"), f"src={src}", f"ref={ref}", f"hyp={hyp}",
         "src_lang=de", "tgt_lang=en", f"scorers=[{scorer}]", f"hydra.run.dir={out}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    expected = CometScorer(model=str(tiny_comet.qe_dir), gpus=0, progress=False).score(SRC, HYP)
    assert metrics["tiny_kiwi"] == pytest.approx(sum(expected) / len(expected), abs=1e-5)
