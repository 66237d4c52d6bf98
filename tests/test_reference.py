"""The DPO reference is the starting policy in every model setup; the reference cache is keyed by the weights.

The "existing adapter" is made here as ALMA's was: a tiny LoRA trained a few steps on a tiny Llama,
saved with ``save_pretrained`` and continued through ``LoraSettings(adapter=<folder>)``.
"""
import copy
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from cpo.train.config import ConfigError
from cpo.data import PreferenceDataModule, PreferenceExample
from cpo.train.losses import PreferenceLoss
from cpo.train.models import (
    CONTINUED_ADAPTER, FRESH_LORA, FULL, AdapterDisabledReference, LoraSettings, build_policy, build_reference,
    infer_policy_start, save_policy,
)
from cpo.train.module import OptimSettings, PreferenceModule
from cpo.train.reference_cache import (attach_cached_reference, compute_reference_logps, file_fingerprint,
                                      weights_identity)
from cpo.train.tiny import save_model_and_tokenizer

LOG2 = math.log(2.0)
BETA = 0.1
# Relative rounding of a float32 sum of token log-probs (eps 1.2e-7, a few units in the last place): a reward
# "zero up to rounding" is at most BETA * F32_SUM * |log pi|, whichever CPU computed it.
F32_SUM = 1e-6
FRESH = dict(r=4, alpha=8, dropout=0.05, target_modules=["q_proj", "v_proj", "down_proj"])
EXAMPLES = [
    PreferenceExample(f"der hund {i}", f"the cat number {i} sees {i * 7} dogs today", f"the cat sees {i} dogs",
                      "de", "en")
    for i in range(14)
]


def datamodule(tok) -> PreferenceDataModule:
    # eval batch 3 vs train batch 4: the cached pass pads differently from the training batch
    return PreferenceDataModule(EXAMPLES[:10], EXAMPLES[10:], tok, batch_size=4, eval_batch_size=3,
                                max_prompt_length=64, max_length=128, group_by_length=False)


def sft_steps(policy, tok, steps: int = 6) -> None:
    """A few steps of SFT on the adapter only: the stand-in for ALMA's trained LoRA."""
    dm = datamodule(tok)
    module = PreferenceModule(policy, PreferenceLoss("sft", kind="none", alpha=1.0), OptimSettings(), tok.pad_token_id)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=3e-2)
    batches = list(dm.train_dataloader())
    for i in range(steps):
        loss, _ = module.compute(batches[i % len(batches)], train=True)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture(scope="module")
def start(tmp_path_factory, tiny_tok_model):
    tok, model = tiny_tok_model
    root = tmp_path_factory.mktemp("reference")
    base = save_model_and_tokenizer(copy.deepcopy(model), tok, root / "base")
    policy = build_policy(str(base), lora=LoraSettings(**FRESH))
    sft_steps(policy, tok)
    policy.save_pretrained(root / "adapter")
    return SimpleNamespace(tok=tok, base=str(base), adapter=str(root / "adapter"), root=root)


def lora_for(setup: str, start) -> LoraSettings | None:
    return {"full": None, "fresh": LoraSettings(**FRESH), "continued": LoraSettings(adapter=start.adapter)}[setup]


def run_cfg(cache_dir: Path, lora: LoraSettings | None):
    return OmegaConf.create({
        "cache_dir": str(cache_dir), "trainer": {"accelerator": "cpu", "precision": "32-true"},
        "model": {"dtype": "float32", "attn_implementation": None, "lora": None if lora is None else vars(lora)}})


