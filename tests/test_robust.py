"""Runs that never lie: divergence, stale folders, preemption and kills, a second writer, corrupt checkpoints.

Each test drives `train.py` (or `cpo.train.run.run`) the way a researcher does and checks the exit status,
the one sentence, and what is (not) left in the run folder.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, SMALL_DEMO, compose
from cpo.train.config import ConfigError
from cpo.train.guards import Diverged
from cpo.train.run import run

QUICK = SMALL_DEMO + ["logger=csv", "evaluate.before_after=false", "evaluate.during_training.enabled=false"]


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return env


def _train(out: Path, extra: list[str], **kw) -> subprocess.CompletedProcess:
    args = [sys.executable, "train.py", f"hydra.run.dir={out}"] + QUICK + extra
    return subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600, **kw)


def _one_sentence(p: subprocess.CompletedProcess, rc: int, *needles: str) -> str:
    err = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert p.returncode == rc, (p.returncode, p.stderr[-2000:])
    assert len(err) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def _weights(ckpt: Path) -> dict:
    return torch.load(ckpt, weights_only=False, map_location="cpu")["state_dict"]


# ----------------------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("override", ["beta=inf", "optim.lr=1e6"])
def test_a_diverged_run_fails_and_leaves_nothing_finished(tmp_path, override):
    with pytest.raises(Diverged,
                       match=r"training diverged at step \d+: the (training loss|gradient norm) is (nan|inf)"):
        run(compose(QUICK + ["trainer.max_steps=30", override]), tmp_path)
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "policy").exists()


@pytest.mark.slow
def test_divergence_exits_3_with_one_sentence(tmp_path):
    p = _train(tmp_path, ["trainer.max_steps=20", "beta=inf"])
    _one_sentence(p, 3, "training diverged at step", "nothing was saved as finished")
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "policy").exists()


def test_half_precision_settings(tmp_path):
    with pytest.raises(ConfigError, match="model.dtype=float16 trains half-precision weights"):
        run(compose(QUICK + ["model.dtype=float16"]), tmp_path / "a")
    # fp16 mixed precision with the default fused AdamW trains (the fused optimizer is not used there).
    res = run(compose(QUICK + ["trainer.max_steps=3", "trainer.precision=16-mixed", "save_policy=false"]),
              tmp_path / "b")
    assert res["global_steps"] == 3


def test_a_finite_divergence_is_caught_by_the_nll_guard(tmp_path):
    # A learning rate that keeps the loss finite while the NLL of the preferred side explodes.
    with pytest.raises(Diverged, match="NLL of the preferred translations rose"):
        run(compose(QUICK + ["trainer.max_steps=60", "optim.lr=0.3", "optim.schedule=constant", "guard.window=3",
                             "guard.max_nll_ratio=1.5", "trainer.gradient_clip_val=null"]), tmp_path)
    assert not (tmp_path / "results.json").exists()


# ----------------------------------------------------------------------------------------- stale folders
def test_finished_results_are_reused_only_for_the_same_config(tmp_path, capsys):
    base = QUICK + ["trainer.max_steps=3", "save_policy=false"]
    first = run(compose(base), tmp_path)
    assert run(compose(base + ["trainer.log_every_n_steps=1"]), tmp_path)["fingerprint"] == first["fingerprint"]
    assert "already finished" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"beta: 0\.1 -> 0\.5.*rerun=true"):
        run(compose(base + ["beta=0.5"]), tmp_path)
    with pytest.raises(ConfigError, match=r"trainer.max_steps: 3 -> 5"):
        run(compose(QUICK + ["trainer.max_steps=5", "save_policy=false"]), tmp_path)
    again = run(compose(base + ["beta=0.5", "rerun=true"]), tmp_path)
    assert again["beta"] == 0.5 and json.loads((tmp_path / "results.json").read_text())["beta"] == 0.5
    assert len(list(tmp_path.glob("replaced-*/results.json"))) == 1  # the old results were kept, not lost


@pytest.mark.parametrize("override, message", [
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches must be >= 1"),  # was a ZeroDivisionError
    ("global_batch_size=12", "global_batch_size=12 is not a multiple of data.batch_size"),  # batch 8 does not divide 12
    ("optim.eps=0", "optim.eps must be in (0, 1)"),
])
def test_bad_settings_are_refused_before_training(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(compose(QUICK + [override]), tmp_path)
    assert not any(tmp_path.iterdir()) if tmp_path.exists() else True


# ----------------------------------------------------------------------------------------- preemption
def _wait_for(proc: subprocess.Popen, needle: str, timeout: float = 300) -> str:
    seen, t0 = [], time.time()
    while time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"never saw {needle!r}:\n" + "".join(seen[-30:]))


def _start(out: Path, extra: list[str]) -> subprocess.Popen:
    args = [sys.executable, "train.py", f"hydra.run.dir={out}"] + QUICK + extra
    return subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# 160 pairs in micro-batches of 4, two per step: 20 steps an epoch, so 24 steps cross into a second epoch.
LONG = ["trainer.max_epochs=2", "trainer.max_steps=24", "data.batch_size=4", "trainer.accumulate_grad_batches=2",
        "progress_every_seconds=0", "checkpoint.every_n_steps=4", "trainer.log_every_n_steps=1", "seed=3",
        "trainer.limit_val_batches=0"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole")
    p = _train(out, LONG)
    assert p.returncode == 0, p.stderr[-2000:]
    return out


def test_sigterm_saves_exits_143_and_resumes_to_the_uninterrupted_run(tmp_path, uninterrupted):
    """A plain run (its folder named by the clock): the message gives the command that resumes it, which does."""
    import shlex

    proc = subprocess.Popen([sys.executable, str(REPO / "train.py")] + QUICK + LONG, cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(proc, "step 9/")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    line = _one_sentence(subprocess.CompletedProcess([], proc.returncode, out, err), proc.returncode,
                         "stopped by SIGTERM at step", "after saving")
    cut = next((tmp_path / "outputs").glob("*/*"))  # outputs/<date>/<time>
    command = line.split("resume it with: ", 1)[1]
    assert f"hydra.run.dir={cut}" in command and "Traceback" not in err
    assert (cut / "checkpoints" / "last.ckpt").is_file() and not (cut / "results.json").exists()
    stopped_at = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert 9 <= stopped_at < 24

    args = shlex.split(command)  # the command the message gives, as a user pastes it
    assert args[0] in ("python", sys.executable) and args[1] == str(REPO / "train.py")
    resumed = subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stderr[-2000:]
    a, b = _weights(uninterrupted / "checkpoints" / "last.ckpt"), _weights(cut / "checkpoints" / "last.ckpt")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    # The metrics history survived the resume: one row per logged step, before and after the cut.
    with open(cut / "csv" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == list(range(24))
    res = json.loads((cut / "results.json").read_text())
    assert res["train"] and res["global_steps"] == 24


@pytest.mark.slow
def test_sigterm_while_loading_ends_with_one_message_also_when_sent_twice(tmp_path):
    """Before training starts (here while the demo's assets are built) SIGTERM ended the process without a word."""
    for twice in (False, True):
        out = tmp_path / f"run{int(twice)}"  # an empty cache: a few seconds of building the demo's assets
        proc = _start(out, QUICK + [f"cache_dir={tmp_path / f'cache{int(twice)}'}", "trainer.max_steps=2"])
        _wait_for(proc, "[demo]")
        proc.send_signal(signal.SIGTERM)
        if twice:
            time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
        stdout, err = proc.communicate(timeout=300)
        p = subprocess.CompletedProcess([], proc.returncode, stdout, err)
        line = _one_sentence(p, 128 + signal.SIGTERM, "training was stopped by SIGTERM before its first checkpoint: "
                                                      "start it over with: ")
        assert line.endswith(f"hydra.run.dir={out}"), line
        assert "policy tiny" not in stdout and not (out / "results.json").exists()


def test_the_guard_raises_once_outside_lightning_and_defers_to_it_inside():
    from cpo.train.sigterm import SigtermGuard

    raised, original = [], signal.getsignal(signal.SIGTERM)

    def stop(signum):
        raised.append(signum)
        return KeyboardInterrupt(f"stopped by {signum}")  # not a SystemExit, so that pytest sees it plainly

    try:
        with pytest.raises(KeyboardInterrupt), SigtermGuard(stop) as guard:
            with guard.lightning():
                os.kill(os.getpid(), signal.SIGTERM)  # inside Lightning: noted, acted on when Lightning returns
                time.sleep(0.1)
                assert guard.pending == signal.SIGTERM and not raised
            pytest.fail("not raised on leaving Lightning")
        assert raised == [signal.SIGTERM] and guard.stopped
        with pytest.raises(KeyboardInterrupt), SigtermGuard(stop) as guard:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
        guard._installed = True  # as if still held: a second signal while the first unwinds is ignored
        guard._handle(signal.SIGTERM, None)
        assert raised == [signal.SIGTERM, signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, original)


# Dropout kept on (a fresh LoRA adapter with dropout 0.1), validating at the epoch boundary: the dropout masks
# after a resume are the ones the uninterrupted run drew, because checkpoints carry the random generators' state.
DROPOUT = [x for x in LONG if x != "trainer.limit_val_batches=0"] + [
    "model=tiny_lora", "model.lora.dropout=0.1", "model.disable_dropout=false"]


@pytest.mark.slow
def test_a_resume_with_dropout_on_equals_the_uninterrupted_run(tmp_path):
    whole = _train(tmp_path / "whole", DROPOUT)
    assert whole.returncode == 0, whole.stderr[-2000:]
    proc = _start(tmp_path / "cut", DROPOUT)
    _wait_for(proc, "step 9/")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    resumed = _train(tmp_path / "cut", DROPOUT)
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stderr[-2000:]
    a, b = (_weights(tmp_path / d / "checkpoints" / "last.ckpt") for d in ("whole", "cut"))
    assert any("lora_" in k for k in a)
    diff = {k: float((a[k] - b[k]).abs().max()) for k in a}
    assert max(diff.values()) < 1e-6, sorted(diff.items(), key=lambda kv: -kv[1])[:3]  # 2.4e-4 without the RNG state


def test_a_fresh_adapter_starts_from_the_seed_alone(tmp_path):
    """The first run builds the demo's assets into an empty cache, the second finds them: same seed, same start."""
    args = QUICK + ["model=tiny_lora", "trainer.max_steps=1", "save_policy=false", f"cache_dir={tmp_path / 'cache'}"]
    cold, warm = (run(compose(args), tmp_path / d) for d in ("cold", "warm"))
    assert cold["global_steps"] == warm["global_steps"] == 1
    a, b = (_weights(tmp_path / d / "checkpoints" / "last.ckpt") for d in ("cold", "warm"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0  # 0.35 in lora_A before it was seeded


@pytest.mark.slow
def test_kill_9_resumes_from_the_last_periodic_checkpoint(tmp_path, uninterrupted):
    proc = _start(tmp_path / "cut", LONG)
    _wait_for(proc, "step 11/")
    proc.kill()
    proc.communicate(timeout=60)
    cut = tmp_path / "cut"
    assert torch.load(cut / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 8
    resumed = _train(cut, LONG)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _weights(uninterrupted / "checkpoints" / "last.ckpt"), _weights(cut / "checkpoints" / "last.ckpt")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


@pytest.mark.slow
def test_a_named_checkpoint_resumes_and_a_corrupt_one_is_one_sentence(tmp_path, capsys):
    base = QUICK + ["trainer.max_steps=6", "checkpoint.every_n_steps=3", "save_policy=false"]
    run(compose(base), tmp_path / "a")
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    copy = tmp_path / "step6.ckpt"
    copy.write_bytes(ckpt.read_bytes())
    with pytest.raises(ConfigError, match=r"another configuration.*trainer.max_steps: 6 -> 8"):
        run(compose(QUICK + ["trainer.max_steps=8", "checkpoint.every_n_steps=3", "save_policy=false",
                             f"ckpt_path={copy}"]), tmp_path / "b")
    res = run(compose(base + [f"ckpt_path={copy}"]), tmp_path / "c")
    assert f"resuming from {copy}" in capsys.readouterr().out and res["global_steps"] == 6 and res["val"]

    # A truncated last.ckpt in an unfinished folder: one sentence and a way forward, not a traceback.
    (tmp_path / "a" / "results.json").unlink()
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    p = _train(tmp_path / "a", ["trainer.max_steps=6", "checkpoint.every_n_steps=3", "save_policy=false"])
    _one_sentence(p, 2, "last.ckpt is truncated or corrupt", "delete it to start this run over")


# ----------------------------------------------------------------------------------------- one writer
@pytest.mark.slow
def test_a_second_writer_is_refused(tmp_path):
    from cpo.runs import RunFolder

    with RunFolder(tmp_path):
        p = _train(tmp_path, ["trainer.max_steps=2"])
    _one_sentence(p, 2, "is in use by another run", f"pid {os.getpid()}")
    assert not (tmp_path / "results.json").exists()
    assert run(compose(QUICK + ["trainer.max_steps=2", "save_policy=false"]),
               tmp_path)["global_steps"] == 2  # free again


@pytest.mark.slow
def test_a_diverged_grid_point_does_not_stop_the_sweep(tmp_path):
    """A learning rate that diverges is a result of the grid: the sweep runs on and exits 3, naming the job."""
    args = [sys.executable, "train.py", "-m", "beta=inf,0.1", "trainer.max_steps=3", "save_policy=false",
            f"hydra.sweep.dir={tmp_path}"] + QUICK
    p = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 3, p.stderr[-3000:]
    assert "sweep finished, but 1 of 2 jobs diverged" in p.stderr and "#0 (beta=inf)" in p.stderr
    finished = [d.name for d in tmp_path.iterdir() if (d / "results.json").exists()]
    assert len(finished) == 1 and finished[0].startswith("beta=0.1,"), finished


def test_ranks_started_beside_rank_0_follow_its_decision(tmp_path, monkeypatch):
    """Under torchrun/srun every rank runs train.py: ranks 1..N-1 wait for rank 0's decision for this launch."""
    from lightning.pytorch.utilities import rank_zero_only

    from cpo.train import ranks as training

    monkeypatch.delenv("CPO_RUN_DECISION", raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-7")
    monkeypatch.setenv("CPO_RANK_WAIT_S", "1")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    cfg = compose(QUICK + ["trainer.max_steps=2"])
    with pytest.raises(ConfigError, match="rank 1 waited 1 s for rank 0"):
        run(cfg, tmp_path)
    this_launch = training.launch_id()
    assert this_launch.startswith("launch-7/")
    (tmp_path / training.DECISION_FILE).write_text(json.dumps({"launch": "launch-6", "skip": True}))
    with pytest.raises(ConfigError, match="heard nothing"):  # an older launch's decision is not this one's
        run(cfg, tmp_path)
    (tmp_path / training.DECISION_FILE).write_text(json.dumps({"launch": this_launch, "skip": True}))
    assert run(cfg, tmp_path) == {} and not (tmp_path / ".run.lock").exists()  # never took the lock


def test_half_precision_weights_by_trainer_precision_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="trainer.precision=16-true trains half-precision weights"):
        run(compose(QUICK + ["trainer.precision=16-true"]), tmp_path)


def test_the_guard_leaves_fp16_overflows_to_the_grad_scaler_and_resumes_with_its_state():
    """An overflowing fp16 step is skipped by the GradScaler by design; without a scaler it is a divergence."""
    from types import SimpleNamespace

    from cpo.train.guards import DivergenceGuard

    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([float("inf"), 0.0, 0.0])
    opt = SimpleNamespace(param_groups=[{"params": [p]}])
    strategy = SimpleNamespace(reduce_boolean_decision=lambda bad, all: bad)
    scaled = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=object()), strategy=strategy, global_step=5)
    DivergenceGuard().on_before_optimizer_step(scaled, None, opt)  # no raise
    plain = SimpleNamespace(precision_plugin=SimpleNamespace(), strategy=strategy, global_step=5)
    with pytest.raises(Diverged, match="gradient norm is inf"):
        DivergenceGuard().on_before_optimizer_step(plain, None, opt)
    # Its baseline travels in checkpoints: a resumed guard judges against the start of the whole run (a checkpoint
    # of the guard before short runs were judged is read too).
    a = DivergenceGuard(window=2)
    a.load_state_dict({"first": [1.0, 1.2], "recent": [3.0], "step": 7})
    assert a.state_dict() == {"head": [1.0, 1.2, 3.0], "recent": [3.0], "count": 3, "step": 7}
    b = DivergenceGuard(window=2)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()


def _feed(guard, nlls):
    """The guard's view of a run: one optimizer step per NLL; returns the step it stopped at (None: never)."""
    from types import SimpleNamespace

    strategy = SimpleNamespace(reduce_boolean_decision=lambda bad, all: bad)
    for step, nll in enumerate(nlls):
        trainer = SimpleNamespace(global_step=step, strategy=strategy,
                                  callback_metrics={"train/nll_loss": torch.tensor(nll)})
        try:
            guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.5)}, None, step)
        except Diverged:
            return step
    return None


