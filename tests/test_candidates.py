"""Pairs from many candidates (SPEC section 9): the rule over N samples against hand computations, the
multi-candidate file, and scripts/build_preferences.py with samples beside the reference and named systems."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from cpo.io import DataError
from cpo.mt.candidates import candidate_row, check_aligned, duplicate_marks, read_candidates
from cpo.pairs.build import build_pairs
from cpo.pairs.rule import (DROP_EMPTY_TEXT, DROP_EQUAL_SCORES, DROP_EQUAL_TEXTS, DROP_REPEATED, DROP_SMALL_GAP,
                            DROP_TOO_FEW, Candidate, select_pair, select_pairs)


def _ids(selections):
    return [(s.chosen.id if s.chosen else None, s.rejected.id if s.rejected else None, s.dropped) for s in selections]


# --------------------------------------------------------------------------- the rule over N candidates
def test_many_candidates_by_hand():
    """ref 0.6 | s#0 0.9 | s#1 0.9 (ties with s#0, which wins) | s#2 repeats ref | s#3 empty, 0.0 | s#4 0.3."""
    cands = [
        Candidate("ref", "r", 0.6),
        Candidate("s", "a", 0.9, sample=0),
        Candidate("s", "b", 0.9, sample=1),
        Candidate("s", " r ", 0.6, sample=2, duplicate=True),  # repeats the reference: left out
        Candidate("s", "", 0.0, sample=3),                     # empty: the worst, its pair is dropped
        Candidate("s", "c", 0.3, sample=4),
    ]
    # k = 1: best s#0 (first of the 0.9 tie), worst s#3 (empty) -> dropped as the paper's rule drops it.
    assert _ids(select_pairs(cands)) == [("s#0", "s#3", DROP_EMPTY_TEXT)]
    # k = 3: the three lowest others in ascending order: s#3 (0.0), s#4 (0.3), ref (0.6); s#2 is a duplicate.
    assert _ids(select_pairs(cands, pairs_per_source=3)) == [
        ("s#0", "s#3", DROP_EMPTY_TEXT), ("s#0", "s#4", None), ("s#0", "ref", None)]
    # k = 5 reaches s#1, which ties with the best: dropped for equal scores; only 4 other live candidates exist.
    assert _ids(select_pairs(cands, pairs_per_source=5))[-1] == ("s#0", "s#1", DROP_EQUAL_SCORES)
    assert len(select_pairs(cands, pairs_per_source=5)) == 4
    # min gap 0.5: 0.9 - 0.3 = 0.6 passes, 0.9 - 0.6 = 0.3 does not.
    assert _ids(select_pairs(cands, pairs_per_source=3, min_gap=0.5)) == [
        ("s#0", "s#3", DROP_EMPTY_TEXT), ("s#0", "s#4", None), ("s#0", "ref", DROP_SMALL_GAP)]
    # Duplicates only: nothing to pair.
    assert _ids(select_pairs([cands[0], cands[3]])) == [(None, None, DROP_TOO_FEW)]


def test_rejected_ties_go_to_the_first_in_order_and_repeated_texts_are_one_pair():
    cands = [Candidate("ref", "best", 1.0), Candidate("a", "x", 0.2), Candidate("b", "x", 0.2),
             Candidate("c", "y", 0.2)]
    assert _ids(select_pairs(cands, pairs_per_source=3)) == [
        ("ref", "a", None), ("ref", "b", DROP_REPEATED), ("ref", "c", None)]
    same_text = [Candidate("ref", "t", 1.0), Candidate("a", " t", 0.5)]
    assert _ids(select_pairs(same_text)) == [("ref", "a", DROP_EQUAL_TEXTS)]
    with pytest.raises(ValueError, match="pairs_per_source"):
        select_pairs(cands, pairs_per_source=0)
    with pytest.raises(ValueError, match="min_gap"):
        select_pairs(cands, min_gap=float("nan"))


def test_one_pair_per_source_is_the_papers_rule():
    """Without duplicates and with k = 1, the same pair and the same reason as select_pair, on random cases."""
    rng = random.Random(0)
    for _ in range(2000):
        n = rng.randint(1, 6)
        cands = [Candidate(f"s{i}", rng.choice(["a", "b", "c", "", " a"]), rng.choice([0.1, 0.5, 0.9]))
                 for i in range(n)]
        (sel,) = select_pairs(cands)
        ref = select_pair(cands)
        assert sel.dropped == ref.dropped
        if ref.kept:
            assert (sel.chosen, sel.rejected) == (ref.chosen, ref.rejected)