def step0(start, setup: str, mode: str, tmp_path, reference=None):
    """DPO loss and per-pair policy/reference log-probs of the first training batch, through the real code path."""
    lora = lora_for(setup, start)
    policy = build_policy(start.base, "float32", lora)
    dm = datamodule(start.tok)
    if reference is None:
        reference = build_reference(mode, policy, lora)
    if reference is None:  # cached
        attach_cached_reference(run_cfg(tmp_path, lora), policy, dm, start.base, say=lambda m: None)
    module = PreferenceModule(policy, PreferenceLoss("dpo", kind="dpo", beta=BETA, alpha=0.0), OptimSettings(),
                              start.tok.pad_token_id, reference, forward="packed")
    batch = next(iter(dm.train_dataloader()))
    loss, stats = module.compute(batch, train=True)
    with torch.no_grad():
        pol = module._logps(policy, batch, ("chosen", "rejected"))
        ref = module._reference_logps(batch)
    return SimpleNamespace(loss=float(loss.detach()), stats=stats, policy=(pol["chosen"].sum, pol["rejected"].sum),
                           ref=ref, policy_model=policy)


VALID = [("full", m) for m in ("auto", "frozen_copy", "cached")] + \
        [("fresh", m) for m in ("auto", "adapter_disabled", "reference_adapter", "frozen_copy", "cached")] + \
        [("continued", m) for m in ("auto", "reference_adapter", "frozen_copy", "cached")]


@pytest.mark.parametrize("setup, mode", VALID)
def test_every_valid_reference_is_the_starting_policy(start, setup, mode, tmp_path):
    """Step 0 of DPO: loss log 2 within 1e-6 (fp32) and zero rewards, for every setup and reference mode."""
    r = step0(start, setup, mode, tmp_path)
    loss_tol = 1e-6 + BETA * F32_SUM * max(float(p.abs().max()) for p in r.policy)
    assert abs(r.loss - LOG2) <= loss_tol, f"{setup}/{mode}: step-0 DPO loss {r.loss:.7f}, want log 2 = {LOG2:.7f}"
    for side, pol, ref in zip(("chosen", "rejected"), r.policy, r.ref):
        rewards = BETA * (pol - ref)
        # zero up to float32 rounding of the summed log-probs (a few units in the last place of |log pi|)
        tol = BETA * F32_SUM * float(pol.abs().max())
        assert rewards.abs().max() <= tol, f"{setup}/{mode}: rewards/{side} {rewards.tolist()}"
    n = float(r.stats["pairs"])
    tol = BETA * F32_SUM * max(float(p.abs().max()) for p in r.policy)
    assert abs(float(r.stats["rewards_chosen"]) / n) <= tol and abs(float(r.stats["rewards_rejected"]) / n) <= tol
    assert r.policy_model.training, "the policy must be back in training mode after the reference forward"


def test_the_trained_adapter_is_not_the_base_model(start, tmp_path):
    """Guard on the test itself: with the adapter switched off (the old reference of a continued adapter) the
    step-0 loss is visibly not log 2, so the test above can fail on that bug."""
    r = step0(start, "continued", "-", tmp_path, reference=AdapterDisabledReference())
    assert abs(r.loss - LOG2) > 1e-4
    assert max(float((p - q).abs().max()) for p, q in zip(r.policy, r.ref)) > 0.05


@pytest.mark.parametrize("setup, mode, message", [
    ("continued", "adapter_disabled", "loss.reference=adapter_disabled would be the bare base model"),
    ("full", "adapter_disabled", "loss.reference=adapter_disabled needs a LoRA policy"),
    ("full", "reference_adapter", "loss.reference=reference_adapter needs a LoRA policy"),
    ("fresh", "nope", "loss.reference='nope' is not one of"),
])
def test_a_reference_that_is_not_the_start_is_refused(start, setup, mode, message):
    lora = lora_for(setup, start)
    with pytest.raises(ConfigError, match=message):
        build_reference(mode, build_policy(start.base, "float32", lora), lora)


