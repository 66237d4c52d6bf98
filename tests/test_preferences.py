"""Preference pairs: the selection rule, the input readers, scripts/build_preferences.py (demo data and
the real WMT'22 outputs) and scripts/convert_alma_r.py."""
from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from cpo.io import DataError
from cpo.mt.parallel import detect_format, direction_from_filename, read_parallel, read_system_outputs
from cpo.pairs.build import build_pairs
from cpo.pairs.noise import NoiseSettings, noise_text
from cpo.pairs.report import win_counts
from cpo.pairs.rule import (
    DROP_EMPTY_TEXT,
    DROP_EQUAL_SCORES,
    DROP_EQUAL_TEXTS,
    DROP_TOO_FEW,
    Candidate,
    NonFiniteScore,
    select_chosen,
    select_pair,
)

from conftest import REPO, WMT22, run_apps
WMT22_SYSTEMS = ["GPT-4-1106-preview", "ALMA-13B-LoRA", "MADLAD-10B"]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the selection rule
def test_select_pair_ties_go_to_the_first_in_order():
    c = [Candidate("ref", "a", 0.9), Candidate("gpt4", "b", 0.9), Candidate("alma", "c", 0.2)]
    sel = select_pair(c)
    assert sel.kept and sel.chosen.system == "ref" and sel.rejected.system == "alma"
    sel = select_pair([c[1], c[0], c[2]])  # another order, another winner
    assert sel.chosen.system == "gpt4"
    # argmin ties: the first of the equal minima is rejected
    sel = select_pair([Candidate("ref", "a", 0.9), Candidate("gpt4", "b", 0.1), Candidate("alma", "c", 0.1)])
    assert sel.rejected.system == "gpt4"
    assert select_chosen([Candidate("x", "a", 1.0), Candidate("y", "b", 1.0)]).system == "x"


def test_select_pair_drops_degenerate_pairs():
    assert select_pair([Candidate("a", "x", 0.5), Candidate("b", "y", 0.5)]).dropped == DROP_EQUAL_SCORES
    assert select_pair([Candidate("a", "same", 0.9), Candidate("b", " same ", 0.1)]).dropped == DROP_EQUAL_TEXTS
    assert select_pair([Candidate("a", "x", 0.5)]).dropped == DROP_TOO_FEW


def test_zero_width_texts_are_empty_and_equal_texts_compare_normalised():
    assert (select_pair([Candidate("a", "the cat\u200b", 0.9), Candidate("b", "the  cat", 0.1)]).dropped
            == DROP_EQUAL_TEXTS)
    assert (select_pair([Candidate("a", "the cat", 0.9), Candidate("b", "\u200b \u200d", 0.1)]).dropped
            == DROP_EMPTY_TEXT)
    assert select_pair([Candidate("a", "", 0.9), Candidate("b", "x", 0.1)]).dropped == DROP_EMPTY_TEXT


def test_non_finite_scores_stop_instead_of_dropping_pairs():
    """Today NaN compares false with everything, and the pair is dropped as 'equal_texts' or 'equal_scores'."""
    with pytest.raises(NonFiniteScore, match=r"system 'b' has a non-finite score \(nan\)"):
        select_pair([Candidate("a", "x", 0.5), Candidate("b", "y", float("nan"))])
    with pytest.raises(NonFiniteScore, match=r"system 'a' has a non-finite score \(inf\)"):
        select_pair([Candidate("a", "x", float("inf")), Candidate("b", "y", 0.1)])
    with pytest.raises(NonFiniteScore, match=r"source line 2: the kiwi score of system 'alma' is nan"):
        build_pairs(["s1", "s2"], {"gpt4": ["a", "b"], "alma": ["c", "d"]},
                    {"gpt4": [0.5, 0.5], "alma": [0.1, float("nan")]}, "de", "en", "kiwi")
    with pytest.raises(NonFiniteScore):
        build_pairs(["s1"], {"gpt4": ["a"], "alma": ["c"]}, {"gpt4": [0.5], "alma": [float("nan")]}, "de", "en", "kiwi",
                    negatives="noised")


def test_empty_hypotheses_are_scored_counted_and_never_a_side():
    """An empty output is a candidate like any other (scored as the scorer scores it); its pair is dropped."""
    sources = ["s1", "s2", "s3"]
    candidates = {"ref": ["r1", "r2", "r3"], "gpt4": ["g1", "", "g3"], "alma": ["a1", "a2", "\u200b"]}
    scores = {"ref": [0.5, 0.5, 0.5], "gpt4": [0.9, 0.1, 0.9], "alma": [0.1, 0.3, 0.95]}
    rows, counts = build_pairs(sources, candidates, scores, "de", "en", "q")
    # s1: gpt4 > ref > alma; s2: the empty gpt4 output scores lowest -> rejected -> dropped;
    # s3: alma's zero-width output scores highest (a broken scorer would) -> chosen -> dropped
    assert [(r["provenance"]["chosen_system"], r["provenance"]["rejected_system"]) for r in rows] == [("gpt4", "alma")]
    assert counts.dropped == {DROP_EMPTY_TEXT: 2}
    assert counts.empty_by_system == {"gpt4": 1, "alma": 1} and counts.missing_by_system == {}
    assert counts.as_dict()["empty_by_system"] == {"gpt4": 1, "alma": 1}
    # the empty outputs count against their system in the win ratio (they are scored, not skipped)
    assert win_counts(scores["gpt4"], scores["ref"])["losses"] == 1


