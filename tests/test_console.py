"""One console for every app: plain lines (``warning: ...``/``error: ...`` from WARNING up), the same lines with a
time stamp in the log file, no library chatter (W&B's banner and run summary, Lightning's device lines, deprecation
warnings inside the libraries), no carriage returns from progress bars when the output is not a terminal."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, SMALL_DEMO

STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")
NOISE = ("wandb:", "GPU available", "TPU available", "pkg_resources", "\r", "][INFO]", "[HYDRA]", "Run summary",
         "anonymous setting", "`resume` will be ignored", "Trainer.fit` stopped", "💡")


@pytest.mark.slow
def test_train_console_and_log_file(tmp_path):
    # The libraries' own defaults: no WANDB_SILENT (the suite's conftest sets it for every other test).
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SILENT", "MASTER_ADDR", "MASTER_PORT", "RANK",
                                                            "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "train.py", f"hydra.run.dir={tmp_path}", "trainer.max_steps=2",
                        "save_policy=false", *SMALL_DEMO], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout + p.stderr
    assert not [n for n in NOISE if n in out], [line for line in out.splitlines() if any(n in line for n in NOISE)]
    lines = [line for line in p.stdout.splitlines() if line.strip()]
    assert lines[0] == "starting a new run" and any(line.startswith("data demo: ") for line in lines)
    assert lines[-1].startswith(f"W&B run (offline) in {tmp_path / 'wandb_files'}")  # one line instead of 36
    log = [line for line in (tmp_path / "train.log").read_text().splitlines() if line.strip()]
    assert all(STAMP.match(line) for line in log), log[:5]
    assert [STAMP.sub("", line, count=1) for line in log] == lines  # the console's lines, each with its time
