"""cpo.runs: fingerprints, one writer per folder, skip/resume/fresh decisions, atomic checkpoints, resumable logs."""
from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import compose
from cpo.train.config import ConfigError
from cpo.runs import (
    AtomicCheckpointIO, CorruptCheckpoint, FolderBusy, ResumableCSVLogger, ResumableDataLoader, RunFolder,
    RunInterrupted, StaleRun, check_checkpoint, checkpoint_callback, config_diff, decide_run, fingerprint, last_logged,
    loop_position, read_metrics, read_state,
)
from cpo.runs.fingerprint import NEUTRAL_KEYS, canonical_config



@pytest.fixture(scope="module")
def cfg() -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose(), resolve=True)


def changed(cfg: dict, dotted: str, value) -> dict:
    out = json.loads(json.dumps(cfg))
    *parents, last = dotted.split(".")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


# ---- fingerprint ----------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value", [
    ("logger.name", "csv"), ("trainer.enable_progress_bar", False), ("trainer.log_every_n_steps", 1),
    ("evaluate.during_training.table_rows", 0), ("cache_dir", "/elsewhere"), ("experiment_name", "x"),
    ("resume", False), ("save_policy", False), ("checkpoint.every_n_steps", 50), ("rerun", True),
    ("ckpt_path", "/a/last.ckpt"), ("data.num_workers", 4), ("progress_every_seconds", 5),
])
def test_fingerprint_ignores_keys_that_do_not_change_the_result(cfg, key, value):
    assert fingerprint(changed(cfg, key, value)) == fingerprint(cfg)


@pytest.mark.parametrize("key,value", [
    ("beta", 0.5), ("trainer.max_steps", 3), ("optim.lr", 2e-4), ("seed", 1), ("loss.alpha", 0.0),
    ("data.candidates", ["strong", "ref", "weak", "warm_start"]),  # order breaks score ties
    ("trainer.val_check_interval", 1),  # int 1 = every batch, float 1.0 = once an epoch
    ("evaluate.max_sentences", 10), ("model.dtype", "bfloat16"),
])
def test_fingerprint_changes_with_keys_that_change_the_result(cfg, key, value):
    assert fingerprint(changed(cfg, key, value)) != fingerprint(cfg)


def test_fingerprint_is_canonical_and_accepts_a_dictconfig(cfg):
    reordered = dict(reversed(list(cfg.items())))
    assert fingerprint(reordered) == fingerprint(cfg)
    assert fingerprint(compose()) == fingerprint(cfg)
    assert len(fingerprint(cfg)) == 64


def test_neutral_keys_name_real_config_keys(cfg):
    """A typo in NEUTRAL_KEYS would silently count a neutral key; run-time keys the app adds are allowed."""
    runtime = {"rerun", "ckpt_path", "checkpoint", "debug", "hydra", "resume", "progress_every_seconds"}
    for dotted in NEUTRAL_KEYS:
        node, present = cfg, True
        for part in dotted.split("."):
            present = isinstance(node, dict) and part in node
            node = node.get(part) if present else None
        assert present or dotted in runtime, dotted
    assert "logger" not in canonical_config(cfg) and "beta" in canonical_config(cfg)


def test_config_diff_names_the_keys_that_differ(cfg):
    new = changed(changed(changed(cfg, "beta", 0.5), "trainer.max_steps", -1), "logger.name", "csv")
    old = changed(cfg, "trainer.max_steps", 3)
    assert config_diff(old, new) == ["beta: 0.1 -> 0.5", "trainer.max_steps: 3 -> -1"]
    assert config_diff(cfg, changed(cfg, "optim.extra", 1)) == ["optim.extra: (absent) -> 1"]
    assert config_diff(cfg, cfg) == []


# ---- one writer -----------------------------------------------------------------------------------

# Another process holding a folder's lock the way RunFolder.acquire does (flock, then its record), recording
# the pid given (its own for "self"), without the seconds that importing cpo (torch) takes.
HOLD = """
import json, os, socket, sys, time, fcntl
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
pid = os.getpid() if sys.argv[2] == "self" else int(sys.argv[2])
since = time.strftime("%Y-%m-%d %H:%M:%S") if sys.argv[2] == "self" else "2020-01-01 12:00:01"
os.write(fd, json.dumps({"pid": pid, "host": socket.gethostname(), "since": since}).encode())
print("locked", flush=True)
sys.stdin.read()
"""