def test_sharded_strategies_take_only_a_fresh_adapter_switched_off(start):
    fresh, continued = lora_for("fresh", start), lora_for("continued", start)
    for mode in ("auto", "adapter_disabled"):
        assert build_reference(mode, None, fresh, sharded=True).mode == "adapter_disabled"
    for mode in ("reference_adapter", "frozen_copy", "cached"):
        with pytest.raises(ConfigError, match=f"build_in_configure_model=true.*loss.reference={mode} is not supported"):
            build_reference(mode, None, fresh, sharded=True)
    for lora, what in ((continued, "a continued adapter"), (None, "full fine-tuning")):
        for mode in ("auto", "adapter_disabled", "cached"):
            with pytest.raises(ConfigError, match=f"only for a fresh adapter, but this policy is {what}"):
                build_reference(mode, None, lora, sharded=True)
    with pytest.raises(ConfigError, match="loss.reference=cached needs the policy built before training"):
        attach_cached_reference(run_cfg(Path("/nonexistent"), fresh), None, None, start.base)


def test_auto_without_settings_reads_the_start_from_the_weights(start):
    """The old call build_reference(mode, policy) also picks the right reference."""
    assert infer_policy_start(build_policy(start.base)) == FULL
    fresh = build_policy(start.base, lora=LoraSettings(**FRESH))
    continued = build_policy(start.base, lora=LoraSettings(adapter=start.adapter))
    assert infer_policy_start(fresh) == FRESH_LORA and infer_policy_start(continued) == CONTINUED_ADAPTER
    assert build_reference("auto", continued).mode == "reference_adapter"
    assert build_reference("auto", fresh).mode == "adapter_disabled"
    assert build_reference("auto", build_policy(start.base)).mode == "frozen_copy"


def test_reference_adapter_is_frozen_unseen_by_the_optimizer_and_unchanged_by_training(start, tmp_path):
    import lightning as L
    from safetensors.torch import load_file

    lora = lora_for("continued", start)
    policy = build_policy(start.base, "float32", lora)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    reference = build_reference("auto", policy, lora)
    ref_params = {n: p for n, p in policy.named_parameters() if ".reference." in n}
    assert ref_params and not any(p.requires_grad for p in ref_params.values())
    assert {n for n, p in policy.named_parameters() if p.requires_grad} == trainable
    assert policy.training and policy.active_adapter == "default"

    dm = datamodule(start.tok)
    module = PreferenceModule(policy, PreferenceLoss("dpo", kind="dpo", beta=BETA, alpha=0.0),
                              OptimSettings(lr=1e-2, warmup_ratio=0.0), start.tok.pad_token_id, reference,
                              forward="packed")
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        use_distributed_sampler=False)
    trainer.fit(module, datamodule=dm)

    in_optimizer = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in ref_params.values()}
    assert in_optimizer == {id(p) for n, p in policy.named_parameters() if n in trainable}
    assert {n for n, p in policy.named_parameters() if p.requires_grad} == trainable
    saved = load_file(Path(start.adapter) / "adapter_model.safetensors")  # keys without the adapter name
    by_name = {n.replace(".reference.", "."): p for n, p in ref_params.items()}
    assert saved.keys() == by_name.keys()
    assert all(torch.equal(saved[k], by_name[k].detach()) for k in saved), "the reference adapter moved in training"
    trained = {n.replace(".default.", "."): p for n, p in policy.named_parameters() if ".default." in n}
    assert any(not torch.equal(saved[k], trained[k].detach()) for k in saved), "the trained adapter did not train"

    # As cpo.train.run saves it, from the module's state dict: the trained adapter alone, no reference/ folder
    sd = {k[len("policy."):]: v for k, v in module.state_dict().items() if k.startswith("policy.")}
    save_policy(policy, tmp_path / "policy", state_dict=sd)
    assert sorted(p.name for p in (tmp_path / "policy").iterdir() if p.is_dir()) == []
    written = load_file(tmp_path / "policy" / "adapter_model.safetensors")
    assert written.keys() == saved.keys() and all(torch.equal(written[k], trained[k].detach()) for k in written)


