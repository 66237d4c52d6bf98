"""Training end to end on the small demo: every loss, LoRA, saving and reloading, W&B, multirun, errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, SMALL_DEMO, compose
from cpo.train.run import run

FAST = SMALL_DEMO + ["logger=csv", "evaluate.before_after=false", "save_policy=false", "+trainer.fast_dev_run=2"]
LOSSES = ["cpo", "dpo", "sft", "sft_ref", "cpo_prefer_only", "simpo", "cpo_simpo", "ipo", "hinge", "orpo", "arpo"]


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains(loss, tmp_path):
    res = run(compose(FAST + [f"loss={loss}"]), tmp_path)
    assert res["global_steps"] == 2 and res["loss"] == loss
    m = res["train"]
    assert torch.isfinite(torch.tensor(m["train/loss"]))
    # nll_loss is the NLL term: logged exactly when the loss has one (alpha > 0).
    assert ("train/nll_loss" in m) == (loss not in ("dpo", "cpo_prefer_only", "simpo", "ipo", "hinge"))
    assert torch.isfinite(torch.tensor(m.get("train/nll_loss", 0.0)))
    if loss not in ("sft", "sft_ref"):
        assert {"train/rewards/margins", "train/rewards/accuracies", "train/logps/chosen"} <= set(m)
    else:  # SFT logs the log-probs of the side it trains on, so its training curves can be drawn too
        side = "chosen" if loss == "sft" else "reference"
        assert {f"train/logps/{side}", f"train/logps/{side}_avg"} <= set(m) and "train/logps/margins" not in m
        assert m[f"train/logps/{side}"] < m[f"train/logps/{side}_avg"] < 0  # a sum of token log-probs, and a mean


def test_dpo_with_cached_reference_reuses_the_cache(tmp_path, capsys):
    cfg = compose(FAST + ["loss=dpo", "loss.reference=cached"])
    run(cfg, tmp_path / "a")
    assert "written to" in capsys.readouterr().out
    run(cfg, tmp_path / "b")
    assert "read from" in capsys.readouterr().out


def test_lora_trainable_parameter_count_and_reload(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cpo.mt.generation import translate

    res = run(compose(SMALL_DEMO + ["logger=none", "model=tiny_lora", "evaluate.before_after=false",
                                    "trainer.max_steps=3"]), tmp_path)
    # r=8 on q,k,v,o,gate,up,down of 2 layers, hidden 32, 4 heads (kv dim 16 with 2 KV heads), ffn 128:
    # per layer r*[(32+32) + (32+16) + (32+16) + (32+32) + 3*(32+128)] = 8 * 704 = 5632
    assert res["trainable_parameters"] == 2 * 5632
    policy_dir = Path(res["policy_dir"])
    assert (policy_dir / "adapter_config.json").exists()
    base_path = json.loads((policy_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    tok = AutoTokenizer.from_pretrained(policy_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), policy_dir)
    out = translate(model, tok, ["vosh vidrak"], "zb", "en", num_beams=2, max_new_tokens=8)
    assert len(out) == 1 and isinstance(out[0], str)


def test_full_model_saved_reloads_and_translates_and_table(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cpo.mt.generation import translate

    res = run(compose(SMALL_DEMO + ["logger=none", "trainer.max_steps=4"]), tmp_path)
    out = capsys.readouterr().out
    assert "before -> after" in out and "| demo_qe |" in out and "| chrf |" in out
    assert set(res["before"]) >= {"pref_accuracy", "logp_margin", "bleu", "chrf", "demo_qe"}
    assert (tmp_path / "checkpoints" / "last.ckpt").exists() and (tmp_path / "before_after.md").exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    tok = AutoTokenizer.from_pretrained(tmp_path / "policy")
    start = AutoModelForCausalLM.from_pretrained(res["start_model"])
    # What was saved is the trained policy, not the warm start it began from.
    trained, initial = model.state_dict(), start.state_dict()
    assert trained.keys() == initial.keys()
    assert any(not torch.equal(trained[k], initial[k]) for k in trained)
    assert isinstance(translate(model, tok, ["vosh vidrak"], "zb", "en", num_beams=1, max_new_tokens=8)[0], str)
    assert res["global_steps"] == 4


def test_wandb_offline_run_holds_metrics_and_config(tmp_path):
    from cpo.report.wandb_offline import read_finished_run as read_offline_run

    run(compose(SMALL_DEMO + ["evaluate.before_after=false", "save_policy=false", "trainer.max_steps=3",
                              "trainer.log_every_n_steps=1", "trainer.val_check_interval=2"]), tmp_path)
    runs = list((tmp_path / "wandb_files" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "W&B files must stay inside the run directory"
    r = read_offline_run(runs[0])
    assert r["complete"], "the W&B run was not finished"
    keys = set().union(*r["history"])
    assert {"train/loss", "train/rewards/margins", "train/nll_loss", "val/rewards/accuracies"} <= keys
    assert r["config"]["loss.name"] == "cpo" and r["config"]["trainable_parameters"] > 0  # flat: filterable
    assert r["job_type"] == "cpo"


def _clean_env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_multirun_sweep_groups_runs_in_wandb(tmp_path):
    from cpo.report.wandb_offline import read_finished_run as read_offline_run

    cmd = [sys.executable, "train.py", "-m", "loss=cpo,sft", "beta=0.05,0.1", "trainer.max_steps=2",
           "evaluate.before_after=false", "save_policy=false", f"hydra.sweep.dir={tmp_path}"] + SMALL_DEMO
    p = subprocess.run(cmd, cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = sorted(d for d in tmp_path.iterdir() if d.is_dir() and (d / "results.json").exists())
    assert len(jobs) == 3  # SFT ignores beta: it ran once, and the sweep said so
    assert "loss=sft ignores beta: 2 jobs run as 1 (beta=0.05,0.1 left out)" in p.stdout + p.stderr
    runs = [read_offline_run(next((j / "wandb_files" / "wandb").glob("offline-run-*"))) for j in jobs]
    assert len({r["group"] for r in runs}) == 1 and runs[0]["group"]
    assert sorted(r["name"] for r in runs) == sorted(["beta=0.05,loss=cpo", "beta=0.1,loss=cpo", "loss=sft"])
    assert {json.loads((j / "results.json").read_text())["beta"] for j in jobs} == {0.05, 0.1}


@pytest.mark.parametrize(
    "args, message",
    [
        (["beta=0"], "beta must be > 0"),
        (["data=jsonl", "data.train_file=/nope.jsonl", "model=hf", "model.name_or_path=x"],
         "data.train_file: /nope.jsonl does not exist"),
        (["data=alma_r_preference", "model=hf", "model.name_or_path=x"], "data.path='haoranxu/ALMA-R-Preference'"),
    ],
)
@pytest.mark.slow
def test_cli_errors_are_one_sentence(args, message):
    p = subprocess.run([sys.executable, "train.py"] + args, cwd=REPO, env=_clean_env(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and f"error: {message}" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_bad_data_file_names_line_and_field(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text('{"source": "a", "chosen": "b", "rejected": "c", "src_lang": "de", "tgt_lang": "en"}\n'
                 '{"source": "a", "chosen": "b", "src_lang": "de", "tgt_lang": "en"}\n')
    p = subprocess.run([sys.executable, "train.py", "data=jsonl", f"data.train_file={f}", "model=hf",
                        "model.name_or_path=x"],
                       cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and f"{f}:2: missing field 'rejected'" in p.stderr


def test_validation_logs_translation_quality_and_sample_table(tmp_path):
    from cpo.report.wandb_offline import read_finished_run as read_offline_run

    res = run(compose(SMALL_DEMO + ["evaluate.before_after=false", "save_policy=false", "trainer.max_steps=2",
                                    "trainer.val_check_interval=2", "evaluate.during_training.max_sentences=8"]),
              tmp_path)
    assert {"val/bleu", "val/chrf", "val/demo_qe"} <= set(res["val"])
    assert 0 <= res["val"]["val/demo_qe"] <= 1
    r = read_offline_run(next((tmp_path / "wandb_files" / "wandb").glob("offline-run-*")))
    keys = set().union(*r["history"])
    assert "val/bleu" in keys and "val/samples/nrows" in keys
    assert [h["val/samples/nrows"] for h in r["history"] if "val/samples/nrows" in h] == [8]


def test_policy_factory_is_built_in_configure_model(tiny_tok_model):
    """Sharded strategies build the model inside configure_model; the module accepts a factory for that."""
    import lightning as L

    from cpo.data import PreferenceDataModule, PreferenceExample
    from cpo.train.losses import PreferenceLoss
    from cpo.train.module import OptimSettings, PreferenceModule

    tok, model = tiny_tok_model
    calls = []

    def factory():
        calls.append(1)
        import copy

        return copy.deepcopy(model)

    exs = [PreferenceExample(f"hund {i}", "the dog", "a cat", "de", "en") for i in range(8)]
    dm = PreferenceDataModule(exs, exs[:2], tok, batch_size=4)
    mod = PreferenceModule(factory, PreferenceLoss("cpo"), OptimSettings(), tok.pad_token_id)
    assert mod.policy is None
    L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              use_distributed_sampler=False, limit_val_batches=0, accelerator="cpu").fit(mod, datamodule=dm)
    assert calls == [1] and mod.policy is not None and mod.global_step == 1


def test_lazy_policy_path_trains_and_saves(tmp_path):
    """The configure_model path (used by fsdp / deepspeed_zero3) runs end to end on one CPU device."""
    from transformers import AutoModelForCausalLM

    res = run(compose(SMALL_DEMO + ["logger=none", "build_in_configure_model=true", "trainer.max_steps=2",
                                    "evaluate.before_after=false"]), tmp_path)
    assert res["global_steps"] == 2 and res["trainable_parameters"] > 0
    AutoModelForCausalLM.from_pretrained(tmp_path / "policy")


def test_warmup_steps_are_rounded_up_as_the_hf_trainer(tiny_tok_model):
    """ALMA-R's HF Trainer takes ceil(warmup_ratio * steps): 1% of 140 steps is 2 warm-up steps, not round()'s 1."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import Precision

    from cpo.train.losses import PreferenceLoss
    from cpo.train.module import OptimSettings, PreferenceModule

    _, model = tiny_tok_model
    module = PreferenceModule(model, PreferenceLoss("cpo"), OptimSettings(lr=1.0, warmup_ratio=0.01), pad_id=0)
    dm = SimpleNamespace(micro_batches_per_epoch=lambda world: 1000)
    module._trainer = SimpleNamespace(precision_plugin=Precision(), datamodule=dm, world_size=1,
                                      limit_train_batches=1.0, accumulate_grad_batches=1, max_epochs=1, max_steps=140)
    sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert [round(f(1), 3) for f in sched.lr_lambdas] == [0.5, 0.5]  # step 1 of 2 warm-up steps