def hold(lock: Path, pid: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(lock), pid], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_second_process_is_refused_while_the_first_holds_the_folder(tmp_path, caplog):
    holder = hold(tmp_path / ".run.lock", "self")
    try:
        with pytest.raises(FolderBusy) as e:
            RunFolder(tmp_path).acquire()
        msg = str(e.value)
        assert isinstance(e.value, ConfigError) and "\n" not in msg
        assert re.fullmatch(rf"{re.escape(str(tmp_path))} is in use by another run \(pid {holder.pid} on host "
                            rf"{re.escape(socket.gethostname())} since \d\d:\d\d:\d\d\): wait for it, or give this "
                            rf"run another folder \(hydra.run.dir=..., or hydra.sweep.dir=... for a sweep\)", msg), msg
    finally:
        holder.kill()  # SIGKILL: no clean release, the record stays in the lock file
        holder.wait()
    with caplog.at_level(logging.WARNING, logger="cpo.runs.folder"):
        folder = RunFolder(tmp_path).acquire()
    assert f"took over the lock left by pid {holder.pid}" in caplog.text
    record = json.loads((tmp_path / ".run.lock").read_text())
    assert (record["pid"], record["host"]) == (os.getpid(), socket.gethostname())
    folder.release()


def test_the_lock_is_released_on_exit_and_leaves_no_record(tmp_path, caplog):
    with RunFolder(tmp_path) as folder:
        assert folder.locked and (tmp_path / ".run.lock").is_file()
        with pytest.raises(FolderBusy, match="earlier run in this same process"):
            RunFolder(tmp_path).acquire()
    assert not (tmp_path / ".run.lock").exists()
    with caplog.at_level(logging.WARNING, logger="cpo.runs.folder"), RunFolder(tmp_path):
        pass
    assert "took over" not in caplog.text


def test_a_lock_recorded_by_a_dead_pid_is_taken_over_even_if_a_child_still_holds_it(tmp_path, caplog):
    dead = _dead_pid()
    # A leftover child (say a DataLoader worker) inherited the locked descriptor of a run that died.
    child = hold(tmp_path / ".run.lock", str(dead))
    try:
        with caplog.at_level(logging.WARNING, logger="cpo.runs.folder"):
            folder = RunFolder(tmp_path).acquire()
        assert f"took over the lock of pid {dead} on host" in caplog.text
        # ... and the new lock really excludes: a live recorded holder is refused.
        live = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path / ".run.lock"), "1"], input="",
                              capture_output=True, text=True)
        assert live.returncode != 0 and "BlockingIOError" in live.stderr
        folder.release()
    finally:
        child.kill()
        child.wait()