def test_build_pairs_over_samples_by_hand():
    sources = ["s1", "s2", "s3"]
    candidates = {"ref": ["r1", "r2", "r3"], "gpt4": ["g1", "g2", "g3"]}
    scores = {"ref": [0.5, 0.5, 0.5], "gpt4": [0.6, 0.4, 0.5]}
    samples = {"pol": [["p", "g1", "q"], ["", "u", "u"], ["v", "w"]]}
    sample_scores = {"pol": [[0.9, 0.6, 0.1], [0.0, 0.7, 0.7], [0.52, 0.48]]}
    rows, counts = build_pairs(sources, candidates, scores, "de", "en", "q", samples=samples,
                               sample_scores=sample_scores, min_gap=0.05)
    # s1: pol#1 repeats gpt4's text (duplicate); best pol#0 0.9, worst pol#2 0.1.
    # s2: pol#2 repeats pol#1; best pol#1 0.7 vs worst pol#0 '' -> empty_text, no pair.
    # s3: best pol#0 0.52 vs worst pol#1 0.48: gap 0.04 < 0.05 -> score_gap_below_min.
    assert [(r["provenance"]["chosen_sample"], r["provenance"]["rejected_sample"]) for r in rows] == [(0, 2)]
    prov = rows[0]["provenance"]
    assert prov["scores"] == {"ref": 0.5, "gpt4": 0.6, "pol#0": 0.9, "pol#1": 0.6, "pol#2": 0.1}
    assert prov["duplicates"] == ["pol#1"] and prov["chosen_system"] == prov["rejected_system"] == "pol"
    assert counts.dropped == {DROP_EMPTY_TEXT: 1, DROP_SMALL_GAP: 1}
    d = counts.as_dict()
    assert d["duplicates_by_system"] == {"pol": 2} and d["empty_by_system"] == {"pol": 1}
    assert d["sources"] == 3 and d["sources_with_pairs"] == 1
    assert d["candidates_per_source"] == {"min": 4, "mean": pytest.approx(14 / 3, abs=1e-4), "max": 5,
                                          "histogram": {"4": 1, "5": 2}}
    assert d["chosen_by_kind"] == {"samples": 1} and d["rejected_by_kind"] == {"samples": 1}
    # Two pairs per source: s1 also pairs with ref (0.5) -- gpt4's 0.6 is the duplicate's text, ties after it.
    rows, counts = build_pairs(sources, candidates, scores, "de", "en", "q", samples=samples,
                               sample_scores=sample_scores, pairs_per_source=2)
    s1 = [(r["provenance"]["rejected_system"], r["provenance"]["rejected_rank"]) for r in rows if r["source"] == "s1"]
    assert s1 == [("pol", 1), ("ref", 2)]
    assert counts.as_dict()["rejected_by_kind"]["reference"] >= 1


def test_build_pairs_refuses_misaligned_samples():
    with pytest.raises(ValueError, match="2 candidates, 1 scores"):
        build_pairs(["s"], {}, {}, "de", "en", "q", samples={"p": [["a", "b"]]}, sample_scores={"p": [[0.1]]})
    with pytest.raises(ValueError, match="both a single-output and a multi-candidate"):
        build_pairs(["s"], {"p": ["a"]}, {"p": [0.1]}, "de", "en", "q", samples={"p": [["a"]]},
                    sample_scores={"p": [[0.1]]})


# --------------------------------------------------------------------------- the multi-candidate file
def test_candidate_file_round_trip_and_alignment(tmp_path):
    assert duplicate_marks(["a b", "c", "a  b", "", "\u200b"]) == [None, None, 0, None, 3]
    path = tmp_path / "c.jsonl"
    rows = [candidate_row("s1", "de", "en", ["a", "a"], logprobs=[-1.0, -1.0]),
            candidate_row("s2", "de", "en", ["b", ""], logprobs=[-2.0, -0.5])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cs = read_candidates(path)
    assert cs.candidates == [["a", "a"], ["b", ""]] and cs.logprobs == [[-1.0, -1.0], [-2.0, -0.5]]
    assert (cs.n_candidates, cs.n_duplicates, cs.n_empty) == (4, 1, 1)
    check_aligned(cs, ["s1", "s2"], "de", "en", "samples.p")
    with pytest.raises(DataError, match=r"c.jsonl:2 is a candidate row for source 's2', but source 2"):
        check_aligned(cs, ["s1", "other"], "de", "en", "samples.p")
    with pytest.raises(DataError, match="has 2 rows, the input has 3"):
        check_aligned(cs, ["s1", "s2", "s3"], "de", "en", "samples.p")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"source": "s", "src_lang": "de", "tgt_lang": "en", "candidates": []}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'candidates' must be a non-empty list"):
        read_candidates(bad)