def test_a_short_run_logs_validates_records_provenance_and_reads_well_in_a_log_file(tmp_path):
    """A 5-step run (fewer steps than log_every_n_steps, stopped mid-epoch) still logs train and val metrics,
    validates at its end, records what produced it, and prints each line once with no progress-bar flood."""
    import csv
    import hashlib

    cmd = [sys.executable, "train.py", f"hydra.run.dir={tmp_path}", "logger=csv", "trainer.max_steps=5",
           "evaluate.before_after=false", "save_policy=false"] + SMALL_DEMO
    p = subprocess.run(cmd, cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout + p.stderr
    assert "\r" not in out and "Tip:" not in out and "pkg_resources" not in out  # not a terminal: no bar
    lines = [line for line in out.splitlines() if line.strip()]
    assert not [line for line in lines if "GPU available" in line]  # Lightning's device lines: chatter, dropped
    assert lines.count("starting a new run") == 1  # each line once (Lightning's handler used to print it twice)
    assert any(line.split(" ", 2)[-1].startswith("data demo:") for line in (tmp_path / "train.log").read_text()
               .splitlines())  # the project's own messages are in the run's log file, after their time stamp
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("train/loss") for r in rows) and any(r.get("val/loss") for r in rows)
    assert any(r.get("val/bleu") and r.get("val/off_target") for r in rows)  # translations scored at validation
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["global_steps"] == 5 and "val/bleu" in res["val"] and "train/loss" in res["train"]
    prov = res["provenance"]
    assert set(prov["versions"]) >= {"torch", "transformers", "peft", "lightning", "sacrebleu", "unbabel-comet"}
    assert prov["git"]["commit"] and isinstance(prov["git"]["dirty"], bool)
    assert prov["batch"] == res["global_batch"] == {"per_device": 8, "devices": 1, "nodes": 1, "accumulate": 1,
                                                     "global_batch": 8}
    train_file = next(f for f in prov["data_files"] if f.endswith("train.jsonl"))
    assert prov["data_files"][train_file] == hashlib.sha256(Path(train_file).read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_relaunch_with_another_job_list_finds_the_jobs_that_ran(tmp_path):
    """Job folders are named by their overrides, not their position: a second sweep with one more value
    skips the job that already finished instead of training it again under a new number."""
    base = [sys.executable, "train.py", "-m", "trainer.max_steps=1", "logger=csv", "evaluate.before_after=false",
            "save_policy=false", "evaluate.during_training.enabled=false", f"hydra.sweep.dir={tmp_path}"] + SMALL_DEMO
    p = subprocess.run(base + ["beta=0.1"], cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    p = subprocess.run(base + ["beta=0.05,0.1"], cwd=REPO, env=_clean_env(), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "already finished with this configuration" in p.stdout
    assert len([d for d in tmp_path.iterdir() if (d / "results.json").exists()]) == 2


def test_a_strategy_that_accumulates_itself_logs_at_its_boundary_only(tiny_tok_model):
    """DeepSpeed accumulates inside its engine: Lightning calls on_before_optimizer_step for every micro-batch, so
    the window of metrics must stay open until the engine's accumulation boundary."""
    from types import SimpleNamespace

    from cpo.train.losses import PreferenceLoss
    from cpo.train.module import OptimSettings, PreferenceModule

    tok, model = tiny_tok_model
    mod = PreferenceModule(model, PreferenceLoss("cpo"), OptimSettings(), tok.pad_token_id)
    at_boundary = [False]
    mod._trainer = SimpleNamespace(strategy=SimpleNamespace(handles_gradient_accumulation=True),
                                   model=SimpleNamespace(is_gradient_accumulation_boundary=lambda: at_boundary[0]))
    mod._window = {"pairs": torch.tensor(2.0), "loss_share": torch.tensor(0.5)}
    mod.on_before_optimizer_step(None)  # a micro-batch inside the window: nothing logged, nothing dropped
    assert float(mod._window["pairs"]) == 2.0 and float(mod._window["loss_share"]) == 0.5
    at_boundary[0] = True
    assert mod._window_complete()
    mod._trainer.strategy.handles_gradient_accumulation = False  # Lightning's own accumulation: once per window
    at_boundary[0] = False
    assert mod._window_complete()


def test_accumulated_steps_log_the_whole_global_batch(tmp_path):
    """Batch 4 x accumulate 4 logs what batch 16 logs at every step, for the same weights: train/loss and
    train/loss_global were the last micro-batch's (0.263 where batch 16 logged 1.144), so curves of different
    device counts could not be compared."""
    import csv

    base = [a for a in SMALL_DEMO if not a.startswith("data.batch_size")] + [
        "logger=csv", "evaluate.before_after=false", "evaluate.during_training.enabled=false", "save_policy=false",
        "trainer.max_steps=4", "trainer.log_every_n_steps=1", "trainer.limit_val_batches=0", "seed=5"]
    runs = {"whole": ["data.batch_size=16"], "accumulated": ["data.batch_size=4", "trainer.accumulate_grad_batches=4"]}
    procs = {name: subprocess.Popen([sys.executable, "train.py", f"hydra.run.dir={tmp_path / name}", *base, *extra],
                                    cwd=REPO, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for name, extra in runs.items()}
    logged = {}
    for name, p in procs.items():
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        with open(tmp_path / name / "csv" / "metrics.csv") as f:
            logged[name] = [r for r in csv.DictReader(f) if r.get("train/loss")]
    whole, acc = logged["whole"], logged["accumulated"]
    assert [r["step"] for r in whole] == [r["step"] for r in acc] == ["0", "1", "2", "3"]
    for key in ("train/loss", "train/loss_global", "train/nll_loss", "train/rewards/margins", "train/logps/chosen",
                "train/rewards/accuracies"):
        for a, b in zip(whole, acc):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-5), (key, a["step"], a[key], b[key])
    assert all(float(r["train/loss"]) == pytest.approx(float(r["train/loss_global"]), rel=1e-6) for r in acc)
    a, b = (torch.load(tmp_path / n / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"] for n in runs)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5  # the same weights: exact accumulation


def test_the_held_out_table_says_what_it_rests_on(tmp_path, cache_dir, capsys):
    """A JSONL run without a test file: the table rested on 2 validation pairs, unannounced."""
    run(compose(SMALL_DEMO + ["logger=none", "evaluate.before_after=false", "trainer.max_steps=1", "save_policy=false",
                              "evaluate.during_training.enabled=false"]), tmp_path / "demo")  # the demo's cache
    demo = next(d for d in (cache_dir / "demo").glob("*/warm_start") if (d.parent / "test.jsonl").exists())
    rows = next(d for d in demo.parent.glob("pairs-*") if (d / "train.jsonl").exists()) / "train.jsonl"
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(rows.read_text().splitlines(keepends=True)[:40]))
    capsys.readouterr()
    res = run(compose(["logger=none", "data=jsonl", f"data.train_file={data}", "data.val_size=2", "data.batch_size=8",
                       "model=hf", f"model.name_or_path={demo}", "trainer.max_steps=1", "save_policy=false",
                       "evaluate.during_training.enabled=false"]), tmp_path / "run")
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    first = (tmp_path / "run" / "before_after.md").read_text().splitlines()[0]
    assert first == ("Rests on 2 held-out preference pairs (pref_accuracy, logp_margin) and no test set, so no "
                     "translation metrics (data.test_file).")
    assert first in out and "warning: the held-out table's pref_accuracy and logp_margin rest on 2 pairs (fewer than " \
                            "50), too few to tell a change from noise" in err
    assert res["after"]["pairs"] == 2