def test_a_lock_of_a_live_pid_on_this_host_is_not_taken_over(tmp_path):
    holder = hold(tmp_path / ".run.lock", str(os.getppid()))
    try:
        with pytest.raises(FolderBusy, match=f"pid {os.getppid()} on host .* since 2020-01-01 12:00:01"):
            RunFolder(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()


# ---- decisions ------------------------------------------------------------------------------------

def fake_checkpoint(path: Path, step: int, cfg: dict | None, log_step: int | None = None) -> Path:
    """A torch archive shaped like a Lightning checkpoint (what check_checkpoint reads), with or without identity."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"global_step": step, "epoch": 0, "state_dict": {"w": torch.zeros(3)},
            "loops": {"fit_loop": {"epoch_loop.state_dict": {
                "_batches_that_stepped": step - 1 if log_step is None else log_step}}}}
    if cfg is not None:
        ckpt["cpo_run"] = {"fingerprint": fingerprint(cfg), "config": canonical_config(cfg)}
    torch.save(ckpt, path)
    return path


def finished(out: Path, cfg: dict, with_fingerprint: bool = True) -> dict:
    results = {"config": cfg, "val": {"val/loss": 0.5}}
    if with_fingerprint:
        results["fingerprint"] = fingerprint(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results))
    return results


def test_an_empty_folder_starts_fresh(tmp_path, cfg):
    d = RunFolder(tmp_path).decide(cfg)
    assert (d.action, d.move_aside, d.fingerprint) == ("fresh", (), fingerprint(cfg))


def test_a_finished_run_with_the_same_fingerprint_is_skipped(tmp_path, cfg):
    results = finished(tmp_path, cfg)
    d = RunFolder(tmp_path).decide(changed(cfg, "logger.name", "none"))
    assert d.action == "skip" and d.results == results


def test_a_finished_run_of_another_config_is_refused_naming_the_keys(tmp_path, cfg):
    finished(tmp_path, changed(cfg, "trainer.max_steps", 3))
    with pytest.raises(StaleRun) as e:
        RunFolder(tmp_path).decide(changed(cfg, "beta", 0.5))
    msg = str(e.value)
    assert isinstance(e.value, ConfigError) and "\n" not in msg
    assert "beta: 0.1 -> 0.5" in msg and "trainer.max_steps: 3 -> -1" in msg
    assert "hydra.run.dir=" in msg and "rerun=true" in msg


def test_a_run_finished_by_an_older_version_without_fingerprint_is_refused(tmp_path, cfg):
    finished(tmp_path, cfg, with_fingerprint=False)
    with pytest.raises(StaleRun, match="older version of cpo that stored no fingerprint.*rerun=true"):
        RunFolder(tmp_path).decide(cfg)


def test_an_unreadable_results_json_is_refused(tmp_path, cfg):
    (tmp_path / "results.json").write_text('{"val": ')
    with pytest.raises(StaleRun, match="results.json cannot be read"):
        RunFolder(tmp_path).decide(cfg)


def test_an_unfinished_run_with_a_matching_checkpoint_resumes(tmp_path, cfg):
    ck = fake_checkpoint(tmp_path / "checkpoints" / "last.ckpt", 40, cfg)
    d = RunFolder(tmp_path).decide(cfg)
    assert (d.action, d.ckpt_path, d.step, d.log_step) == ("resume", str(ck), 40, 39)


def test_a_checkpoint_of_another_config_is_refused(tmp_path, cfg):
    fake_checkpoint(tmp_path / "checkpoints" / "last.ckpt", 40, changed(cfg, "optim.lr", 1.0))
    with pytest.raises(StaleRun, match=r"last.ckpt was written by a run of another config.*optim.lr: 1.0 -> 0.0001"):
        RunFolder(tmp_path).decide(cfg)


def test_a_checkpoint_without_fingerprint_resumes_only_under_a_matching_run_json(tmp_path, cfg):
    fake_checkpoint(tmp_path / "checkpoints" / "last.ckpt", 40, None)
    with pytest.raises(StaleRun, match="stored no fingerprint"):
        RunFolder(tmp_path).decide(cfg)
    (tmp_path / "run.json").write_text(json.dumps({"fingerprint": fingerprint(cfg), "config": cfg}))
    assert RunFolder(tmp_path).decide(cfg).action == "resume"


def test_an_explicit_ckpt_path_is_checked_like_the_folders_own(tmp_path, cfg):
    other = fake_checkpoint(tmp_path / "elsewhere" / "step40.ckpt", 40, cfg)
    (tmp_path / "run" / "csv").mkdir(parents=True)  # another run's history: not continued from that checkpoint
    d = RunFolder(tmp_path / "run").decide(cfg, ckpt_path=str(other))
    assert (d.action, d.ckpt_path, d.step, d.log_step, d.move_aside) == ("resume", str(other), 40, None, ("csv",))
    own = fake_checkpoint(tmp_path / "run" / "hpc_ckpt_2.ckpt", 50, cfg)
    d = RunFolder(tmp_path / "run").decide(cfg, ckpt_path=str(own))
    assert (d.ckpt_path, d.log_step, d.move_aside) == (str(own), 49, ())
    with pytest.raises(StaleRun, match="seed: 42 -> 7.*leave out ckpt_path"):
        RunFolder(tmp_path / "run").decide(changed(cfg, "seed", 7), ckpt_path=str(other))
    with pytest.raises(ConfigError, match="ckpt_path=.*nope.ckpt: no such file"):
        RunFolder(tmp_path / "run").decide(cfg, ckpt_path=str(tmp_path / "nope.ckpt"))
    with pytest.raises(ConfigError, match="pass only one of them"):
        RunFolder(tmp_path / "run").decide(cfg, rerun=True, ckpt_path=str(other))


def test_the_newest_of_last_and_slurm_hpc_checkpoints_is_resumed(tmp_path, cfg):
    fake_checkpoint(tmp_path / "checkpoints" / "last.ckpt", 40, cfg)
    hpc = fake_checkpoint(tmp_path / "hpc_ckpt_1.ckpt", 55, cfg)
    assert RunFolder(tmp_path).decide(cfg).ckpt_path == str(hpc)


def test_a_corrupt_checkpoint_stops_the_decision_but_not_a_rerun(tmp_path, cfg):
    ck = fake_checkpoint(tmp_path / "checkpoints" / "last.ckpt", 40, cfg)
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    with pytest.raises(CorruptCheckpoint, match="last.ckpt is truncated or corrupt"):
        RunFolder(tmp_path).decide(cfg)
    assert RunFolder(tmp_path).decide(cfg, rerun=True).move_aside == ("checkpoints",)


def test_rerun_moves_every_old_output_aside_and_loses_nothing(tmp_path, cfg):
    finished(tmp_path, changed(cfg, "beta", 0.3))
    fake_checkpoint(tmp_path / "checkpoints" / "last.ckpt", 40, cfg)
    for name in ("policy/adapter.bin", "csv/metrics.csv", "wandb_files/run/x", "before_after.md", "run.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    (tmp_path / ".hydra").mkdir()
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*")
              if p.is_file() and ".hydra" not in p.parts}
    folder = RunFolder(tmp_path)
    d = folder.decide(cfg, rerun=True)
    assert d.action == "fresh" and set(d.move_aside) == {"results.json", "run.json", "checkpoints", "policy", "csv",
                                                        "before_after.md", "wandb_files"}
    replaced = folder.start(d, cfg)
    assert replaced.parent == tmp_path and replaced.name.startswith("replaced-")
    after = {p.relative_to(replaced): p.read_bytes() for p in replaced.rglob("*") if p.is_file()}
    assert after == before
    assert {p.name for p in tmp_path.iterdir()} == {".hydra", "run.json", replaced.name}
    assert json.loads((tmp_path / "run.json").read_text())["fingerprint"] == fingerprint(cfg)
    assert folder.decide(cfg).action == "fresh"  # run.json alone, no checkpoint yet


def test_leftovers_of_an_attempt_that_died_before_its_first_checkpoint_are_moved_aside(tmp_path, cfg):
    (tmp_path / "csv").mkdir()
    (tmp_path / "run.json").write_text(json.dumps({"fingerprint": "old"}))
    d = decide_run(read_state(tmp_path), cfg)
    assert d.action == "fresh" and set(d.move_aside) == {"csv", "run.json"}


def test_finish_writes_results_with_the_fingerprint_and_the_folder_then_skips(tmp_path, cfg):
    folder = RunFolder(tmp_path)
    with pytest.raises(ValueError, match="before start"):
        folder.finish({"x": 1})
    folder.start(folder.decide(cfg), cfg)
    written = folder.finish({"val": {"val/loss": 0.25}})
    assert json.loads((tmp_path / "results.json").read_text()) == written
    assert written["fingerprint"] == fingerprint(cfg)
    assert folder.decide(cfg).action == "skip"


def test_discard_outputs_moves_finished_looking_files_of_a_failed_run(tmp_path, cfg):
    folder = RunFolder(tmp_path)
    assert folder.discard_outputs() is None
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / "before_after.md").write_text("table")
    fake_checkpoint(tmp_path / "checkpoints" / "last.ckpt", 4, cfg)
    dest = folder.discard_outputs()
    assert dest.name.startswith("failed-")
    assert (dest / "policy" / "model.safetensors").read_bytes() == b"partial" and (dest / "before_after.md").exists()
    assert not (tmp_path / "policy").exists() and (tmp_path / "checkpoints" / "last.ckpt").exists()


# ---- checkpoints ----------------------------------------------------------------------------------

def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(1000)}}, path)
    good = path.read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.zeros(1000)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == good
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert io.load_checkpoint(path)["global_step"] == 1


def test_a_full_disk_during_the_file_write_leaves_the_previous_checkpoint(tmp_path):
    """The write itself fails (a file-size limit stands in for a full disk), not the serialisation."""
    import resource

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(10)}}, path)
    good = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        # torch's zip writer turns the OSError into a RuntimeError
        with pytest.raises((OSError, RuntimeError), match="File too large|unexpected pos"):
            AtomicCheckpointIO().save_checkpoint({"global_step": 2, "state_dict": {"w": torch.ones(100_000)}}, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert check_checkpoint(path)["global_step"] == 1


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_checkpoints_get_the_mode_a_plain_open_would_give(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = tmp_path / "last.ckpt"
        AtomicCheckpointIO().save_checkpoint({"global_step": 1}, path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_temp_file_left_by_a_killed_save_is_removed_by_the_next(tmp_path):
    path = tmp_path / "last.ckpt"
    stale = tmp_path / f".last.ckpt.tmp-{_dead_pid()}"
    stale.write_bytes(b"PK half")
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_check_checkpoint_reads_identity_and_step_without_loading(tmp_path, cfg):
    ck = fake_checkpoint(tmp_path / "a.ckpt", 12, cfg, log_step=11)
    info = check_checkpoint(ck)
    assert info == {"path": str(ck), "global_step": 12, "epoch": 0, "log_step": 11,
                    "fingerprint": fingerprint(cfg), "config": canonical_config(cfg)}


def test_truncated_and_other_corrupt_checkpoints_are_one_sentence(tmp_path, cfg):
    ck = fake_checkpoint(tmp_path / "a.ckpt", 12, cfg)
    data = ck.read_bytes()
    cases = {"truncated": data[: len(data) - 100], "empty": b"", "text": b"not a checkpoint\n"}
    for name, content in cases.items():
        bad = tmp_path / f"{name}.ckpt"
        bad.write_bytes(content)
        with pytest.raises(CorruptCheckpoint) as e:
            check_checkpoint(bad)
        msg = str(e.value)
        assert msg.startswith(f"{bad} is truncated or corrupt (") and "ckpt_path=<file>" in msg and "\n" not in msg
        with pytest.raises(CorruptCheckpoint):
            AtomicCheckpointIO().load_checkpoint(bad)  # what Lightning calls: a sentence, not a torch traceback
    with zipfile.ZipFile(tmp_path / "zip.ckpt", "w") as z:
        z.writestr("archive/other", b"x")
    with pytest.raises(CorruptCheckpoint, match="without the data.pkl record"):
        check_checkpoint(tmp_path / "zip.ckpt")
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(CorruptCheckpoint, match="no Lightning training state"):
        check_checkpoint(tmp_path / "list.ckpt")
    (tmp_path / "dir.ckpt").mkdir()
    with pytest.raises(CorruptCheckpoint, match="no DeepSpeed"):
        check_checkpoint(tmp_path / "dir.ckpt")
    fake_checkpoint(tmp_path / "ds.ckpt" / "checkpoint" / "mp_rank_00_model_states.pt", 9, cfg)
    assert check_checkpoint(tmp_path / "ds.ckpt")["global_step"] == 9
    with pytest.raises(FileNotFoundError):
        check_checkpoint(tmp_path / "missing.ckpt")


# ---- training with the pieces: a tiny model, real Lightning loops ----------------------------------

N, BATCH = 48, 8  # 6 batches an epoch


class ShuffledBatches(torch.utils.data.Sampler):
    """Like cpo.data's WindowBatchSampler: a new order per epoch from seed + epoch, set through set_epoch."""

    def __init__(self, seed: int = 3):
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = list(range(N))
        random.Random(self.seed + self.epoch).shuffle(order)
        return iter([order[i : i + BATCH] for i in range(0, N, BATCH)])

    def __len__(self) -> int:
        return N // BATCH


def tiny_module(extra_metric_from: int | None = None):
    import lightning as L

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, 4, generator=g), torch.randn(N, 1, generator=g)

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = torch.nn.Linear(4, 1)

        def training_step(self, idx, i):
            loss = torch.nn.functional.mse_loss(self.lin(x[idx]), y[idx])
            self.log("train/loss", loss)
            if extra_metric_from is not None and self.global_step >= extra_metric_from:
                self.log("train/extra", float(self.global_step))
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return Tiny()