# --------------------------------------------------------------------------- the app
def _app(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "build_preferences.py"), *args, "progress=false"],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def inputs(tmp_path) -> Path:
    src = [f"source {i}" for i in range(4)]
    (tmp_path / "in.jsonl").write_text("".join(
        json.dumps({"source": s, "reference": f"the cat sat on mat {i}", "src_lang": "de", "tgt_lang": "en"}) + "\n"
        for i, s in enumerate(src)))
    (tmp_path / "sys.en").write_text("".join(f"the cat sat {i}\n" for i in range(4)))
    samples = [["the cat sat on mat 0", "a dog", "the cat", "a dog"], ["x", "the cat sat on mat 1", "", "y"],
               ["the cat sat on mat 2", "the cat sat on mat 2"], ["q"]]
    (tmp_path / "pol.jsonl").write_text("".join(
        json.dumps(candidate_row(s, "de", "en", c)) + "\n" for s, c in zip(src, samples)))
    return tmp_path


def test_the_app_builds_pairs_from_samples_and_reuses_its_score_cache(inputs):
    """Samples + a named system, ranked by reference chrF (so the reference is not a candidate here)."""
    out = inputs / "prefs.jsonl"
    args = [f"input={inputs / 'in.jsonl'}", f"systems={{gpt4: {inputs / 'sys.en'}}}",
            f"samples={{pol: {inputs / 'pol.jsonl'}}}", "scorer=chrf", "include_ref=false", f"output={out}"]
    p = _app(*args)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    report = json.loads((inputs / "prefs.report.json").read_text())
    t = report["totals"]
    # source 3: gpt4 and one sample; source 2: the second sample repeats the first.
    assert t["duplicates_by_system"] == {"pol": 2} and t["empty_by_system"] == {"pol": 1}
    assert t["candidates_per_source"]["histogram"] == {"2": 1, "3": 1, "5": 2}
    assert t["kept"] == len(rows) and sum(t["chosen_by_kind"].values()) == len(rows)
    # The sample that equals the reference wins sources 0, 1 and 2.
    assert [r["chosen"] for r in rows[:3]] == [f"the cat sat on mat {i}" for i in range(3)]
    assert report["scorer_cache"]["misses"] > 0
    md = (inputs / "prefs.report.md").read_text()
    assert "## Candidates per source and where the pairs come from" in md and "| chosen |" in md
    # A re-run scores nothing again (same texts, same scorer identity).
    p = _app(*args, "overwrite=true")
    assert p.returncode == 0, p.stderr[-2000:]
    again = json.loads((inputs / "prefs.report.json").read_text())["scorer_cache"]
    assert again["misses"] == 0 and again["hits"] > 0
    assert [json.loads(x) for x in out.read_text().splitlines()] == rows


def test_the_app_refuses_candidates_of_other_sources(inputs):
    rows = [json.loads(x) for x in (inputs / "pol.jsonl").read_text().splitlines()]
    rows[1]["source"] = "another sentence"
    (inputs / "pol.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = _app(f"input={inputs / 'in.jsonl'}", f"samples={{pol: {inputs / 'pol.jsonl'}}}", "scorer=chrf",
             "include_ref=false", f"output={inputs / 'o.jsonl'}")
    err = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert p.returncode == 2 and len(err) == 1 and "pol.jsonl:2 is a candidate row for source" in err[0], p.stderr
    assert not (inputs / "o.jsonl").exists()
    p = _app(f"input={inputs / 'in.jsonl'}", f"samples={{pol: {inputs / 'pol.jsonl'}}}", "pairs_per_source=0",
             f"output={inputs / 'o.jsonl'}")
    assert p.returncode == 2 and "pairs_per_source=0 must be a positive integer" in p.stderr