def test_build_pairs_counts_and_provenance():
    sources = ["s1", "s2", "s3", "s4", "s5"]
    candidates = {
        "ref": ["r1", "r2", "r3", "same", "r5"],
        "gpt4": ["g1", "g2", "g3", "same", ""],  # an empty output (s5) is left out, not rejected
        "alma": ["a1", "a2", "a3", "a4", "a5"],
    }
    scores = {
        "ref": [0.9, 0.5, 0.5, 0.9, 0.3],
        "gpt4": [0.9, 0.8, 0.5, 0.1, None],
        "alma": [0.1, 0.2, 0.5, 0.9, 0.6],
    }
    components = {n: {"kiwi": [x if x is None else x + 0.1 for x in v], "mean": v} for n, v in scores.items()}
    rows, counts = build_pairs(
        sources, candidates, scores, "de", "en", "mean", references=candidates["ref"],
        scorer_identity="mean(kiwi,xcomet)/v1", components=components,
    )
    # s1: ref/gpt4 tie at the top -> ref (first); s2: gpt4 > ref > alma; s3: all equal -> dropped;
    # s4: chosen ref (first 0.9) vs rejected gpt4 "same" == ref text? no: ref "same", gpt4 "same" -> equal texts;
    # s5: gpt4 missing -> alma (0.6) over ref (0.3).
    assert [(r["provenance"]["chosen_system"], r["provenance"]["rejected_system"]) for r in rows] == [
        ("ref", "alma"), ("gpt4", "alma"), ("alma", "ref"),
    ]
    assert counts.kept == 3 and counts.dropped == {DROP_EQUAL_SCORES: 1, DROP_EQUAL_TEXTS: 1}
    assert counts.missing_by_system == {"gpt4": 1}
    assert counts.as_dict()["dropped_total"] == 2
    assert sum(counts.chosen_by_system.values()) == sum(counts.rejected_by_system.values()) == counts.kept
    prov = rows[0]["provenance"]
    assert prov["scores"] == {"ref": 0.9, "gpt4": 0.9, "alma": 0.1}
    assert prov["scorer"] == "mean" and prov["scorer_identity"] == "mean(kiwi,xcomet)/v1"
    assert prov["score_components"]["alma"] == {"kiwi": pytest.approx(0.2), "mean": 0.1}
    assert rows[2]["provenance"]["scores"] == {"ref": 0.3, "alma": 0.6}  # the missing candidate has no score
    assert rows[1]["reference"] == "r2" and rows[1]["source"] == "s2"
    from cpo.data import example_from_record

    for i, row in enumerate(rows):
        example_from_record(json.loads(json.dumps(row)), f"row {i}")
    with pytest.raises(ValueError, match="negatives"):
        build_pairs(sources, candidates, scores, "de", "en", "x", negatives="fake")


def test_noised_negatives():
    settings = NoiseSettings(drop_prob=0.2, swap_prob=0.2, seed=3)
    text = "the two red cats saw the old dog yesterday"
    a = noise_text(text, "src", settings, "en")
    assert a == noise_text(text, "src", settings, "en")  # deterministic
    assert a[0] != text and a[0].strip()
    # Probabilities 0 still give a different text (one forced edit).
    zero = NoiseSettings(0.0, 0.0, 0)
    for t in ["a b", "hello", "x x y", "猫看到了狗"]:
        out = noise_text(t, "s", zero, "zh" if "猫" in t else "en")
        assert out is not None and out[0] != t and out[1].get("forced")
    assert noise_text("a", "s", zero, "en") is None
    sources = ["s1", "s2"]
    cands = {"ref": ["the cat sleeps now", "a"], "sys": ["a cat sleeps", "b"]}
    scores = {"ref": [0.9, 0.9], "sys": [0.5, 0.1]}
    rows, counts = build_pairs(sources, cands, scores, "de", "en", "q", negatives="noised", noise=settings)
    assert len(rows) == 1 and counts.dropped == {"noise_failed": 1}  # "a" cannot be noised
    row = rows[0]
    assert row["chosen"] == "the cat sleeps now" and row["rejected"] != row["chosen"]
    assert row["provenance"]["rejected_system"] == "noised(ref)" and row["provenance"]["negatives"] == "noised"
    assert set(row["provenance"]["scores"]) == {"ref", "sys"}
    assert not any(isinstance(v, float) and math.isnan(v) for v in row["provenance"]["scores"].values())


def test_win_counts():
    w = win_counts([0.9, 0.5, 0.1, None, 0.7], [0.5, 0.5, 0.5, 0.5, None])
    assert w == {"n": 3, "wins": 1, "ties": 1, "losses": 1, "win_ratio": 1 / 3, "tie_ratio": 1 / 3}