class Stop(Exception):
    pass


def fit(out: Path, resumable: bool = True, stop_at: int | None = None, sigterm_at: int | None = None, every: int = 4,
        minutes: float | None = None, accumulate: int = 1, epochs: int = 2, fp: str | None = "fp", ckpt=None,
        log_step=None, sigterm_batch: int | None = None):
    """Train the tiny model in ``out``; ``stop_at`` raises at that step (what a kill leaves), ``sigterm_at`` signals."""
    import lightning as L

    class Interrupt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == stop_at:
                raise Stop()
            if trainer.global_step == sigterm_at or args[-1] == sigterm_batch:  # args: module, outputs, batch, idx
                os.kill(os.getpid(), signal.SIGTERM)

    trainer_box = {}
    if resumable:
        loader = ResumableDataLoader(list(range(N)), ShuffledBatches(), collate_fn=torch.tensor,
                                     position=lambda: loop_position(trainer_box["t"]))
    else:
        loader = torch.utils.data.DataLoader(list(range(N)), batch_sampler=ShuffledBatches(), collate_fn=torch.tensor)
    ckpt_cb = checkpoint_callback(out, every_n_steps=every, every_minutes=minutes, fingerprint=fp, config={"fp": fp})
    trainer = L.Trainer(
        default_root_dir=str(out), max_epochs=epochs, accelerator="cpu", devices=1,
        logger=ResumableCSVLogger(out, resume_step=log_step),
        callbacks=[Interrupt(), ckpt_cb], plugins=[AtomicCheckpointIO()], enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=1, accumulate_grad_batches=accumulate)
    trainer_box["t"] = trainer
    module = tiny_module()
    trainer.fit(module, loader, ckpt_path=ckpt)
    return module.lin.weight.detach().clone(), trainer


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    weights, trainer = fit(out)
    return weights, read_metrics(out / "csv" / "metrics.csv")