def test_switching_adapters_keeps_gradient_checkpointing_exact(start):
    """The reference forward runs between the policy's checkpointed forward and its backward (which recomputes
    the forward): the gradients must equal those with a reference that never touches the policy."""
    lora = lora_for("continued", start)
    grads = {}
    for mode in ("reference_adapter", "frozen_copy"):
        policy = build_policy(start.base, "float32", lora, gradient_checkpointing=True)
        module = PreferenceModule(policy, PreferenceLoss("dpo", kind="dpo", beta=BETA, alpha=0.0), OptimSettings(),
                                  start.tok.pad_token_id, build_reference(mode, policy, lora), forward="packed")
        batch = next(iter(datamodule(start.tok).train_dataloader()))
        loss, _ = module.compute(batch, train=True)
        loss.backward()
        grads[mode] = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        assert not any(".reference." in n for n in grads[mode])
    a, b = grads["reference_adapter"], grads["frozen_copy"]
    assert a.keys() == b.keys() and a
    largest = max(float(g.abs().max()) for g in a.values())
    assert max(float((a[n] - b[n]).abs().max()) for n in a) <= 1e-5 * largest  # float32 rounding, relative
    assert largest > 1e-4


def test_dpo_run_continuing_an_adapter_starts_at_zero_rewards(start, tmp_path):
    """Through cpo.train.run.run: the first logged step of DPO on a continued adapter has rewards 0 and loss log 2."""
    import csv

    from conftest import compose
    from cpo.train.run import run

    data = tmp_path / "pairs.jsonl"
    rows = [{"source": e.source, "chosen": e.chosen, "rejected": e.rejected, "src_lang": "de", "tgt_lang": "en"}
            for e in EXAMPLES * 2]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for mode in ("auto", "cached"):
        out = tmp_path / mode
        run(compose([
            "data=jsonl", f"data.train_file={data}", "data.val_size=4", "model=tiny_lora",
            f"model.name_or_path={start.base}",
            f"model.lora.adapter={start.adapter}", "loss=dpo", f"loss.reference={mode}", "logger=csv",
            "evaluate.before_after=false", "evaluate.during_training.enabled=false", "save_policy=false",
            "trainer.max_steps=2", "trainer.log_every_n_steps=1", f"cache_dir={tmp_path / 'cache'}",
        ]), out)
        rows = [r for r in csv.DictReader(open(out / "csv" / "metrics.csv")) if r.get("train/rewards/chosen")]
        first = min(rows, key=lambda r: int(r["step"]))
        assert int(first["step"]) == 0
        # zero up to float32 rounding of the summed log-probs the rewards are differences of
        scale = max(1.0, abs(float(first["train/logps/chosen"])), abs(float(first["train/logps/rejected"])))
        tol = BETA * F32_SUM * scale
        assert abs(float(first["train/rewards/chosen"])) <= tol, (mode, first)
        assert abs(float(first["train/rewards/rejected"])) <= tol, (mode, first)
        assert abs(float(first["train/loss"]) - LOG2) <= 1e-6 + tol, (mode, first)


# ---------------------------------------------------------------------------------------------- cache key
def cached_logps(policy, model_path: str, lora, tok, cache_dir: Path) -> tuple[dict, str]:
    said: list[str] = []
    dm = datamodule(tok)
    attach_cached_reference(run_cfg(cache_dir, lora), policy, dm, model_path, say=said.append)
    return dm.ref_logps, said[-1]


def direct_logps(policy, tok) -> dict:
    dm = datamodule(tok)
    return compute_reference_logps(policy, dm.collator, dm.train_pairs, dm.collator.pad_id, 4)


def flat(logps: dict) -> list[float]:
    return [v for i in sorted(logps) for v in logps[i]]


