"""scripts/rounds.py on the demo: a 2-round run finishes, resumes after kill -9 in each stage to the weights of the
uninterrupted run, refuses a changed setting naming the keys, and scripts/compare.py reads it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

# The suite's small demo (the assets of conftest.SMALL_DEMO), 2 rounds of 40 fresh sources, 4 samples each plus the
# reference (the small warm start is too weak for samples alone to differ in demo QE), 3 optimizer steps a round.
BASE = ["inputs.n_train_sources=160", "inputs.n_val_sources=24", "inputs.n_test_sources=24",
        "+inputs.hidden_size=32", "+inputs.warm_start_steps=30", "rounds=2", "sources.per_round=40",
        "candidates.num_samples=4", "candidates.batch_size=8", "pool=samples_ref", "train.trainer.max_steps=3",
        "train.trainer.max_epochs=-1", "+train.evaluate.max_sentences=8",
        "+train.evaluate.during_training.max_sentences=8",
        "+train.checkpoint.every_n_steps=1", "+train.progress_every_seconds=0", "logger=csv", "progress=false"]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return env


def _with(extra) -> list[str]:
    """BASE with the keys of ``extra`` replaced by extra's values (Hydra refuses a key given twice)."""
    keys = {e.split("=", 1)[0].lstrip("+") for e in extra}
    return [b for b in BASE if b.split("=", 1)[0].lstrip("+") not in keys] + list(extra)


def _rounds(out: Path, extra: list[str] = ()) -> subprocess.CompletedProcess:
    args = [sys.executable, "scripts/rounds.py", f"hydra.run.dir={out}", *_with(extra)]
    return subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)


def _one_sentence(p: subprocess.CompletedProcess, rc: int, *needles: str) -> str:
    err = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert p.returncode == rc, (p.returncode, p.stderr[-3000:])
    assert len(err) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "round-2" / "train" / "policy" / "model.safetensors"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rounds") / "run"
    p = _rounds(out)
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def test_a_two_round_demo_run_finishes(finished):
    for k in (1, 2):
        rows = [json.loads(x) for x in (finished / f"round-{k}" / "candidates" / "train.zb-en.jsonl").read_text()
                .splitlines()]
        assert len(rows) == 40 and all(len(r["candidates"]) == 4 and len(r["duplicate_of"]) == 4 for r in rows)
        assert json.loads((finished / f"round-{k}" / "candidates" / "stage.json").read_text())["outputs"]["total"][
            "candidates"] == 4 * (40 + 24)
        pairs = json.loads((finished / f"round-{k}" / "pairs" / "stage.json").read_text())["outputs"]
        assert pairs["train"]["pairs"] > 0 and pairs["train"]["sources"] == 40
        res = json.loads((finished / f"round-{k}" / "train" / "results.json").read_text())
        assert res["global_steps"] == 3 and res["after"] and (finished / f"round-{k}" / "train" / "policy").is_dir()
        assert (finished / f"round-{k}" / "train" / "test_translations.jsonl").is_file()
    # round 2 starts from round 1's policy (so DPO's reference would be round 1's policy), and on fresh sources
    r2 = json.loads((finished / "round-2" / "train" / "results.json").read_text())
    assert r2["start_model"] == str(finished / "round-1" / "train" / "policy")
    src = [{json.loads(x)["source"] for x in (finished / f"round-{k}" / "pairs" / "train.jsonl").read_text()
            .splitlines()} for k in (1, 2)]
    assert not src[0] & src[1]
    assert json.loads((finished / "round-0" / "train" / "results.json").read_text())["global_steps"] == 0
    summary = json.loads((finished / "rounds.json").read_text())
    assert sorted(summary["rounds"]) == ["1", "2"] and "| 2 |" in (finished / "summary.md").read_text()


def _refused(out: Path, extra: list[str], error, *needles: str) -> str:
    """The rounds run of BASE + extra, in this process (as scripts/rounds.py runs it), stops with ``error``."""
    from conftest import compose
    from cpo.rounds.run import RoundsRun

    overrides = _with(extra)
    with pytest.raises(error) as e:
        RoundsRun(compose(overrides, config_name="rounds"), out, overrides).execute()
    for n in needles:
        assert n in str(e.value), str(e.value)
    return str(e.value)


def test_a_changed_setting_between_rounds_is_refused(finished):
    """A third round with another temperature: round 1's candidates were drawn at 1.0."""
    from cpo.runs import StaleRun

    e = _refused(finished, ["rounds=3", "candidates.temperature=0.7"], StaleRun,
                 "round-1/candidates was made with other settings", "decoding.temperature: 1.0 -> 0.7")
    assert "rerun=true" in e and not (finished / "round-3").exists()


@pytest.mark.slow
def test_the_same_command_reuses_every_stage_and_another_learning_rate_is_refused(finished):
    p = _rounds(finished)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout + p.stderr
    assert out.count("finished with these settings, reused") == 4 and out.count("already finished") == 3, out[-3000:]
    _one_sentence(_rounds(finished, ["train.optim.lr=0.003"]), 2, "optim.lr: 0.001 -> 0.003")
    assert not (finished / "round-3").exists()


