"""Tests of cpo.scoring on real (tiny, offline-built) COMET checkpoints and sacrebleu.

The tiny checkpoints go through exactly the path a hub model takes after download: a local
``checkpoints/model.ckpt`` with ``hparams.yaml`` beside its folder, loaded by comet. A hub name is
tested on a Hugging Face cache laid out by hand (``models--<owner>--<name>/snapshots/<commit>``).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sacrebleu
from conftest import approx32

from cpo.io import DataError, Unavailable
from cpo.scoring import (
    CACHE_FORMAT,
    SCORER_PRESET_DIR,
    CachedScorer,
    CometScorer,
    MeanScorer,
    Scorer,
    ScoreError,
    ScorerConfigError,
    SentenceBleuScorer,
    SentenceChrfScorer,
    build_scorer,
    load_scorer_preset,
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


class NaNScorer(CountingScorer):
    """len(hypothesis), except NaN (or ``value``) for hypotheses containing ``bad``: a model overflowing on one
    input."""

    def __init__(self, bad: str = "BAD", value: float = float("nan"), name: str = "nan") -> None:
        super().__init__(name)
        self.bad, self.value = bad, value

    def _score(self, sources, hypotheses, references, tgt_lang):
        lengths = super()._score(sources, hypotheses, references, tgt_lang)
        return [self.value if self.bad in h else s for h, s in zip(hypotheses, lengths)]


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
    assert by_file.score(SRC, HYP) == approx32(scores)
    assert qe_scorer.score([], []) == []
    # An empty hypothesis (real system output) is scored like any other text.
    with_empty = qe_scorer.score(SRC[:2], ["", HYP[1]])
    assert with_empty[1] == approx32(scores[1]) and with_empty[0] != with_empty[1]


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
    broken = tmp_path / "broken"
    (broken / "checkpoints").mkdir(parents=True)
    (broken / "checkpoints" / "model.ckpt").write_bytes(b"not a checkpoint")
    (broken / "hparams.yaml").write_text("class_identifier: unified_metric\ninput_segments: [mt, src]\n")
    with pytest.raises(Unavailable, match="cannot be loaded.*download the model again"):
        CometScorer(model=str(broken), gpus=0).score(SRC, HYP)
    # A hub model is keyed by its commit, so it must be in the local cache (or pinned by a full commit hash).
    hub = CometScorer(model="Unbabel/no-such-model-for-cpo-tests", gpus=0, use_reference=False,
                      hub_cache_dir=str(tmp_path / "hf"))
    with pytest.raises(Unavailable, match="not in the local Hugging Face cache.*local checkpoint path"):
        hub.identity
    with pytest.raises(Unavailable, match="not in the local Hugging Face cache"):
        hub.score(SRC, HYP)
    pinned = CometScorer(model="Unbabel/no-such-model-for-cpo-tests", revision="c" * 40, use_reference=False)
    assert pinned.identity.endswith(f":Unbabel/no-such-model-for-cpo-tests@{'c' * 40}:noref")


def _hub_snapshot(cache: Path, repo: str, commit: str, checkpoint_dir: Path) -> None:
    """Lay out one snapshot of ``repo`` in a Hugging Face cache the way snapshot_download leaves it."""
    snap = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / commit
    (snap / "checkpoints").mkdir(parents=True)
    (snap / "checkpoints" / "model.ckpt").symlink_to(checkpoint_dir / "checkpoints" / "model.ckpt")
    (snap / "hparams.yaml").symlink_to(checkpoint_dir / "hparams.yaml")
    refs = cache / f"models--{repo.replace('/', '--')}" / "refs"
    refs.mkdir(exist_ok=True)
    (refs / "main").write_text(commit)


def test_hub_model_identity_carries_the_snapshot_commit(tiny_comet, tmp_path):
    """A hub model updated in the cache (a new snapshot of main) gets new cache entries, never the old scores."""
    hf, scores_dir = tmp_path / "hf", tmp_path / "scores"
    old, new = "a" * 40, "b" * 40
    _hub_snapshot(hf, "Unbabel/tiny-kiwi", old, tiny_comet.qe_dir)

    def cached(**kw):
        model = CometScorer(model="Unbabel/tiny-kiwi", gpus=0, progress=False, hub_cache_dir=str(hf), **kw)
        return model, CachedScorer(model, scores_dir, progress=False)

    model, first = cached()
    assert model.hub_revision == old and f"Unbabel/tiny-kiwi@{old}:noref" in first.identity
    scores = first.score(SRC, HYP)
    direct = CometScorer(str(tiny_comet.qe_dir), gpus=0, progress=False).score(SRC, HYP)
    assert model.n_model_calls == 1 and scores == approx32(direct)
    model, again = cached()
    assert again.score(SRC, HYP) == scores and model.n_model_calls == 0  # same commit: every score from the cache
    _hub_snapshot(hf, "Unbabel/tiny-kiwi", new, tiny_comet.ref_dir)  # main now points at another model
    model, updated = cached()
    assert model.hub_revision == new and updated.path != first.path
    assert updated.misses == 0 and len(updated.score(SRC, HYP, REF)) == len(HYP)
    assert updated.misses == len(HYP) and model.n_model_calls == 1  # scored again by the new model
    model, pinned = cached(revision=old)  # a pinned revision finds its own scores
    assert pinned.score(SRC, HYP) == scores and model.n_model_calls == 0


def test_progress_false_reaches_comets_own_progress_bar(tiny_comet, tmp_path, capfd, monkeypatch):
    import cpo.console

    monkeypatch.setattr(cpo.console, "interactive", lambda: True)  # a terminal: COMET's bar is shown if asked for
    model = CometScorer(model=str(tiny_comet.qe_dir), gpus=0, progress=True)
    quiet = CachedScorer(model, tmp_path, progress=False)  # as build_preferences.py progress=false sets it
    assert model.progress is False
    quiet.score(SRC, HYP)
    assert "Predicting" not in capfd.readouterr().err
    model.set_progress(True)
    model.score(SRC, HYP)
    assert "Predicting" in capfd.readouterr().err  # the bar that progress=false must silence
    monkeypatch.setattr(cpo.console, "interactive", lambda: False)  # a log file: no bar of carriage returns
    model.score(SRC, HYP)
    assert "Predicting" not in capfd.readouterr().err
    mean = build_scorer({"_target_": "cpo.scoring.MeanScorer", "name": "m", "scorers": [
        {"_target_": "cpo.scoring.CometScorer", "model": str(tiny_comet.qe_dir), "name": "q", "gpus": 0}, "chrf"]},
        cache_dir=tmp_path / "m", progress=False)
    assert [s.scorer.progress for s in mean.scorers if isinstance(s.scorer, CometScorer)] == [False]
    mean.score(SRC, HYP, REF)
    assert "Predicting" not in capfd.readouterr().err


def test_lengths_are_validated(qe_scorer):
    with pytest.raises(ValueError, match="4 sources but 3 hypotheses"):
        qe_scorer.score(SRC, HYP[:3])
    with pytest.raises(ValueError, match="2 references but 4 hypotheses"):
        SentenceChrfScorer().score(SRC, HYP, REF[:2])


# ------------------------------------------------------------------------------ non-finite scores
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_score_is_an_error_naming_the_scorer_and_segment(tmp_path, value):
    hyps = ["fine", "also fine", "BAD output", "ok"]
    message = rf"segment 3: scorer 'nan' \(counting:nan\) gave {value} for the hypothesis 'BAD output'"
    with pytest.raises(ScoreError, match=message):
        NaNScorer(value=value).score(SRC, hyps)
    # Through the cache, in chunks: the segment is named in the caller's list, and nothing of its chunk is stored.
    cached = CachedScorer(NaNScorer(value=value), tmp_path, chunk_size=2, progress=False)
    with pytest.raises(ScoreError, match="segment 3: scorer 'nan'") as err:
        cached.score(SRC, hyps)
    assert err.value.index == 2
    assert cached.score(SRC[:2], hyps[:2]) == [4.0, 9.0] and cached.hits == 2  # the first chunk was kept
    # Inside a mean, the member is named, not the mean.
    with pytest.raises(ScoreError, match="scorer 'nan'"):
        MeanScorer([CountingScorer(), NaNScorer(value=value)], name="mix").score(SRC, hyps)


def test_a_non_finite_score_in_the_cache_file_is_an_error_naming_the_line(tmp_path):
    cached = CachedScorer(CountingScorer(), tmp_path, progress=False)
    cached.score(["a", "b"], ["x", "yy"])
    key, nan = "0" * 64, float("nan")
    with open(cached.path, "a", encoding="utf-8") as f:  # json.dumps(float("nan")) writes NaN
        f.write(json.dumps({"k": key, "s": nan, "id": cached.identity_hash, "c": cached.check(key, nan)}) + "\n")
    message = rf"{cached.path}:4: the cached score nan of scorer 'count' .*not a finite number; delete this line"
    with pytest.raises(DataError, match=message):
        CachedScorer(CountingScorer(), tmp_path, progress=False).score(["a"], ["x"])


def test_a_tampered_or_foreign_cache_entry_is_named_and_scored_again(tmp_path, caplog):
    """Each line carries the scorer's identity hash and a checksum: an edited score, a line copied from another
    scorer's file and a line without a checksum (an older format) are never served; a warning names each."""
    cached = CachedScorer(CountingScorer(), tmp_path, progress=False)
    assert cached.score(["a", "b", "c"], ["x", "yy", "zzz"]) == [1.0, 2.0, 3.0]
    lines = cached.path.read_text(encoding="utf-8").splitlines()
    edited = json.loads(lines[1])
    assert set(edited) == {"k", "s", "id", "c"} and edited["id"] == cached.identity_hash
    edited["s"] = 0.99  # a score changed by hand (or a damaged byte)
    other = CachedScorer(CountingScorer(name="other"), tmp_path / "o", progress=False)
    other.score(["b"], ["yy"])
    foreign = json.loads(other.path.read_text(encoding="utf-8").splitlines()[1])
    foreign["k"] = json.loads(lines[2])["k"]  # another scorer's line, pasted under this scorer's key
    old = {"k": json.loads(lines[3])["k"], "s": 3.0}  # format 2: no checksum
    cached.path.write_text("\n".join([lines[0], json.dumps(edited), json.dumps(foreign), json.dumps(old)]) + "\n")
    inner = CountingScorer()
    again = CachedScorer(inner, tmp_path, progress=False)
    with caplog.at_level("WARNING"):
        assert again.score(["a", "b", "c"], ["x", "yy", "zzz"]) == [1.0, 2.0, 3.0]
    assert inner.seen == ["x", "yy", "zzz"]  # all three scored again, none served from the file
    text = caplog.text
    assert f"{cached.path}:2: the entry does not match its checksum" in text
    assert f"{cached.path}:3: an entry of another scorer" in text
    assert f"{cached.path}: 1 cache line(s) without a checksum (lines 4;" in text


