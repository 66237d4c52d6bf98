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
