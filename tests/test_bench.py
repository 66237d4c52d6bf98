"""The throughput benchmark (cpo/bench/, scripts/bench.py) on tiny models: output, TRL equality, FLOPs, lengths,
LoRA."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cpo import bench

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


def _script():
    spec = importlib.util.spec_from_file_location("bench_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def run():
    """One short run: tiny model, 1 measured repetition of 2 steps, TRL alongside when importable."""
    import io
    from contextlib import redirect_stdout

    argv = ["--model", "tiny", "--reps", "1", "--warmup", "1", "--steps", "2", "--batch-size", "4", "--memory", "off",
            "--levers", "--chunk-tokens", "5", "null"]
    if bench.trl_available():
        argv += ["--against", "trl"]
    out = io.StringIO()
    with redirect_stdout(out):
        summary = _script().main(argv)
    return summary, out.getvalue()


def test_output_structure_and_json_last_line(run):
    summary, text = run
    last = text.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(summary, default=str))
    assert summary["matmul_peak_flops"] > 0
    res = summary["models"]["tiny"]["results"]
    for name in bench.LOSSES:
        r = res[name]
        for key in ("pairs_per_s_median", "pairs_per_s_max", "completion_tokens_per_s_median", "step_s_min",
                    "flops_per_s_median", "peak_share_median", "activation_mb"):
            assert r[key] > 0, (name, key)
        assert 0 <= r["padding_share"] < 1
        assert r["step_s_min"] <= r["step_s_median"]
    assert res["dpo_cached"]["ref_cache_s"] > 0
    ratios = summary["models"]["tiny"]["ratios"]
    assert ratios["cpo_step_over_dpo_live_median"] > 0
    levers = summary["models"]["tiny"]["levers"]
    assert levers["group_by_length_padding_share"]["grouped"] <= levers["group_by_length_padding_share"]["random"]
    assert "== model tiny" in text


def test_first_batch_loss_equals_trl(run):
    if not bench.trl_available():
        pytest.skip("trl not importable")
    summary, _ = run
    m = summary["models"]["tiny"]
    assert m["trl_tokens"]["identical_ids"] == m["trl_tokens"]["pairs"]
    first = m["trl_first_batch"]
    assert first["loss_abs_diff"] < 1e-4, first
    assert first["logps_max_abs_diff"] < 1e-3, first
    # With chunking on (chunks of 5 tokens) too, and on the full logits: TRL's loss, on the same first batch.
    by_impl = m["trl_first_batch_by_impl"]
    assert by_impl["cpo[chunk_tokens=5]"]["chunk_tokens"] == 5
    assert by_impl["cpo[chunk_tokens=null]"]["chunk_tokens"] is None
    for name, t in by_impl.items():
        assert t["loss_abs_diff"] < 1e-4 and t["logps_max_abs_diff"] < 1e-3, (name, t)
    assert m["results"]["cpo[chunk_tokens=5]"]["pairs_per_s_median"] > 0
    assert m["ratios"]["cpo_pairs_per_s_over_full_logits_median"] > 0
    assert m["results"]["trl_cpo"]["pairs_per_s_median"] > 0
    assert m["ratios"]["cpo_pairs_per_s_over_trl_median"] > 0


def test_memory_probe_in_process():
    cfg = dict(model="tiny", impl="cpo", batch_size=4, steps=1, lr=1e-5, threads=1, seed=0, fused=True,
               variant={"name": "cpo", "loss": "cpo"})
    m = bench.memory_probe(cfg)
    assert m["peak_rss_mb"] > 0 and m["step_rss_mb"] >= 0
    # LoRA on a shared frozen base (the large-vocabulary benchmark's setting), the chunked log-probs.
    cfg.update(lora_r=4, vocab_size=2000, variant={"name": "cpo[chunk_tokens=16]", "loss": "cpo", "chunk_tokens": 16})
    m = bench.memory_probe(cfg)
    assert m["peak_rss_mb"] > 0 and m["step_rss_mb"] >= 0


def test_large_vocab_targets_follow_the_issue():
    from cpo.bench.report import large_vocab_targets

    def got(vocab, batch, mem):
        res = {"vocab": vocab, "batch_size": batch, "ratios": {"cpo_step_rss_over_trl": mem,
               "cpo_pairs_per_s_over_full_logits_median": 0.95, "cpo_pairs_per_s_over_trl_median": 1.4}}
        return {t["target"]: t["met"] for t in large_vocab_targets(res)}

    assert got(32000, 8, 0.1) == {}  # no target below the chunking threshold
    assert got(128256, 8, 0.29) == {"step memory <= 0.3x TRL's": True, "pairs/s >= 0.9x the full logits'": True,
                                    "pairs/s >= 1.5x TRL's": False}
    assert got(262144, 8, 0.29)["step memory <= 0.25x TRL's"] is False
    assert got(262144, 2, 0.59)["step memory <= 0.6x TRL's"] is True


def test_flop_accounting():
    spec = bench.MODELS["tiny"]
    d, f, L = spec.hidden, spec.ffn, spec.layers
    per_token = L * (2 * d * d + 2 * d * spec.kv_heads * (d // spec.heads) + 3 * d * f)
    # Linear part of a training step is 6 N T; the LM head adds 6 d V per position that runs it.
    assert bench._seg_flops(spec, 100, 0, 1, 0, True) == pytest.approx(6 * per_token + 3 * 4 * d * L)
    assert bench._seg_flops(spec, 100, 0, 1, 1, False) - bench._seg_flops(spec, 100, 0, 1, 0, False) == 2 * d * 100
    wl = bench.make_workload(4, 1)
    b = wl.collate(range(4))
    shared = bench.ours_work(spec, 100, b, ["chosen", "rejected"], True, True, True)
    concat = bench.ours_work(spec, 100, b, ["chosen", "rejected"], False, True, True)
    assert shared.flops < concat.flops and shared.real < concat.real
    assert (shared.completion_tokens == concat.completion_tokens
            == int(b["chosen_mask"].sum() + b["rejected_mask"].sum()))


def test_prompt_sharing_routes_match_the_concatenated_forward():
    """The two shared-prompt forwards the levers measure give the concatenated forward's values and gradients."""
    import copy

    import torch

    from cpo.train.logprobs import completion_logps, completion_logps_packed, completion_logps_shared_prompt

    wl = bench.make_workload(4, 1)
    model = bench.build_model(wl.tok, "tiny")
    b = wl.collate(range(4))
    sides = [(b["chosen_ids"], b["chosen_mask"]), (b["rejected_ids"], b["rejected_mask"])]
    got = []
    for fn in (completion_logps, completion_logps_shared_prompt, completion_logps_packed):
        m = copy.deepcopy(model)
        c, r = fn(m, b["prompt_ids"], b["prompt_mask"], sides, wl.pad_id)
        (-(c.sum - 0.5 * r.sum).sum()).backward()
        got.append((torch.cat([c.sum, r.sum]).detach(), torch.cat([p.grad.flatten() for p in m.parameters()])))
    for vals, grads in got[1:]:
        assert torch.allclose(vals, got[0][0], atol=1e-4)
        assert (grads - got[0][1]).norm() / got[0][1].norm() < 1e-4