def test_a_cache_line_of_another_identity_is_a_miss(tmp_path):
    """Lines written for another identity (a copied file, the old key format) are never served."""
    cached = CachedScorer(CountingScorer(), tmp_path, progress=False)
    path = cached.path
    # A file at this scorer's path, written for another identity, holding "scores" for the same texts.
    foreign_key = hashlib.sha256(json.dumps(["counting:other", "a", "x", None, None]).encode()).hexdigest()
    v1_key = hashlib.sha256(json.dumps(["a", "x", None, None]).encode()).hexdigest()  # format 1: texts only
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"identity": "counting:other", "format": CACHE_FORMAT}) + "\n"
                    + json.dumps({"k": foreign_key, "s": 99.0}) + "\n" + json.dumps({"k": v1_key, "s": 77.0}) + "\n")
    inner = CountingScorer()
    fresh = CachedScorer(inner, tmp_path, progress=False)
    assert fresh.score(["a"], ["x"]) == [1.0] and inner.seen == ["x"] and fresh.misses == 1
    assert fresh.key("a", "x", None, None) not in (foreign_key, v1_key)


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
    assert model.score(SRC, HYP) == approx32(scores)


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
    assert json.loads(lines[0]) == {"identity": "counting:count", "format": CACHE_FORMAT}


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
    # Korean follows SPEC section 6 (13a), and no longer raises for a missing MeCab.
    ko = SentenceBleuScorer().score(["a"], ["고양이를 좋아해요"], ["나는 고양이를 좋아해요"],
                                    tgt_lang="ko")
    assert ko == [
        sacrebleu.sentence_bleu("고양이를 좋아해요", ["나는 고양이를 좋아해요"], tokenize="13a").score
    ]
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
    assert paper.uses_reference is False  # known from the config, without the model
    assert build_scorer("comet22").requires_reference is True
    assert load_scorer_preset("xcomet_xxl")["use_reference"] is False
    assert build_scorer("kiwi", progress=False).progress is False


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
    with pytest.raises(ScorerConfigError, match="cannot build scorer _target_='cpo.scoring.NoSuchScorer'"):
        build_scorer({"_target_": "cpo.scoring.NoSuchScorer"})
    with pytest.raises(ScorerConfigError, match="no _target_"):
        build_scorer({"model": "x"})
    with pytest.raises(ScorerConfigError, match=r"scorers\[1\]: unknown scorer 'nope'.*does not exist.*known presets"):
        build_scorer("nope", where="scorers[1]")
    with pytest.raises(ScorerConfigError, match="not a cpo.scoring.Scorer"):
        build_scorer({"_target_": "builtins.dict"})
    with pytest.raises(ScorerConfigError, match=r"scorer\.scorers\[0\]: MeanScorer 'm': 1 weights for 2 scorers"):
        inner = {"_target_": "cpo.scoring.MeanScorer", "name": "m", "weights": [1], "scorers": ["chrf", "bleu"]}
        build_scorer({"_target_": "cpo.scoring.MeanScorer", "name": "outer", "scorers": [inner, "chrf"]})
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_scorer({"_target_": "cpo.scoring.CometScorer", "model": str(missing)})


