"""Token-chunked log-probs (cpo/train/chunked_logps.py) against the full logits: values, gradients, every forward,
chunk sizes, LoRA and full fine-tuning, tied embeddings, logit transforms (Gemma 2's soft-capping), bf16 autocast,
the fallback, and that no full-logit tensor is formed on the training path."""
from __future__ import annotations

import copy

import pytest
import torch

from cpo.train.chunked_logps import AUTO_CHUNK_LOGITS, AUTO_MIN_VOCAB, LogpsSettings, chunked_head
from cpo.train.logprobs import completion_logps, completion_logps_packed, completion_logps_shared_prompt

FORWARDS = {"concat": completion_logps, "kv_cache": completion_logps_shared_prompt, "packed": completion_logps_packed}
VOCAB = 1500  # the tokenizer's ids plus padding rows, so that the projection is wider than the hidden size


@pytest.fixture(scope="module")
def workload():
    from cpo.bench import build_model, make_workload

    wl = make_workload(4, 1, seed=1, lengths="alma_r")
    return wl, build_model(wl.tok, "tiny", vocab_size=VOCAB), wl.collate(range(4))


def _sides(b):
    return [(b["chosen_ids"], b["chosen_mask"]), (b["rejected_ids"], b["rejected_mask"])]


def _body(model):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


def _run(model, fn, b, pad_id, chunk, expect_fallback=False):
    """Per-sequence log-probs, and the gradients of a CPO-like objective for every trainable parameter and for the
    body's final hidden states (of its last call: the continuation, for the KV-cache forward)."""
    states = []

    def keep(module, args, out):
        if out.last_hidden_state.requires_grad:  # not the one-time check of the chunked head (no_grad)
            out.last_hidden_state.retain_grad()
            states.append(out.last_hidden_state)

    hook = _body(model).register_forward_hook(keep)
    try:
        c, r = fn(model, b["prompt_ids"], b["prompt_mask"], _sides(b), pad_id, chunk)
    finally:
        hook.remove()
    if chunk is not None and not expect_fallback:
        assert chunked_head(model, chunk) is not None  # the chunked path ran, not the full one after a fallback
    # Different weights per sequence and a mean-like term: the upstream gradient differs token by token.
    w = torch.linspace(0.5, 1.5, c.sum.shape[0])
    (-(w * (c.sum - 0.7 * r.sum)).sum() - (c.sum / c.n_tokens).sum()).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return torch.cat([c.sum, r.sum]).detach(), grads, states[-1].grad.detach().clone()


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _assert_same(got, want, value_tol=1e-6, grad_tol=1e-5):
    vals, grads, hidden = got
    assert float(((vals - want[0]).abs() / want[0].abs()).max()) <= value_tol
    assert grads.keys() == want[1].keys() and grads
    for n in grads:
        assert _rel(grads[n], want[1][n]) <= grad_tol, (n, _rel(grads[n], want[1][n]))
    assert _rel(hidden, want[2]) <= grad_tol


def _chunks(b) -> list[int]:
    n = int(b["chosen_mask"].sum() + b["rejected_mask"].sum())  # real completion tokens per forward
    divisor = max(k for k in range(2, n) if n % k == 0) if any(n % k == 0 for k in range(2, n)) else n
    odd = next(k for k in (7, 11, 13) if n % k)
    return [1, odd, divisor, n, 10**6]  # one token; not dividing; dividing; exactly one chunk; larger than the batch


def _lora(model, targets=("q_proj", "v_proj", "down_proj")):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    m = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                          target_modules=list(targets), task_type="CAUSAL_LM"))
    for n, p in m.named_parameters():  # B != 0, so that every adapter matrix gets a gradient
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    return m


@pytest.mark.parametrize("forward", list(FORWARDS))
@pytest.mark.parametrize("tuning", ["full", "lora"])
def test_chunked_equals_full_logits_in_values_and_gradients(workload, forward, tuning):
    wl, model, b = workload
    model = _lora(model) if tuning == "lora" else model
    fn = FORWARDS[forward]
    want = _run(copy.deepcopy(model), fn, b, wl.pad_id, None)
    for chunk in _chunks(b):
        _assert_same(_run(copy.deepcopy(model), fn, b, wl.pad_id, chunk), want)


def test_tied_embeddings_get_the_gradient_of_both_uses(workload):
    from transformers import LlamaForCausalLM

    wl, model, b = workload
    cfg = copy.deepcopy(model.config)
    cfg.tie_word_embeddings = True
    torch.manual_seed(0)
    tied = LlamaForCausalLM(cfg)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    want = _run(copy.deepcopy(tied), completion_logps_packed, b, wl.pad_id, None)
    got = _run(copy.deepcopy(tied), completion_logps_packed, b, wl.pad_id, 13)
    _assert_same(got, want)
    grad = got[1]["model.embed_tokens.weight"]
    assert "lm_head.weight" not in got[1]  # one tensor holds both uses' gradients
    # Rows past the tokenizer's ids are never inputs: their gradient is the output projection's part alone.
    assert len(wl.tok) < VOCAB and grad[len(wl.tok):].norm() > 0 and grad[: len(wl.tok)].norm() > 0