def perturb(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def test_weights_overwritten_in_place_are_a_cache_miss(start, tiny_tok_model, tmp_path):
    tok, model = tiny_tok_model
    path = str(save_model_and_tokenizer(copy.deepcopy(model), tok, tmp_path / "model"))
    first, msg = cached_logps(build_policy(path), path, None, tok, tmp_path / "cache")
    assert "written to" in msg
    again, msg = cached_logps(build_policy(path), path, None, tok, tmp_path / "cache")
    assert "read from" in msg and again == first

    save_model_and_tokenizer(perturb(copy.deepcopy(model), 1), tok, path)  # a retrained checkpoint, same path
    policy = build_policy(path)
    new, msg = cached_logps(policy, path, None, tok, tmp_path / "cache")
    assert "written to" in msg, "new weights at the same path must not reuse the old log-probs"
    want = direct_logps(policy, tok)
    assert new["train"].keys() == want.keys() and flat(new["train"]) == pytest.approx(flat(want), abs=1e-4)
    assert max(abs(a - b) for a, b in zip(flat(new["train"]), flat(first["train"]))) > 1e-3


def test_an_adapter_overwritten_in_place_is_a_cache_miss(start, tmp_path):
    lora = LoraSettings(adapter=str(tmp_path / "adapter"))
    policy = build_policy(start.base, lora=LoraSettings(**FRESH))
    sft_steps(policy, start.tok, 2)
    policy.save_pretrained(lora.adapter)
    first, msg = cached_logps(build_policy(start.base, lora=lora), start.base, lora, start.tok, tmp_path / "cache")
    assert "written to" in msg
    sft_steps(policy, start.tok, 2)  # trained on, saved over the same folder
    policy.save_pretrained(lora.adapter)
    continued = build_policy(start.base, lora=lora)
    new, msg = cached_logps(continued, start.base, lora, start.tok, tmp_path / "cache")
    assert "written to" in msg
    want = direct_logps(continued, start.tok)
    assert new["train"].keys() == want.keys() and flat(new["train"]) == pytest.approx(flat(want), abs=1e-4)
    assert max(abs(a - b) for a, b in zip(flat(new["train"]), flat(first["train"]))) > 1e-4


def test_large_files_are_fingerprinted_by_samples_and_still_change(tmp_path):
    f = tmp_path / "model-00001-of-00002.safetensors"
    data = bytearray(os.urandom(3 << 20))
    f.write_bytes(data)
    small_limit = 1 << 20  # treat the 3 MiB file as a large shard
    fp = file_fingerprint(f, small_limit)
    assert fp.startswith("sampled:") and fp == file_fingerprint(f, small_limit)
    assert file_fingerprint(f).startswith("sha256:")
    st = f.stat()
    data[0] ^= 1  # new content, same size, mtime put back: the sampled bytes still tell them apart
    f.write_bytes(data)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_fingerprint(f, small_limit) != fp
    before = file_fingerprint(f, small_limit)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # same bytes, new mtime: a miss (recomputed), never stale
    assert file_fingerprint(f, small_limit) != before


def test_a_hub_name_is_keyed_by_its_snapshot_commit(tmp_path):
    from cpo.io import Unavailable

    repo = tmp_path / "models--org--tiny"
    for commit, weights in (("a" * 40, b"old weights"), ("b" * 40, b"new weights")):
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        (snap / "config.json").write_text('{"model_type": "llama"}')
        (snap / "model.safetensors").write_bytes(weights)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    old = weights_identity("org/tiny", "model.name_or_path", hub_cache_dir=tmp_path)
    assert old["revision"] == "a" * 40 and set(old["files"]) == {"config.json", "model.safetensors"}
    (repo / "refs" / "main").write_text("b" * 40)  # a re-download of a newer revision
    new = weights_identity("org/tiny", "model.name_or_path", hub_cache_dir=tmp_path)
    assert new["revision"] == "b" * 40 and new["files"] != old["files"]
    with pytest.raises(Unavailable, match="model.name_or_path='org/absent' is neither a local folder nor in the local"):
        weights_identity("org/absent", "model.name_or_path", hub_cache_dir=tmp_path)