def test_compare_reads_a_rounds_run(finished, tmp_path):
    from cpo import report

    jobs = report.load_sweep(finished)
    assert [j.overrides.get("round") for j in jobs] == ["0", "1", "2"] and all(j.ok for j in jobs)
    a = report.analyze(jobs, select_by="val/chrf", baseline="round=0", bootstrap_samples=50)
    assert {a.display(m) for m in a.methods} == {"start model (round 0)", "CPO (round 1)", "CPO (round 2)"}
    assert a.same_scorer("test/demo_qe", "round=2") and not a.same_scorer("test/chrf", "round=2")
    assert a.independence.exempt == ["round=0"]  # round 0 did not train
    report.write_report(a, tmp_path, plots=False, samples=50)
    assert "| CPO (round 2) |" in (tmp_path / "report.md").read_text()


def test_bad_settings_are_one_sentence(finished, tmp_path):
    from cpo.errors import ConfigError

    _refused(tmp_path / "a", ["pool.systems=[nosuch]"], ConfigError, "pool.systems: ['nosuch'] are not systems")
    _refused(tmp_path / "b", ["candidates.num_samples=0"], ConfigError,
             "candidates: num_samples + num_return_beams must be at least 1")
    _refused(tmp_path / "c", ["pool=offline", "pool.systems=[]"], ConfigError, "give at least two of the reference")
    assert not (tmp_path / "a" / "round-1").exists() and not (tmp_path / "b" / "round-1").exists()


def test_candidate_device_and_dtype_are_checked_before_anything_runs(tmp_path):
    from cpo.errors import ConfigError

    _refused(tmp_path / "e", ["candidates.dtype=bfloat17"], ConfigError, "candidates.dtype=bfloat17 is not one of auto")
    assert not (tmp_path / "e" / "round-1").exists()


def test_a_missing_input_file_is_its_own_sentence(tmp_path):
    """inputs=files with a path that is not there: the constructor's sentence, not Hydra's InstantiationException
    (which the app would print as a traceback)."""
    from conftest import compose
    from cpo.rounds.run import RoundsRun

    overrides = ["inputs=files", "inputs.train=/nope.jsonl", "inputs.val=/nope.jsonl", "logger=csv"]
    with pytest.raises(FileNotFoundError, match="inputs.train=/nope.jsonl: no such file"):
        RoundsRun(compose(overrides, config_name="rounds"), tmp_path / "d", overrides).execute()


@pytest.mark.slow
def test_an_app_error_is_one_sentence(tmp_path):
    _one_sentence(_rounds(tmp_path, ["pool.systems=[nosuch]"]), 2, "pool.systems: ['nosuch'] are not systems")


# ----------------------------------------------------------------------------------------- kill -9
def _kill_after(out: Path, needles: list[str]) -> str:
    """Start the run and kill -9 it right after the log lines ``needles`` were seen, in that order."""
    args = [sys.executable, "scripts/rounds.py", f"hydra.run.dir={out}", *BASE]
    proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, todo, t0 = [], list(needles), time.time()
    try:
        while todo and time.time() - t0 < 600:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if todo[0] in line:
                todo.pop(0)
        proc.kill()
        proc.communicate(timeout=60)
        assert not todo, f"never saw {todo[0]!r}:\n" + "".join(seen[-30:])
        return "".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
@pytest.mark.parametrize("stage,needles", [
    ("candidates", ["round-2/candidates: train zb-en"]),   # between its two splits
    ("pairs", ["round-2/pairs: train:"]),                   # between its two splits
    ("train", ["round-2/train: from", "step 2/"]),          # after its checkpoint of step 2
])
def test_kill_9_in_each_stage_resumes_to_the_uninterrupted_weights(finished, tmp_path, stage, needles):
    cut = tmp_path / "cut"
    _kill_after(cut, needles)
    assert not (cut / "round-2" / "train" / "results.json").exists()
    p = _rounds(cut)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout + p.stderr
    if stage == "train":
        assert "resuming from" in out, out[-3000:]
    else:  # the interrupted stage started over, the finished ones were reused
        assert "round-1/pairs: finished with these settings, reused" in out, out[-3000:]
    a, b = _weights(finished), _weights(cut)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


@pytest.mark.slow
def test_lora_dpo_rounds_continue_the_adapter_with_the_previous_round_as_reference(tmp_path):
    p = _rounds(tmp_path / "run", ["model=tiny_lora", "loss=dpo", "eval_start=false"])
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout + p.stderr
    # round 1: a fresh adapter (reference: the adapter switched off); round 2: round 1's adapter, continued, and a
    # frozen copy of it as the reference
    assert out.count("DPO reference: adapter_disabled") == 1 and out.count("DPO reference: reference_adapter") == 1
    cfg = (tmp_path / "run" / "round-2" / "train" / ".hydra" / "config.yaml").read_text()
    assert f"adapter: {tmp_path / 'run' / 'round-1' / 'train' / 'policy'}" in cfg


@pytest.mark.slow
def test_wandb_one_group_a_job_type_per_stage_and_the_round(tmp_path):
    from cpo.report.wandb_offline import read_offline_run

    p = _rounds(tmp_path / "run", ["rounds=1", "eval_start=false", "logger=wandb", "logger.mode=offline"])
    assert p.returncode == 0, p.stderr[-3000:]
    runs = {}
    for stage in ("candidates", "pairs", "train"):
        (found,) = (tmp_path / "run" / "round-1" / stage / "wandb_files" / "wandb").glob("offline-run-*")
        runs[stage] = read_offline_run(found)
    assert {r["group"] for r in runs.values()} == {"rounds/run"}
    assert {s: r["job_type"] for s, r in runs.items()} == {"candidates": "candidates", "pairs": "pairs",
                                                             "train": "train"}
    assert all(r["config"]["round"] == 1 for r in runs.values())
