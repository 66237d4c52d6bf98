"""N candidates per source (cpo.mt.sampling): seeded sampling, returned beams, log-probs, on a tiny local Llama."""
from __future__ import annotations

import math

import pytest
import torch

from cpo.mt.generation import translate
from cpo.mt.sampling import CandidateSettings, GenerationStats, SeededSampling, generate_candidates, sequence_logprobs

SOURCES = [f"the cat number {i} sees {i * 7} dogs today" for i in range(9)]


def _gen(tok, model, settings, sources=SOURCES, **kw):
    kw = {"batch_size": 4, "max_new_tokens": 8, **kw}
    return generate_candidates(model, tok, sources, "de", "en", settings, **kw)


def test_samples_are_reproducible_under_a_seed_whatever_the_batch(tiny_tok_model):
    tok, model = tiny_tok_model
    s = CandidateSettings(num_samples=3, num_return_beams=0, temperature=1.5, seed=7)
    a = _gen(tok, model, s, batch_size=4)
    b = _gen(tok, model, s, sources=SOURCES[::-1], batch_size=2)[::-1]  # other order, other batches
    c = _gen(tok, model, s, sources=SOURCES[2:5], batch_size=1)         # other companions in the file
    assert [x["candidates"] for x in a] == [x["candidates"] for x in b]
    assert [x["candidates"] for x in a[2:5]] == [x["candidates"] for x in c]
    d = _gen(tok, model, CandidateSettings(num_samples=3, num_return_beams=0, temperature=1.5, seed=8))
    assert [x["candidates"] for x in a] != [x["candidates"] for x in d]  # another seed, other samples
    # within a source the samples differ from one another (a random model at temperature 1.5)
    assert any(len(set(x["candidates"])) > 1 for x in a)


def test_n_candidates_per_source_beams_first_then_samples(tiny_tok_model):
    tok, model = tiny_tok_model
    s = CandidateSettings(num_samples=4, num_return_beams=2, num_beams=3, seed=1)
    stats = GenerationStats()
    out = _gen(tok, model, s, logprobs=True, stats=stats)
    assert all(len(x["candidates"]) == 6 and len(x["logprobs"]) == 6 for x in out)
    assert out[0]["origins"] == ["beam", "beam", "sample", "sample", "sample", "sample"]
    assert (stats.sources, stats.candidates) == (9, 54) and stats.candidates_per_s > 0
    # the first returned beam is plain beam search's output
    assert [x["candidates"][0] for x in out] == translate(model, tok, SOURCES, "de", "en", batch_size=4, num_beams=3,
                                                         max_new_tokens=8)
    # beams come in rank order: the first has the highest length-normalised score, so here no lower log-prob
    # than the second in most rows (ties in length); samples are not ranked.
    assert sum(x["logprobs"][0] >= x["logprobs"][1] - 1e-4 for x in out) >= 6


def test_top_k_1_is_greedy(tiny_tok_model):
    tok, model = tiny_tok_model
    greedy = translate(model, tok, SOURCES, "de", "en", batch_size=4, num_beams=1, max_new_tokens=8)
    s = CandidateSettings(num_samples=2, num_return_beams=0, top_k=1, seed=3)
    assert [x["candidates"] for x in _gen(tok, model, s)] == [[g, g] for g in greedy]


