"""strategy=ddp_cpu (2 processes, gloo) follows the same loss trajectory as one process on the same global batch."""
import csv
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, SMALL_DEMO


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return env


def _train(out, extra):
    args = [sys.executable, "train.py", f"hydra.run.dir={out}", "logger=csv", "trainer.max_steps=4",
            "trainer.log_every_n_steps=1", "evaluate.before_after=false", "evaluate.during_training.enabled=false",
            "trainer.limit_val_batches=0", "seed=7"] + SMALL_DEMO + extra
    p = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    with open(out / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss_global")]
    return [float(r["train/loss_global"]) for r in rows]


def test_ddp_cpu_matches_single_process(tmp_path):
    single = _train(tmp_path / "single", ["data.batch_size=8"])
    ddp = _train(tmp_path / "ddp", ["data.batch_size=4", "strategy=ddp_cpu"])
    assert len(single) == len(ddp) == 4
    assert torch.allclose(torch.tensor(single), torch.tensor(ddp), rtol=1e-4, atol=1e-5), (single, ddp)
    a = torch.load(tmp_path / "single" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


@pytest.mark.slow
def test_a_rank_without_validation_pairs_joins_the_reduction(tmp_path):
    """One validation pair on two ranks: rank 1 has no batch, and the sum over ranks must still include it
    (it crashed the gloo collective before), giving the metrics one process gives."""
    def val_rows(out, extra):
        args = [sys.executable, "train.py", f"hydra.run.dir={out}", "logger=csv", "trainer.max_steps=2",
                "evaluate.before_after=false", "evaluate.during_training.enabled=false", "seed=7",
                *SMALL_DEMO, "data.n_val_sources=1", *extra]
        p = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        assert "1 val pairs" in p.stdout, p.stdout[-2000:]
        with open(out / "csv" / "metrics.csv") as f:
            return [r for r in csv.DictReader(f) if r.get("val/logps/chosen")]

    single = val_rows(tmp_path / "single", ["data.batch_size=8"])
    ddp = val_rows(tmp_path / "ddp", ["data.batch_size=4", "strategy=ddp_cpu"])
    assert single and len(single) == len(ddp)
    for key in ("val/logps/chosen", "val/logps/rejected", "val/loss"):
        assert abs(float(single[-1][key]) - float(ddp[-1][key])) < 1e-4, (key, single[-1], ddp[-1])