# --------------------------------------------------------------------------- readers
def test_read_parallel_formats_and_errors(tmp_path):
    src = _write(tmp_path / "s.txt", ["Hallo Welt", "Guten Tag"])
    ref = _write(tmp_path / "r.txt", ["Hello world", "Good day"])
    d = read_parallel(src, src_lang="de", tgt_lang="en", ref=ref)
    assert d.format == "text" and d.sources == ["Hallo Welt", "Guten Tag"] and d.references[1] == "Good day"
    with pytest.raises(ValueError, match="needs src_lang"):
        read_parallel(src)
    short = _write(tmp_path / "short.txt", ["Hello world"])
    with pytest.raises(DataError, match=r"not aligned.*s\.txt has 2 lines.*short\.txt has 1 lines"):
        read_parallel(src, src_lang="de", tgt_lang="en", ref=short)
    empty = _write(tmp_path / "e.txt", ["Hallo", "  ", "x"])
    with pytest.raises(DataError, match=r"e\.txt:2: empty source line"):
        read_parallel(empty, src_lang="de", tgt_lang="en")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: not valid UTF-8"):
        read_parallel(bad, src_lang="de", tgt_lang="en")

    jl = tmp_path / "p.jsonl"
    jl.write_text(
        json.dumps({"source": "Hallo", "reference": "Hello", "src_lang": "de", "tgt_lang": "en"}) + "\n"
        + json.dumps({"source": "Tag", "reference": "Day", "src_lang": "de", "tgt_lang": "en"}) + "\n",
        encoding="utf-8")
    d = read_parallel(jl)
    assert (d.format, d.direction, d.references) == ("jsonl", "de-en", ["Hello", "Day"])
    with pytest.raises(DataError, match=r"p\.jsonl:1: field 'src_lang' is 'de' but the direction is cs-en"):
        read_parallel(jl, src_lang="cs", tgt_lang="en")
    jl2 = tmp_path / "q.jsonl"
    jl2.write_text(json.dumps({"source": "Hallo", "src_lang": "de", "tgt_lang": "en"}) + "\n"
                   + json.dumps({"src_lang": "de", "tgt_lang": "en"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"q\.jsonl:2: missing field 'source'"):
        read_parallel(jl2)
    with pytest.raises(DataError, match=r"q_1\.jsonl:1: no reference"):
        read_parallel(_first_line_only(jl2), references="required")

    alma = tmp_path / "test.cs-en.json"
    alma.write_text(json.dumps([{"translation": {"cs": "Ahoj", "en": "Hi"}}, {"translation": {"cs": "", "en": "x"}}]),
                    encoding="utf-8")
    assert detect_format(alma) == "alma_json" and direction_from_filename(alma) == ("cs", "en")
    with pytest.raises(DataError, match=r"test\.cs-en\.json:1 \(row 2\): translation: field 'cs' is empty"):
        read_parallel(alma)
    alma.write_text(json.dumps([{"translation": {"cs": "Ahoj", "en": "Hi"}}]), encoding="utf-8")
    d = read_parallel(alma, src_lang="en", tgt_lang="cs")  # the other direction of the same records
    assert (d.sources, d.references) == (["Hi"], ["Ahoj"])
    with pytest.raises(DataError, match=r"system 'gpt4' .*short\.txt has 1 lines, input .*s\.txt has 2 lines"):
        read_system_outputs(read_parallel(src, src_lang="de", tgt_lang="en"), {"gpt4": short})


def _first_line_only(path: Path) -> Path:
    out = path.with_name(path.stem + "_1.jsonl")
    out.write_text(path.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    return out


# --------------------------------------------------------------------------- the build app
def _run_all(script: str, arg_lists: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess]:
    return run_apps(script, arg_lists, cwd)


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory) -> Path:
    from cpo.demo import DEFAULT_SYSTEMS, gilded_references, sample_sentences

    root = tmp_path_factory.mktemp("demo_build")
    sentences = sample_sentences(200, seed=5)
    _write(root / "src.zb", [s.source for s in sentences])
    _write(root / "ref.en", gilded_references(sentences, 0.3, seed=5))
    for system in DEFAULT_SYSTEMS:
        _write(root / f"{system.name}.en", system.translate(sentences, seed=5))
    _write(root / "short.en", [s.translation for s in sentences[:-1]])
    return root


def _load_script(name: str):
    """A script of scripts/ imported as a module (its Hydra main is not run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_app_{Path(name).stem}", REPO / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _compose(config_name: str, *overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def _base_args(run_dir: Path) -> list[str]:
    return ["input=src.zb", "ref=ref.en", "src_lang=zb", "tgt_lang=en", "+systems.strong=strong.en",
            "+systems.weak=weak.en", f"hydra.run.dir={run_dir}", "progress=false"]


def test_build_preferences_app_demo(demo_files):
    from cpo.data import example_from_record

    cwd, t = demo_files, demo_files / "runs"
    first = _run_all("build_preferences.py", [
        [*_base_args(t / "a"), "output=out/prefs.jsonl"],
        [*_base_args(t / "b"), "output=noised/prefs.jsonl", "negatives=noised", "noise.drop_prob=0.3"],
        [*_base_args(t / "c"), "output=chrf/prefs.jsonl", "scorer=chrf"],  # reference-based + include_ref: refused
        ["input=src.zb", "ref=ref.en", "src_lang=zb", "tgt_lang=en", "+systems.strong=strong.en",
         "+systems.short=short.en", f"hydra.run.dir={t / 'd'}", "output=mis/prefs.jsonl"],
        [*_base_args(t / "e"), "output=nope/prefs.jsonl", "scorer=no_such_scorer"],
        [*_base_args(t / "f"), "output=chrf2/prefs.jsonl", "scorer=chrf", "include_ref=false"],
    ], cwd)
    ok, noised, chrf, mis, unknown, chrf_noref = first
    assert ok.returncode == 0, ok.stderr[-3000:]
    out = cwd / "out" / "prefs.jsonl"
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    examples = [example_from_record(r, f"{out}:{i}") for i, r in enumerate(rows, 1)]
    assert examples and all(e.src_lang == "zb" and e.tgt_lang == "en" and e.reference for e in examples)
    report = json.loads((cwd / "out" / "prefs.report.json").read_text(encoding="utf-8"))
    (d,) = report["directions"]
    p = d["pairs"]
    assert d["n_sources"] == 200 and p["kept"] == len(rows)
    assert p["kept"] + p["dropped_total"] == 200 and sum(p["dropped"].values()) == p["dropped_total"]
    assert sum(p["chosen_by_system"].values()) == sum(p["rejected_by_system"].values()) == p["kept"]
    assert report["candidate_order"] == ["ref", "strong", "weak"] and d["candidates"] == ["ref", "strong", "weak"]
    assert set(d["win_vs_ref"]) == {"strong", "weak"}
    w = d["win_vs_ref"]["strong"]
    assert w["wins"] + w["ties"] + w["losses"] == w["n"] == 200
    for r in rows:
        prov = r["provenance"]
        assert (set(prov["scores"]) == {"ref", "strong", "weak"}
                and prov["scorer_identity"] == report["scorer"]["identity"])
        assert prov["scores"][prov["chosen_system"]] > prov["scores"][prov["rejected_system"]]
    md = (cwd / "out" / "prefs.report.md").read_text(encoding="utf-8")
    assert "## zb-en" in md and "Win ratio against the reference" in md and "| **total** | 200 |" in md
    assert report["scorer_cache"]["misses"] > 0

    # Noised negatives: the rejected side is a noised copy of the chosen one.
    assert noised.returncode == 0, noised.stderr[-3000:]
    nrows = [json.loads(line) for line in (cwd / "noised" / "prefs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert nrows and all(r["rejected"] != r["chosen"] for r in nrows)
    assert all(r["provenance"]["rejected_system"] == f"noised({r['provenance']['chosen_system']})" for r in nrows)
    assert len(nrows) == 200  # every demo translation has several words, so none fails to noise

    assert chrf.returncode != 0 and "reference-based" in chrf.stderr and "include_ref=false" in chrf.stderr
    assert not (cwd / "chrf" / "prefs.jsonl").exists()
    assert mis.returncode != 0 and "not aligned" in mis.stderr and "short.en has 199 lines" in mis.stderr
    assert "src.zb has 200 lines" in mis.stderr
    assert unknown.returncode != 0 and "no_such_scorer" in unknown.stderr and "demo_qe" in unknown.stderr
    # A reference-based scorer without ref among the candidates ranks the systems against the reference.
    assert chrf_noref.returncode == 0, chrf_noref.stderr[-3000:]
    rep = json.loads((cwd / "chrf2" / "prefs.report.json").read_text(encoding="utf-8"))
    assert rep["candidate_order"] == ["strong", "weak"] and rep["directions"][0]["win_vs_ref"] is None
    assert "uses the reference" in rep["directions"][0]["win_vs_ref_note"]

    # Second run: refuses to overwrite; with overwrite=true every score comes from the cache.
    again = _run_all("build_preferences.py", [[*_base_args(t / "g"), "output=out/prefs.jsonl"]], cwd)[0]
    assert again.returncode != 0 and "exists; pass overwrite=true" in again.stderr
    assert out.read_text(encoding="utf-8").count("\n") == len(rows)
    over = _run_all("build_preferences.py", [[*_base_args(t / "h"), "output=out/prefs.jsonl", "overwrite=true"]],
                    cwd)[0]
    assert over.returncode == 0, over.stderr[-3000:]
    rep2 = json.loads((cwd / "out" / "prefs.report.json").read_text(encoding="utf-8"))
    assert rep2["scorer_cache"]["misses"] == 0 and rep2["totals"] == report["totals"]


def test_build_preferences_errors_in_process(demo_files, tmp_path):
    """Input errors, checked through build() with a composed config (no subprocess start-up)."""
    app = _load_script("build_preferences.py")

    def cfg(*overrides):
        return _compose("build_preferences", "progress=false", f"output={tmp_path / 'o.jsonl'}", *overrides)

    d = demo_files
    empty = _write(tmp_path / "empty_src.zb", ["brelk vidrak", ""])
    with pytest.raises(DataError, match=r"empty_src\.zb:2: empty source line"):
        app.build(cfg(f"input={empty}", f"ref={d / 'ref.en'}", "src_lang=zb", "tgt_lang=en"))
    bad = tmp_path / "bad.en"
    bad.write_bytes(open(d / "strong.en", "rb").read().replace(b"\n", b"\xff\n", 1))
    with pytest.raises(DataError, match=r"bad\.en:1: not valid UTF-8"):
        app.build(cfg(f"input={d / 'src.zb'}", f"ref={d / 'ref.en'}", "src_lang=zb", "tgt_lang=en",
                      f"+systems.bad={bad}"))
    with pytest.raises(FileNotFoundError, match=r"missing\.en"):
        app.build(cfg(f"input={d / 'src.zb'}", f"ref={d / 'ref.en'}", "src_lang=zb", "tgt_lang=en",
                      f"+systems.x={d / 'missing.en'}"))
    with pytest.raises(ValueError, match="reserved for the reference"):
        app.build(cfg(f"input={d / 'src.zb'}", f"ref={d / 'ref.en'}", "src_lang=zb", "tgt_lang=en",
                      f"+systems.ref={d / 'weak.en'}"))
    with pytest.raises(ValueError, match="exactly one input mode"):
        app.build(cfg())
    with pytest.raises(ValueError, match="at least two"):
        app.build(cfg(f"input={d / 'src.zb'}", f"ref={d / 'ref.en'}", "src_lang=zb", "tgt_lang=en", "include_ref=false",
                      f"+systems.s={d / 'strong.en'}"))
    if WMT22.is_dir():
        with pytest.raises(FileNotFoundError, match=r"NoSuchSystem: no such system \(available: .*GPT-4-1106-preview"):
            app.build(cfg(f"wmt22.root={WMT22}", "wmt22.systems=[GPT-4-1106-preview,NoSuchSystem]", "scorer=chrf",
                          "include_ref=false"))
    assert not (tmp_path / "o.jsonl").exists()

    # Several directions in one run, one combined JSONL (the same demo files under two names).
    directions = [
        f"+directions.zb-en.input={d / 'src.zb'}", f"+directions.zb-en.ref={d / 'ref.en'}",
        f"+directions.zb-en.systems.strong={d / 'strong.en'}",
        f"+directions.en-de.input={d / 'ref.en'}", f"+directions.en-de.ref={d / 'strong.en'}",
        f"+directions.en-de.systems.weak={d / 'weak.en'}",
    ]
    report = app.build(cfg(*directions, "scorer=chrf", "include_ref=false",
                           "negatives=noised", f"scorer_cache_dir={tmp_path / 'cache'}"))
    assert [x["direction"] for x in report["directions"]] == ["zb-en", "en-de"]
    rows = (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == report["totals"]["kept"] == 400
    assert {json.loads(r)["tgt_lang"] for r in rows} == {"en", "de"}

    # A composite scorer: every component's score travels in the provenance.
    from omegaconf import open_dict

    c = cfg(f"input={d / 'src.zb'}", f"ref={d / 'ref.en'}", "src_lang=zb", "tgt_lang=en", "include_ref=false",
            f"+systems.strong={d / 'strong.en'}", f"+systems.weak={d / 'weak.en'}", "overwrite=true")
    with open_dict(c):
        c.scorer = {"_target_": "cpo.scoring.MeanScorer", "name": "mix", "scorers": ["demo_qe", "chrf"]}
    report = app.build(c)
    assert report["scorer"]["name"] == "mix" and report["scorer"]["uses_reference"]
    row = json.loads((tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()[0])
    comps = row["provenance"]["score_components"]
    assert set(comps) == {"strong", "weak"} and set(comps["strong"]) == {"demo_qe", "sentence_chrf", "mix"}
    assert comps["weak"]["mix"] == pytest.approx((comps["weak"]["demo_qe"] + comps["weak"]["sentence_chrf"]) / 2)
    assert row["provenance"]["scores"]["weak"] == comps["weak"]["mix"]


# --------------------------------------------------------------------------- real WMT'22 data
@pytest.mark.slow
def test_build_preferences_wmt22_real_data(tmp_path):
    if not WMT22.is_dir():
        pytest.skip(f"shared WMT'22 data not found at {WMT22} (set CPO_SHARED_DATA)")
    t0 = time.time()
    (proc,) = _run_all("build_preferences.py", [[
        f"wmt22.root={WMT22}", f"wmt22.systems=[{','.join(WMT22_SYSTEMS)}]", "scorer=chrf", "include_ref=false",
        "output=wmt22/prefs.jsonl", f"hydra.run.dir={tmp_path / 'run'}", "progress=false",
    ]], tmp_path)
    elapsed = time.time() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "wmt22" / "prefs.report.json").read_text(encoding="utf-8"))
    md = (tmp_path / "wmt22" / "prefs.report.md").read_text(encoding="utf-8")
    from cpo.mt.evaluation import WMT22_DIRECTIONS

    assert [d["direction"] for d in report["directions"]] == list(WMT22_DIRECTIONS)
    for d in report["directions"]:
        n_src = len((WMT22 / "wmt-testset" / d["direction"].replace("-", "")
                     / f"test.{d['direction']}.{d['direction'][:2]}")
                    .read_text(encoding="utf-8").splitlines())
        p = d["pairs"]
        assert d["n_sources"] == n_src and p["kept"] + p["dropped_total"] == n_src
        assert sum(p["chosen_by_system"].values()) == p["kept"] and set(p["chosen_by_system"]) <= set(WMT22_SYSTEMS)
        assert p["kept"] > 0.9 * n_src  # three different systems rarely tie on chrF
        assert f"## {d['direction']}" in md
    assert report["n_sources"] == 17471
    # built from the evaluation test sets: one warning line (Hydra logs to stdout), kept in the report
    assert report["test_set_warning"] and proc.stdout.count("evaluation test sets") == 1
    rows = (tmp_path / "wmt22" / "prefs.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == report["totals"]["kept"]
    row = json.loads(rows[0])
    assert row["reference"] and set(row["provenance"]["scores"]) == set(WMT22_SYSTEMS)
    print(f"\nWMT'22 build (10 directions, 3 systems, chrF): {report['totals']['kept']} pairs, "
          f"dropped {report['totals']['dropped']}, build {report['run_time_s']:.1f}s, wall {elapsed:.1f}s")


# --------------------------------------------------------------------------- ALMA-R-Preference conversion
def _alma_row(pair: str, texts: dict, scores: dict, required: str = "", delta: float = 0.0) -> dict:
    a, b = pair.split("-")
    tr = {"language_pair": pair, "required_directions": required, "Delta": delta}
    for lang in (a, b):
        tr[lang] = texts[("ref", lang)]
        tr[f"gpt4_{lang}"] = texts[("gpt4", lang)]
        tr[f"alma_{lang}"] = texts[("alma", lang)]
        for system in ("ref", "gpt4", "alma"):
            kiwi, xcomet = scores[(system, lang)]
            tr[f"{system}_{lang}_kiwi"] = kiwi
            tr[f"{system}_{lang}_xcomet"] = xcomet
            tr[f"{system}_{lang}_kiwi_xcomet"] = (kiwi + xcomet) / 2
    return {"translation": tr}


@pytest.mark.slow
def test_convert_alma_r(tmp_path):
    texts = {(s, l): f"{s} text {l}" for s in ("ref", "gpt4", "alma") for l in ("de", "en")}
    s = {  # (kiwi, xcomet): kiwi prefers gpt4, xcomet prefers alma; in German everything ties
        ("ref", "en"): (0.5, 0.5), ("gpt4", "en"): (0.9, 0.1), ("alma", "en"): (0.2, 0.95),
        ("ref", "de"): (0.7, 0.7), ("gpt4", "de"): (0.7, 0.7), ("alma", "de"): (0.7, 0.7),
    }
    rows = [
        _alma_row("de-en", texts, s),                       # de->en kept, en->de all tie -> dropped
        _alma_row("de-en", texts, s, required="en-de"),      # only en->de allowed -> dropped (tie); de->en: required
        _alma_row("de-en", texts, s, delta=-1.0),            # human Delta: alma over gpt4 in both directions
    ]
    src = tmp_path / "de-en.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (kiwi,) = _run_all("convert_alma_r.py", [
        [f"source={src}", "pairs=[de-en,en-de]", "score_field=kiwi", "output=kiwi.jsonl",
         f"hydra.run.dir={tmp_path / 'r1'}"],
    ], tmp_path)
    assert kiwi.returncode == 0, kiwi.stderr[-3000:]
    from cpo.data import example_from_record

    out = [example_from_record(json.loads(l), "kiwi.jsonl")
           for l in (tmp_path / "kiwi.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(e.src_lang, e.tgt_lang, e.provenance["chosen_system"], e.provenance["rejected_system"]) for e in out] == [
        ("de", "en", "gpt4", "alma"),   # kiwi: gpt4 0.9 > ref 0.5 > alma 0.2
        ("de", "en", "alma", "gpt4"),   # row 3, Delta < 0
        ("en", "de", "alma", "gpt4"),
    ]
    assert out[0].chosen == "gpt4 text en" and out[0].source == "ref text de" and out[0].reference == "ref text en"
    assert out[0].provenance["scores"] == {"ref": 0.5, "gpt4": 0.9, "alma": 0.2}
    report = json.loads((tmp_path / "kiwi.report.json").read_text(encoding="utf-8"))
    de_en, en_de = report["directions"]["de-en"], report["directions"]["en-de"]
    assert (de_en["candidate_rows"], de_en["kept"], de_en["dropped"]) == (3, 2, {"required_directions": 1})
    assert (en_de["kept"], en_de["dropped"], en_de["human_delta"]) == (1, {"equal_scores": 2}, 1)
    assert "| de-en | 3 | 2 | 1 |" in (tmp_path / "kiwi.report.md").read_text(encoding="utf-8")

    assert "kiwi.report.md" in kiwi.stdout

    # The same app in-process: another score field, a folder as the source, errors.
    app = _load_script("convert_alma_r.py")
    rep = app.run(_compose("convert_alma_r", f"source={tmp_path}", "pairs=[de-en]", "score_field=xcomet",
                           f"output={tmp_path / 'xcomet.jsonl'}"))
    assert rep["inputs"] == [str(src)] and rep["kept"] == 2
    x = [json.loads(l) for l in (tmp_path / "xcomet.jsonl").read_text(encoding="utf-8").splitlines()]
    assert ([r["provenance"]["chosen_system"] for r in x] == ["alma", "alma"]
            and x[0]["provenance"]["rejected_system"] == "gpt4")
    with pytest.raises(ValueError, match="score_field must be one of kiwi, xcomet, kiwi_xcomet"):
        app.run(_compose("convert_alma_r", f"source={src}", "score_field=comet", f"output={tmp_path / 'bad.jsonl'}"))
    with pytest.raises(FileExistsError, match="overwrite=true"):
        app.run(_compose("convert_alma_r", f"source={src}", f"output={tmp_path / 'kiwi.jsonl'}"))
    broken = tmp_path / "broken" / "de-en.jsonl"
    broken.parent.mkdir()
    row = _alma_row("de-en", texts, s)
    del row["translation"]["gpt4_en_kiwi"]
    broken.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"de-en\.jsonl:1: missing field 'translation\.gpt4_en_kiwi'"):
        app.run(_compose("convert_alma_r", f"source={broken}", "score_field=kiwi", f"output={tmp_path / 'b.jsonl'}"))


def test_alma_r_training_and_conversion_select_the_same_pairs(tmp_path):
    """One reader and one validation: the raw set read for training and the converted file give the same pairs.

    A synthetic set with empty texts, equal texts, human Delta rows and ties, split into a JSON Lines file
    named .json (as hub exports are) and a JSON list named .jsonl: today training keeps pairs with an empty
    side and reads .json by its suffix, while the converter drops them and reads by the first byte.
    """
    import random

    from cpo.data import read_alma_r_preference, read_preference_jsonl

    rng = random.Random(7)
    langs = {"de-en": ("de", "en"), "cs-en": ("cs", "en")}
    rows = {c: [] for c in langs}
    for i in range(240):
        config = "de-en" if i % 2 else "cs-en"
        a, b = langs[config]
        texts = {}
        for lang in (a, b):
            for system in ("ref", "gpt4", "alma"):
                r = rng.random()
                texts[(system, lang)] = "" if r < 0.12 else ("\u200b" if r < 0.15 else f"{system} {lang} {i % 37}")
            if rng.random() < 0.15:  # gpt4 and alma agree word for word
                texts[("alma", lang)] = texts[("gpt4", lang)]
        scores = {(system, lang): (round(rng.random(), 1), round(rng.random(), 1))
                  for system in ("ref", "gpt4", "alma") for lang in (a, b)}
        delta = rng.choice([0.0] * 8 + [1.0, -2.0])
        required = rng.choice(["", "", "", f"{a}-{b}", f"{b}-{a}"])
        rows[config].append(_alma_row(config, texts, scores, required=required, delta=delta))
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "de-en.json").write_text("".join(json.dumps(r) + "\n" for r in rows["de-en"]), encoding="utf-8")
    (raw / "cs-en.jsonl").write_text(json.dumps(rows["cs-en"], indent=1), encoding="utf-8")
    pairs = ["de-en", "cs-en", "en-de", "en-cs"]

    trained = read_alma_r_preference(str(raw), pairs, "kiwi_xcomet")
    app = _load_script("convert_alma_r.py")
    report = app.run(_compose("convert_alma_r", f"source={raw}", "pairs=[de-en,cs-en,en-de,en-cs]",
                              f"output={tmp_path / 'converted.jsonl'}"))
    converted = read_preference_jsonl(tmp_path / "converted.jsonl")

    def key(e):
        return (e.source, e.chosen, e.rejected, e.src_lang, e.tgt_lang, e.reference, e.provenance["chosen_system"])

    assert [key(e) for e in trained] == [key(e) for e in converted]
    assert len(trained) == report["kept"] > 50
    from cpo.text import is_blank

    assert not any(is_blank(t) for e in trained for t in (e.source, e.chosen, e.rejected))
    dropped = Counter()
    for st in report["directions"].values():
        dropped.update(st["dropped"])
    assert dropped["empty_text"] > 0 and dropped["equal_texts"] > 0 and dropped["empty_source"] > 0


def test_alma_r_human_delta_with_equal_texts_is_dropped(tmp_path):
    from cpo.data import read_alma_r_preference

    texts = {(s, l): f"{s} {l}" for s in ("ref", "gpt4", "alma") for l in ("de", "en")}
    texts[("gpt4", "en")] = texts[("alma", "en")] = "Hi"
    scores = {(s, l): (0.5, 0.5) for s in ("ref", "gpt4", "alma") for l in ("de", "en")}
    f = tmp_path / "de-en.jsonl"
    f.write_text(json.dumps(_alma_row("de-en", texts, scores, delta=1.0)) + "\n", encoding="utf-8")
    ex = read_alma_r_preference(str(f), ["de-en", "en-de"], "kiwi")
    assert [(e.tgt_lang, e.chosen, e.rejected) for e in ex] == [("de", "gpt4 de", "alma de")]  # not ('Hi', 'Hi')
    row = _alma_row("de-en", texts, scores)
    row["translation"]["gpt4_en_kiwi"] = float("nan")
    f.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"de-en\.jsonl:1: field 'translation\.gpt4_en_kiwi' is nan"):
        read_alma_r_preference(str(f), ["de-en"], "kiwi")


def test_build_preferences_bad_scores_empty_outputs_and_test_sets(demo_files, tmp_path, monkeypatch, caplog):
    """Empty hypotheses are scored and counted; a NaN names its file and line; test sets are warned about."""
    from cpo.scoring import Scorer

    app = _load_script("build_preferences.py")
    d = demo_files
    lines = (d / "weak.en").read_text(encoding="utf-8").splitlines()
    holes = tmp_path / "holes.en"
    _write(holes, ["" if i in (0, 5) else t for i, t in enumerate(lines)])

    def cfg(*overrides):
        return _compose("build_preferences", "progress=false", f"output={tmp_path / 'o.jsonl'}", "scorer=chrf",
                        "include_ref=false", f"scorer_cache_dir={tmp_path / 'cache'}", f"ref={d / 'ref.en'}",
                        *overrides)

    report = app.build(cfg(f"input={d / 'src.zb'}", "src_lang=zb", "tgt_lang=en", "scorer=demo_qe",
                           f"+systems.strong={d / 'strong.en'}", f"+systems.holes={holes}"))
    (st,) = report["directions"]
    assert st["pairs"]["empty_by_system"] == {"holes": 2}
    assert st["win_vs_ref"]["holes"]["n"] == 200  # the two empty outputs are scored (chrF 0), not left out
    assert "empty hypotheses (scored as empty" in (tmp_path / "o.report.md").read_text(encoding="utf-8")
    assert report["test_set_warning"] is None

    class NanAt3(Scorer):
        name = "nan_at_3"
        uses_reference = False

        @property
        def identity(self):
            return "nan_at_3/v1"

        def _score(self, sources, hypotheses, references, tgt_lang):
            return [float("nan") if h == "a broken line" else 0.5 for h in hypotheses]

    odd = _write(tmp_path / "odd.en", [("a broken line" if i == 2 else t) for i, t in enumerate(lines)])
    monkeypatch.setattr(app, "make_scorer", lambda c, o: (NanAt3(), None))
    with pytest.raises(DataError, match=rf"{odd}:3 \(system 'odd'\): scorer 'nan_at_3' .*gave nan"):
        app.build(cfg(f"input={d / 'src.zb'}", "src_lang=zb", "tgt_lang=en", "overwrite=true",
                      f"+systems.strong={d / 'strong.en'}", f"+systems.odd={odd}"))
    monkeypatch.undo()

    # Identical systems: every pair has equal scores -> an error, not an empty file that training rejects later.
    with pytest.raises(DataError, match=r"no preference pair was kept \(dropped: equal_scores 200\)"):
        app.build(cfg(f"input={d / 'src.zb'}", "src_lang=zb", "tgt_lang=en", "overwrite=true",
                      f"+systems.a={d / 'strong.en'}", f"+systems.b={d / 'strong.en'}",
                      "output=" + str(tmp_path / "none.jsonl")))
    assert not (tmp_path / "none.jsonl").exists()

    # A WMT-style test file as input: one warning line, in the report too; allow_test_sets=true silences it.
    test_src = tmp_path / "test.zb-en.zb"
    test_src.write_bytes((d / "src.zb").read_bytes())
    with caplog.at_level(logging.WARNING, logger="build_preferences"):
        report = app.build(cfg(f"input={test_src}", "overwrite=true", f"+systems.strong={d / 'strong.en'}",
                               f"+systems.weak={d / 'weak.en'}"))
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "build_preferences" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "evaluation test sets" in warnings[0] and "FLORES-200" in warnings[0]
    assert "allow_test_sets=true" in warnings[0] and report["test_set_warning"] == warnings[0]
    assert "**warning**" in (tmp_path / "o.report.md").read_text(encoding="utf-8")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="build_preferences"):
        report = app.build(cfg(f"input={test_src}", "overwrite=true", "allow_test_sets=true",
                               f"+systems.strong={d / 'strong.en'}", f"+systems.weak={d / 'weak.en'}"))
    assert report["test_set_warning"] is None and not [r for r in caplog.records if r.name == "build_preferences"
                                                        and r.levelno == logging.WARNING]