def test_demo_qe_scorer_lives_with_the_demo():
    from cpo.demo.language import sample_sentences
    from cpo.demo.quality import DemoQualityEstimator
    from cpo.demo.scorer import DemoQEScorer

    sentences = sample_sentences(3, seed=0)
    sources = [s.source for s in sentences]
    hyps = [sentences[0].translation, sentences[1].translation + " extra", ""]
    scorer = build_scorer("demo_qe")
    assert isinstance(scorer, DemoQEScorer) and scorer.requires_reference is False
    assert scorer.name == "demo_qe" and scorer.identity == DemoQualityEstimator.identity
    assert scorer.score(sources, hyps) == DemoQualityEstimator().score(sources, hyps)
    assert scorer.score(sources, hyps)[0] > scorer.score(sources, hyps)[1]
    # The scorer layer does not import the demo.
    code = "import sys, cpo.scoring; print(sorted(m for m in sys.modules if m.startswith('cpo.demo')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_evaluate_app_with_a_local_comet_checkpoint(tiny_comet, tmp_path):
    """The Hydra evaluation app takes a COMET model by local path just like a hub name."""
    src, ref, hyp = (tmp_path / f"{k}.txt" for k in ("src", "ref", "hyp"))
    hyps = HYP[:3] + [""]  # an empty line of system output is scored as empty, not refused
    for path, lines in ((src, SRC), (ref, REF), (hyp, hyps)):
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    scorer = f"{{_target_: cpo.scoring.CometScorer, model: '{tiny_comet.qe_dir}', name: tiny_kiwi, gpus: 0}}"
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate.py"), f"src={src}", f"ref={ref}", f"hyp={hyp}",
         "src_lang=de", "tgt_lang=en", f"scorers=[{scorer}]", "progress=false", f"hydra.run.dir={out}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Predicting" not in proc.stderr  # progress=false reached COMET's bar
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    expected = CometScorer(model=str(tiny_comet.qe_dir), gpus=0, progress=False).score(SRC, hyps)
    assert metrics["tiny_kiwi"] == pytest.approx(sum(expected) / len(expected), abs=1e-5)
    assert metrics["empty"] == 1 and "empty hypotheses (scored as empty): de-en 1" in proc.stdout