def test_lora_flops_count_no_weight_gradient_for_the_frozen_base():
    spec = bench.MODELS["tiny"]
    d, L, V, n = spec.hidden, spec.layers, 100, 7
    per_layer = 2 * d * d + 2 * d * spec.kv_heads * (d // spec.heads) + 3 * d * spec.ffn
    full = bench.seg_flops(spec, V, 0, n, n, True)
    lora = bench.Lora(r=4, targets=("down_proj",), inputs_require_grad=True)
    adapters = 2 * 4 * (spec.ffn + d) * L * n
    # Same work, minus the weight gradients of every frozen matrix (2 N per token, LM head included), plus the adapters.
    expected = full - 2 * per_layer * L * n - 2 * d * V * n + 3 * adapters
    assert bench.seg_flops(spec, V, 0, n, n, True, lora) == pytest.approx(expected)
    # Without gradients into the inputs, nothing below the first layer's down_proj is differentiated.
    lower = bench.Lora(r=4, targets=("down_proj",))
    attn = 4 * d * n * (n + 1) / 2
    skipped = bench.seg_flops(spec, V, 0, n, n, True, lora) - bench.seg_flops(spec, V, 0, n, n, True, lower)
    assert skipped == pytest.approx(2 * per_layer * n + 2 * attn)
    assert bench.seg_flops(spec, V, 0, n, n, False, lora) == bench.seg_flops(spec, V, 0, n, n, False)


def test_alma_r_lengths_are_built_exactly_and_within_the_bounds():
    from cpo.bench.lengths import MAX_PROMPT, MAX_TOTAL, SOURCE_TOKENS, draw_lengths

    wl = bench.make_workload(2, 30, seed=3, lengths="alma_r")
    source_ids = wl.tok(" " + wl.examples[0].source, add_special_tokens=False)["input_ids"]
    enc_overhead = len(wl.pairs[0].prompt_ids) - len(source_ids)
    drawn = draw_lengths(60, 3, enc_overhead)
    got = [(len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)) for p in wl.pairs]
    assert got == drawn  # every pair has exactly the drawn token counts
    assert all(p <= MAX_PROMPT and p + max(c, r) <= MAX_TOTAL for p, c, r in got)
    sources = sorted(p - enc_overhead for p, _, _ in got)
    assert SOURCE_TOKENS[4] <= sources[len(sources) // 2] <= SOURCE_TOKENS[16]  # median of 60 draws in the 20-80% band
    worst = bench.make_workload(2, 1, seed=0, lengths="alma_r_max")
    assert [(len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)) for p in worst.pairs] == [(256, 256, 256)] * 2


def test_shared_lora_base_each_implementation_trains_its_own_adapter():
    import torch

    wl = bench.make_workload(2, 2, seed=0, lengths="alma_r")
    base = bench.build_model(wl.tok, "tiny", vocab_size=512)
    frozen = {n: p.detach().clone() for n, p in base.named_parameters()}
    policies = bench.SharedLora(base, bench.Lora(r=4))
    spec = bench.MODELS["tiny"]
    impls = [bench.OursImpl(bench.Variant(name, loss, packed=True), policies, wl, spec, 1e-2, "cpu")
             for name, loss in (("cpo", "cpo"), ("dpo_live", "dpo_live"), ("cpo[concat]", "cpo"))]
    start = [{n: p.detach().clone() for n, p in zip(range(len(i.params)), i.params)} for i in impls]
    assert all(torch.equal(start[0][k], start[1][k]) for k in start[0])  # same initial adapter weights
    impls[0].run_chunk()
    impls[1].run_chunk()
    changed = [any(not torch.equal(p, start[j][k]) for k, p in enumerate(i.params)) for j, i in enumerate(impls)]
    assert changed == [True, True, False]  # the one not run kept its initial weights
    assert all(torch.equal(p, frozen[n.replace("base_model.model.", "").replace(".base_layer", "")])
               for n, p in policies.model.named_parameters() if "lora_" not in n)  # the base never moves