def test_the_nll_guard_judges_short_runs_too():
    """A run of fewer than 2 x guard.window steps that destroys its model was saved as a success: the guard needed
    two full windows. Now the second half of a short run is judged against its first half."""
    from cpo.train.guards import DivergenceGuard

    assert _feed(DivergenceGuard(window=10), [0.1, 0.1, 0.2, 6.0, 7.0]) == 3  # step 3 of a 5-step run
    # A normal short run (noisy, slowly falling or rising) is never stopped, nor one that was bad from the start.
    assert _feed(DivergenceGuard(window=10), [2.1, 1.6, 2.4, 1.9, 2.6, 2.2, 3.0, 2.0]) is None
    assert _feed(DivergenceGuard(window=10), [0.05, 0.09, 0.04, 0.12, 0.2, 0.1]) is None  # triples, but under 1 nat
    # Long runs are judged as before: the last window against the first.
    slow = [1.0] * 10 + [1.2] * 9 + [5.0] * 10
    assert _feed(DivergenceGuard(window=10), slow) == 23  # steps 14-23 average 3.1: over 3 x 1.0 and 1 nat above it


def test_a_data_file_rewritten_at_the_same_path_is_another_run(tmp_path, cache_dir):
    """The fingerprint covers the files a config names: new pairs in the same prefs.jsonl are not 'finished'."""
    run(compose(QUICK + ["trainer.max_steps=1", "save_policy=false"]), tmp_path / "demo")  # builds the cache
    demo = next(d for d in (cache_dir / "demo").glob("*/warm_start") if (d.parent / "test.jsonl").exists())
    rows = next(d for d in demo.parent.glob("pairs-*") if (d / "train.jsonl").exists()) / "train.jsonl"
    data = tmp_path / "prefs.jsonl"
    data.write_bytes(rows.read_bytes())
    cfg = compose(["logger=csv", "evaluate.before_after=false", "evaluate.during_training.enabled=false",
                   "data=jsonl", f"data.train_file={data}", "data.batch_size=8", "model=hf",
                   f"model.name_or_path={demo}", "model.dtype=float32", "trainer.max_steps=2", "save_policy=false"])
    run(cfg, tmp_path / "run")
    assert run(cfg, tmp_path / "run")["global_steps"] == 2  # unchanged: skipped as finished
    data.write_text("".join(rows.read_text().splitlines(keepends=True)[::2]))
    with pytest.raises(ConfigError, match=r"inputs\.files\.data\.train_file"):
        run(cfg, tmp_path / "run")