def test_the_gumbel_draw_follows_the_filtered_softmax():
    """20000 draws of one row of logits: frequencies = softmax(logits / T) after top-k / top-p (within 0.015)."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    for temperature, top_k, top_p in ((1.0, 0, 1.0), (0.7, 3, 1.0), (1.3, 0, 0.8)):
        gens = [torch.Generator().manual_seed(i) for i in range(20000)]
        proc = SeededSampling(gens, temperature, top_k, top_p)
        drawn = proc(None, logits.repeat(len(gens), 1)).argmax(-1)
        freq = torch.bincount(drawn, minlength=6).float() / len(gens)
        expected = torch.softmax(proc.filtered(logits)[0], -1)
        assert torch.allclose(freq, expected, atol=0.015), (temperature, top_k, top_p, freq, expected)


def test_filters_match_transformers_warpers():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    scores = torch.randn(5, 50)
    for t, k, p in ((0.8, 7, 1.0), (1.0, 0, 0.9), (1.2, 10, 0.5)):
        ours = SeededSampling([], t, k, p).filtered(scores)
        theirs = TemperatureLogitsWarper(t)(None, scores.clone())
        theirs = TopKLogitsWarper(k)(None, theirs) if k else theirs
        theirs = TopPLogitsWarper(p)(None, theirs) if p < 1 else theirs
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
        assert torch.allclose(ours[~torch.isinf(ours)], theirs[~torch.isinf(theirs)], atol=1e-6)


def test_logprobs_are_the_models_own(tiny_tok_model):
    """The teacher-forced log-prob of each candidate equals a per-sequence forward without padding."""
    tok, model = tiny_tok_model
    prompts = [[tok.bos_token_id] + tok("a b c", add_special_tokens=False)["input_ids"], [tok.bos_token_id, 5]]
    completions = [[7, 8, tok.eos_token_id], [9]]
    got = sequence_logprobs(model, prompts, completions, tok.pad_token_id)
    for p, c, g in zip(prompts, completions, got):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + c])).logits.float()
        logp = torch.log_softmax(logits[0, :-1], -1)
        want = sum(float(logp[len(p) - 1 + i, t]) for i, t in enumerate(c))
        assert math.isclose(g, want, rel_tol=1e-5, abs_tol=1e-4)


@pytest.mark.parametrize("bad", [dict(num_samples=0, num_return_beams=0), dict(num_return_beams=3, num_beams=2),
                                 dict(temperature=0.0), dict(top_p=0.0), dict(top_k=-1)])
def test_settings_are_checked(bad):
    with pytest.raises(ValueError):
        CandidateSettings(**bad)


def test_generate_app_writes_n_candidates_per_source(tiny_tok_model, tmp_path, monkeypatch):
    """scripts/generate.py num_samples=3 num_return_beams=1 (its run(), in this process): a JSONL row per source
    with 4 candidates in order and their log-probs; the same seed gives the same file with another batch size; one
    candidate stays a text file."""
    import importlib.util
    import json
    import sys

    from hydra import compose, initialize_config_dir

    from conftest import REPO
    from cpo.mt.candidates import read_candidates
    from cpo.train.tiny import save_model_and_tokenizer

    spec = importlib.util.spec_from_file_location("_app_generate_n", REPO / "scripts" / "generate.py")
    app = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = app
    spec.loader.exec_module(app)
    tok, model = tiny_tok_model
    save_model_and_tokenizer(model, tok, tmp_path / "model")
    (tmp_path / "src.jsonl").write_text("".join(
        json.dumps({"source": s, "src_lang": "de", "tgt_lang": "en"}) + "\n" for s in SOURCES))
    monkeypatch.chdir(tmp_path)
    common = ["model=model", "input=src.jsonl", "max_new_tokens=6", "num_beams=2", "progress=false",
              "sampling.temperature=1.5", "sampling.seed=5", "logprobs=true"]

    def gen(*extra):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            return app.run(compose("generate", overrides=app.rewrite_model_argument(common + list(extra))))

    out = gen("output=a.jsonl", "num_samples=3", "batch_size=4")
    assert (out["n"], out["candidates"], out["directions"][0]["candidates"]) == (9, 36, 36)
    gen("output=b.jsonl", "num_samples=3", "batch_size=3")
    cs = read_candidates(tmp_path / "a.jsonl")
    assert cs.sources == SOURCES and all(len(c) == 4 for c in cs.candidates) and len(cs.logprobs[0]) == 4
    rows = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert rows[0]["origins"] == ["beam", "sample", "sample", "sample"] and len(rows[0]["duplicate_of"]) == 4
    assert read_candidates(tmp_path / "b.jsonl").candidates == cs.candidates
    gen("output=one.txt", "num_samples=1", "num_return_beams=0", "logprobs=false")
    assert (tmp_path / "one.txt").read_text().splitlines() == [c[1] for c in cs.candidates]  # sample 0 of seed 5
    with pytest.raises(ValueError, match="sampling settings: temperature must be > 0"):
        gen("output=c.jsonl", "num_samples=2", "sampling.temperature=0")


def test_the_generation_benchmark_measures_candidates_per_second():
    from cpo.bench import run_candidates_bench

    lines = []
    out = run_candidates_bench(["demo"], threads=1, n_sentences=4, ns=(1, 2), batch_size=2, max_new_tokens=3, reps=1,
                               log=lines.append)
    res = out["models"]["demo"]
    for n in (1, 2):
        assert res[n]["sent_per_s_median"] > 0
        assert res[n]["cand_per_s_median"] == pytest.approx(n * res[n]["sent_per_s_median"], rel=1e-6)
    assert any("N=2 sampled per source" in line and "candidates/s" in line for line in lines)