def _small(kind: str):
    """Tiny models of the families whose logits are not the plain projection (transformers 4.57)."""
    import transformers as tf

    common = dict(vocab_size=700, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    if kind == "gemma2":  # a small cap, so that it changes the logits of a random model a lot
        return tf.Gemma2ForCausalLM(tf.Gemma2Config(**common, head_dim=8, final_logit_softcapping=0.5,
                                                    attn_implementation="sdpa"))
    if kind == "cohere":
        return tf.CohereForCausalLM(tf.CohereConfig(**common, logit_scale=0.3))
    return tf.GraniteForCausalLM(tf.GraniteConfig(**common, logits_scaling=4.0))


def _random_batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, p, c = 3, 6, 5
    out = {"prompt_ids": torch.randint(3, vocab, (b, p), generator=g),
           "prompt_mask": torch.ones(b, p, dtype=torch.long),
           "chosen_ids": torch.randint(3, vocab, (b, c), generator=g),
           "chosen_mask": torch.ones(b, c, dtype=torch.long),
           "rejected_ids": torch.randint(3, vocab, (b, c + 2), generator=g),
           "rejected_mask": torch.ones(b, c + 2, dtype=torch.long)}
    out["prompt_mask"][0, :2] = 0
    out["chosen_mask"][1, 3:] = 0
    out["rejected_mask"][2, 2:] = 0
    return out


@pytest.mark.parametrize("kind", ["gemma2", "cohere", "granite"])
def test_logit_transforms_soft_capping_and_scales(kind, monkeypatch):
    import cpo.train.chunked_logps as cl

    model = _small(kind)
    b = _random_batch(700)
    for forward, fn in FORWARDS.items():
        want = _run(copy.deepcopy(model), fn, b, 0, None)
        for chunk in (1, 4, 10**6):
            _assert_same(_run(copy.deepcopy(model), fn, b, 0, chunk), want)
    # Without the transform the chunked path would be wrong: the one-time check sees it and refuses to chunk.
    monkeypatch.setattr(cl.LogitTransform, "of", staticmethod(lambda m: cl.LogitTransform()))
    head, why = cl._resolve(copy.deepcopy(model))
    assert head is None and "differs from the model's own logits" in why


@pytest.mark.parametrize("forward", list(FORWARDS))
def test_bf16_autocast_agrees_within_bf16_rounding(workload, forward):
    """Under bf16 autocast both paths run the projection in bf16 and reduce in float32; they differ by bf16
    rounding only: no more than the full path itself differs from float32, and within a few bf16 epsilons."""
    wl, model, b = workload
    fn = FORWARDS[forward]
    fp32 = _run(copy.deepcopy(model), fn, b, wl.pad_id, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = _run(copy.deepcopy(model), fn, b, wl.pad_id, None)
        chunked = _run(copy.deepcopy(model), fn, b, wl.pad_id, 13)
    eps = 2.0**-8  # bf16's relative rounding
    value_diff = float(((chunked[0] - full[0]).abs() / full[0].abs()).max())
    bf16_error = float(((full[0] - fp32[0]).abs() / fp32[0].abs()).max())
    assert value_diff <= max(bf16_error, eps), (value_diff, bf16_error)
    for n in full[1]:
        assert _rel(chunked[1][n], full[1][n]) <= max(4 * eps, 2 * _rel(full[1][n], fp32[1][n])), n


def test_lora_on_the_output_projection_falls_back_with_one_warning(workload, capsys):
    wl, model, b = workload
    m = _lora(model, ("q_proj", "lm_head"))
    want = _run(copy.deepcopy(m), completion_logps, b, wl.pad_id, None)
    capsys.readouterr()
    got = _run(m, completion_logps, b, wl.pad_id, 8, expect_fallback=True)
    _run(m, completion_logps_packed, b, wl.pad_id, 8, expect_fallback=True)
    assert chunked_head(m, 8) is None
    warned = [line for line in capsys.readouterr().err.splitlines() if "computing full logits instead" in line]
    assert len(warned) == 1 and "lora" in warned[0].lower() and "lm_head" in warned[0], warned
    _assert_same(got, want, 0, 0)  # the full path itself


def test_settings_auto_and_validation(workload):
    from transformers import LlamaConfig, LlamaForCausalLM

    _, model, _ = workload
    assert LogpsSettings().chunk_for(model) is None and LogpsSettings(64).chunk_for(model) == 64
    assert LogpsSettings("auto").chunk_for(model) is None  # 1,500 < AUTO_MIN_VOCAB: the full path, as before
    big = LlamaForCausalLM(LlamaConfig(vocab_size=128256, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                       num_attention_heads=1, num_key_value_heads=1))
    assert AUTO_MIN_VOCAB <= 128256 and LogpsSettings("auto").chunk_for(big) == AUTO_CHUNK_LOGITS // 128256 == 261
    for bad in (0, -3, "many", 2.5, True):
        with pytest.raises(ValueError, match="logps.chunk_tokens"):
            LogpsSettings(bad)


def test_config_key_is_validated_and_reaches_the_module():
    from conftest import compose
    from cpo.errors import ConfigError
    from cpo.train.config import validate
    from cpo.train.run import build_logps

    assert build_logps(compose()) == LogpsSettings("auto")
    assert build_logps(compose(["logps.chunk_tokens=256"])) == LogpsSettings(256)
    assert build_logps(compose(["logps.chunk_tokens=null"])) == LogpsSettings(None)
    with pytest.raises(ConfigError, match="logps.chunk_tokens must be a positive number"):
        validate(compose(["logps.chunk_tokens=0"]))


def test_no_vocabulary_sized_tensor_is_kept_for_the_backward(workload):
    """The full path keeps [rows, columns, vocab] logits for the backward; the chunked one keeps no tensor with a
    vocabulary-sized dimension (parameters aside), whatever the batch."""
    wl, model, b = workload
    model = _lora(model)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved_shapes(chunk):
        shapes = []

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                shapes.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            completion_logps_packed(model, b["prompt_ids"], b["prompt_mask"], _sides(b), wl.pad_id, chunk)
        return shapes

    assert any(VOCAB in s for s in saved_shapes(None))
    assert not any(VOCAB in s for s in saved_shapes(16))


def test_module_reference_cache_and_heldout_use_the_chunked_path(workload, monkeypatch):
    """Training, validation, the live DPO reference, the cached reference pass and held-out pair metrics: with
    chunking on, none of them computes logits (the full path's entry points raise), and each gives the full
    path's numbers."""
    import cpo.train.logprobs as lp
    from cpo.train.heldout import pair_metrics
    from cpo.train.losses import PreferenceLoss
    from cpo.train.models import FrozenCopyReference
    from cpo.train.module import OptimSettings, PreferenceModule
    from cpo.train.reference_cache import compute_reference_logps

    wl, model, b = workload
    batch = dict(b, window_pairs=torch.tensor(4.0), window_tokens=b["chosen_mask"].sum().float())

    def everything(settings):
        cpo = PreferenceModule(copy.deepcopy(model), PreferenceLoss("cpo", beta=0.1, alpha=1.0), OptimSettings(),
                               wl.pad_id, forward="packed", logps=settings)
        train = cpo.compute(batch, train=True)[0]
        with torch.no_grad():
            val = cpo.compute(batch, train=False)[1]["pref_loss"]
        policy = copy.deepcopy(model)
        dpo = PreferenceModule(policy, PreferenceLoss("dpo", kind="dpo", beta=0.1, alpha=0.0), OptimSettings(),
                               wl.pad_id, reference=FrozenCopyReference(policy), forward="kv_cache", logps=settings)
        live = dpo._reference_logps(batch)
        cached = compute_reference_logps(model, wl.collator, wl.pairs, wl.pad_id, batch_size=3, logps=settings)
        held = pair_metrics(model, [b], wl.pad_id, settings)
        return train, val, live, cached, held

    full = everything(LogpsSettings(None))

    def refuse(*a, **k):
        raise AssertionError("full logits computed with logps.chunk_tokens set")

    monkeypatch.setattr(lp, "_logits", refuse)
    monkeypatch.setattr(lp, "gather_token_logps", refuse)
    chunked = everything(LogpsSettings(5))
    assert torch.allclose(chunked[0], full[0], rtol=1e-5) and torch.allclose(chunked[1], full[1], rtol=1e-5)
    assert all(torch.allclose(x, y, rtol=1e-6) for x, y in zip(chunked[2], full[2]))
    assert chunked[3].keys() == full[3].keys()
    assert all(abs(x - y) <= 1e-6 * abs(y) for k in full[3] for x, y in zip(chunked[3][k], full[3][k]))
    assert chunked[4]["pairs"] == 4 and abs(chunked[4]["logp_margin"] - full[4]["logp_margin"]) < 1e-4


def test_a_run_with_chunking_computes_no_logits_for_log_probs(tmp_path, monkeypatch):
    """A run with logps.chunk_tokens set: its training steps, validation, the cached DPO reference pass and the
    held-out pair metrics all take the chunked path (the full path's entry points raise once the demo's assets,
    whose warm start is a training of its own, exist)."""
    import cpo.train.logprobs as lp
    import cpo.train.run as run_module
    from conftest import SMALL_DEMO, compose

    def refuse(*a, **k):
        raise AssertionError("full logits computed with logps.chunk_tokens set")

    load = run_module.load_data

    def load_then_refuse(cfg):
        data = load(cfg)
        monkeypatch.setattr(lp, "_logits", refuse)
        monkeypatch.setattr(lp, "gather_token_logps", refuse)
        return data

    monkeypatch.setattr(run_module, "load_data", load_then_refuse)
    cfg = compose(SMALL_DEMO + ["logger=none", "loss=dpo", "loss.reference=cached", "logps.chunk_tokens=4",
                                "trainer.max_steps=2", "evaluate.during_training.enabled=false", "save_policy=false"])
    res = run_module.run(cfg, tmp_path)
    assert res["global_steps"] == 2 and res["val"]["val/loss"] > 0
    assert res["before"]["pairs"] == res["after"]["pairs"] > 0 and "pref_accuracy" in res["after"]