def resume(out: Path, **kw):
    info = check_checkpoint(out / "checkpoints" / "last.ckpt")
    return fit(out, ckpt=info["path"], log_step=info["log_step"], **kw), info


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("stop_at,every,saved", [(7, 4, 4), (11, 4, 8), (8, 3, 6)])  # mid-epoch 1, 2; epoch boundary
def test_a_resume_after_a_kill_equals_the_uninterrupted_run_and_keeps_its_history(
        tmp_path, uninterrupted, stop_at, every, saved):
    whole_weights, (whole_header, whole_rows) = uninterrupted
    with pytest.raises(Stop):
        fit(tmp_path, stop_at=stop_at, every=every)
    (weights, trainer), info = resume(tmp_path, every=every)
    assert info["global_step"] == saved and trainer.global_step == 12
    assert torch.equal(weights, whole_weights)
    header, rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(12)) == [int(r["step"]) for r in whole_rows]
    assert [r["train/loss"] for r in rows] == [r["train/loss"] for r in whole_rows]  # old rows intact, same values


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_plain_dataloader_does_not_resume_mid_epoch_exactly(tmp_path, uninterrupted):
    """Why ResumableDataLoader exists: the same kill and resume with a plain DataLoader trains on other batches."""
    with pytest.raises(Stop):
        fit(tmp_path, resumable=False, stop_at=7)
    (weights, _), _ = resume(tmp_path, resumable=False)
    assert not torch.equal(weights, uninterrupted[0])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_checkpoints_every_n_steps_at_the_end_and_after_optimizer_steps_only(tmp_path, monkeypatch):
    saved: list[int] = []
    real = AtomicCheckpointIO.save_checkpoint
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", lambda self, ck, path, storage_options=None: (
        saved.append(ck["global_step"]), real(self, ck, path, storage_options)))
    fit(tmp_path, every=5, epochs=1)  # 6 steps: at 5, and at the end
    assert saved == [5, 6]
    saved.clear()
    fit(tmp_path / "acc", every=2, accumulate=2, epochs=2)  # 3 steps an epoch
    assert saved == [2, 4, 6]
    saved.clear()
    fit(tmp_path / "time", every=None, minutes=1e-9, epochs=1)  # due at every step, never twice for one
    assert saved == [1, 2, 3, 4, 5, 6]
    ck = check_checkpoint(tmp_path / "time" / "checkpoints" / "last.ckpt")
    assert ck["global_step"] == 6 and ck["fingerprint"] == "fp"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sigterm_saves_a_checkpoint_that_resumes_exactly(tmp_path, uninterrupted):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    with pytest.raises(SIGTERMException):
        fit(tmp_path, sigterm_at=9, every=100)
    (weights, _), info = resume(tmp_path, every=100)
    assert info["global_step"] == 9 and torch.equal(weights, uninterrupted[0])


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("batch,saved", [(3, 2), (4, None)])
def test_sigterm_saves_only_at_the_end_of_an_accumulation_window(tmp_path, batch, saved):
    """accumulate=2: batch 3 (0-based) ends step 2; after batch 4 half of step 3's gradients exist only in memory."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    with pytest.raises(SIGTERMException):
        fit(tmp_path, accumulate=2, every=0, sigterm_batch=batch)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert (check_checkpoint(last)["global_step"] if last.exists() else None) == saved


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_restoring_a_checkpoint_of_another_fingerprint_is_refused_by_the_callback(tmp_path):
    with pytest.raises(Stop):
        fit(tmp_path, stop_at=5)
    with pytest.raises(StaleRun, match="another configuration"):
        fit(tmp_path, fp="other", ckpt=str(tmp_path / "checkpoints" / "last.ckpt"))


def test_checkpoint_callback_accepts_steps_and_minutes_together(tmp_path):
    cb = checkpoint_callback(tmp_path, every_n_steps=100, every_minutes=30)
    assert (cb.every_n_steps, cb.every_seconds, cb.dirpath) == (100, 1800, str(tmp_path / "checkpoints"))
    with pytest.raises(ValueError, match="every_minutes"):
        checkpoint_callback(tmp_path, every_minutes=0)


# ---- metrics history ------------------------------------------------------------------------------

def test_a_resumed_csv_keeps_old_rows_drops_later_ones_and_adds_a_column(tmp_path):
    first = ResumableCSVLogger(tmp_path)
    for s in range(10):
        first.log_metrics({"train/loss": 10.0 - s}, step=s)
    first.save()
    second = ResumableCSVLogger(tmp_path, resume_step=5)
    for s in range(6, 13):
        second.log_metrics({"train/loss": 100.0 + s, "train/new": float(s)}, step=s)
    second.save()
    header, rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    assert header == ["step", "train/loss", "train/new"]
    assert [int(r["step"]) for r in rows] == list(range(13))
    assert [float(r["train/loss"]) for r in rows[:6]] == [10.0 - s for s in range(6)]
    assert [r["train/new"] for r in rows[:6]] == [""] * 6 and rows[12]["train/new"] == "12.0"
    assert last_logged(tmp_path / "csv" / "metrics.csv") == {"train/loss": 112.0, "train/new": 12.0}


@pytest.mark.filterwarnings("ignore:Experiment logs directory")
def test_a_fresh_csv_replaces_the_old_file_as_lightning_does(tmp_path):
    old = ResumableCSVLogger(tmp_path)
    old.log_metrics({"a": 1.0}, step=0)
    old.save()
    new = ResumableCSVLogger(tmp_path)
    new.log_metrics({"b": 2.0}, step=0)
    new.save()
    assert read_metrics(tmp_path / "csv" / "metrics.csv") == (["b", "step"], [{"b": "2.0", "step": "0"}])


def test_a_row_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    path = tmp_path / "csv" / "metrics.csv"
    path.parent.mkdir()
    path.write_text("step,train/loss\n0,1.0\n1,0.9\n2,0.")  # the append of step 2 was interrupted
    logger = ResumableCSVLogger(tmp_path, resume_step=5)
    logger.log_metrics({"train/loss": 0.8}, step=2)
    logger.save()
    assert path.read_text() == "step,train/loss\n0,1.0\n1,0.9\n2,0.8\n"


# ---- interruption ---------------------------------------------------------------------------------

def test_run_interrupted_exits_128_plus_the_signal_with_one_sentence(tmp_path):
    e = RunInterrupted(signal.SIGTERM, checkpoint="out/checkpoints/last.ckpt", step=40)
    assert isinstance(e, SystemExit) and e.code == 143
    assert str(e) == ("training was stopped by SIGTERM at step 40 after saving out/checkpoints/last.ckpt: "
                      "run the same command again to resume from it")
    again = pickle.loads(pickle.dumps(e))  # a joblib launcher sends it back to the sweep
    assert (type(again), again.code, str(again)) == (RunInterrupted, 143, str(e))
    assert "before its first checkpoint" in str(RunInterrupted(signal.SIGINT)) and RunInterrupted(2).code == 130
