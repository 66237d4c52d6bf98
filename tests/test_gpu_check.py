"""The GPU check (scripts/gpu_check.py) on the CPU: its dry run, its time limits, its report and its usage errors.

The full dry run (every part, tiny shapes; about 100 s here) is marked slow: run it with ``pytest -m slow
tests/test_gpu_check.py`` (or the script's ``--dry-run``) before a GPU loan. The default suite keeps the driver
alive with one subprocess part (beam_7b), part 5's dry run in process, the report and the usage errors; a
second slow test runs two parts, one of them past its time limit, through the same driver.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.py"


def _check(tmp_path, *args, timeout=900):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    }
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = tmp_path / "out"
    report = json.loads((out / "gpu_report.json").read_text()) if (out / "gpu_report.json").exists() else None
    md = (out / "gpu_report.md").read_text() if (out / "gpu_report.md").exists() else None
    return p, report, md


def _assert_beam(report):
    beam = report["parts"]["beam_7b"]
    assert beam["status"] == "ok", beam
    rates = beam["figures"]["sentences_per_s"]
    assert set(rates) == {"1", "16", "64"} and all(v > 0 for v in rates.values()), rates


@pytest.mark.slow
def test_a_part_past_its_limit_is_one_sentence_and_the_next_part_runs(tmp_path):
    p, report, md = _check(tmp_path, "--dry-run", "--parts", "fit_13b,beam_7b", "--limit", "fit_13b=2")
    assert p.returncode == 1, p.stderr[-2000:]  # a part did not give its figures
    assert list(report["parts"]) == ["fit_13b", "beam_7b"]
    fit = report["parts"]["fit_13b"]
    assert fit["status"] == "timeout" and "limit of 2 s" in fit["error"] and "--limit fit_13b=" in fit["error"]
    assert fit["seconds"] < 60  # killed, with everything it started, not waited for
    _assert_beam(report)
    assert "| 3 | 13B CPO LoRA as ALMA-R trains it | timeout |" in md and "## 4. Batched beam search" in md
    assert report["command"].startswith("python") and "--dry-run" in report["command"] and report["command"] in md
    assert report["versions"]["torch"] and report["versions"]["transformers"]
    with tarfile.open(tmp_path / "out" / "gpu_logs.tar.gz") as tar:
        assert {"logs/fit_13b.log", "logs/beam_7b.log", "parts/beam_7b.json"} <= set(tar.getnames())


# Every part but the large-vocabulary one, whose dry run runs in this process below: a part's own process spends
# about 10 s of CPU importing torch, transformers and TRL, which the suite would pay for 3 s of figures.
SUBPROCESS_PARTS = ["prepare", "train_auto", "train_fsdp", "train_deepspeed_zero2", "throughput_7b", "fit_13b",
                    "beam_7b"]


@pytest.mark.slow
def test_full_dry_run(tmp_path):
    p, report, md = _check(tmp_path, "--dry-run", "--parts", ",".join(SUBPROCESS_PARTS))
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    parts = report["parts"]
    assert list(parts) == SUBPROCESS_PARTS
    # Part 1: train.py trained, the loss was finite and fell, the saved policy reloaded and generated.
    t = parts["train_auto"]
    assert t["status"] == "ok", t
    f = t["figures"]
    assert f["steps"] == len(f["losses"]) == 6 and f["finite"] and f["falling"] and f["loss_epoch2"] < f["loss_epoch1"]
    assert f["policy_reloaded"] and f["lora_b_trained"].split("/")[0] != "0" and f["generated_tokens"] > 0
    assert f["adapter_logit_change"] > 0
    for s in ("train_fsdp", "train_deepspeed_zero2"):
        assert parts[s]["status"] == "skipped" and parts[s]["error"] == "needs a GPU"
    # Part 2: pairs/s for every implementation it ran, TRL's CPOTrainer among them when trl is installed.
    tp = parts["throughput_7b"]
    assert tp["status"] in ("ok", "partial"), tp
    impls = tp["figures"]["implementations"]
    expected = {"cpo", "dpo_live", "cpo[kv_cache]", "cpo[concat]"} | (
        {"trl_cpo"} if "trl_cpo" not in tp.get("errors", {}) else set()
    )
    assert set(impls) == expected
    assert all(r["pairs_per_s_median"] > 0 and 0 < r["peak_share_median"] < 1 for r in impls.values()), impls
    if "trl_cpo" in impls:
        assert tp["figures"]["trl_tokens"]["identical_ids"] == tp["figures"]["trl_tokens"]["pairs"]
        assert tp["figures"]["trl_first_batch"]["loss_abs_diff"] < 1e-3
    # Part 3 and 4.
    fit = parts["fit_13b"]
    assert (
        fit["status"] == "ok" and fit["figures"]["fits"] and fit["figures"]["alma_r_lengths"]["pairs_per_s_median"] > 0
    )
    assert fit["figures"]["worst_case_lengths"]["pairs_per_s_median"] > 0
    _assert_beam(report)
    targets = {t["target"]: t for t in report["targets"]}
    assert (
        targets["CPO step <= 0.8x DPO with a live reference"]["value"]
        == tp["figures"]["ratios"]["cpo_step_over_dpo_live_median"]
    )
    for heading in (
        "## 1. `python train.py`",
        "## 2. Throughput",
        "## 3. 13B shape",
        "## 4. Batched beam search",
        "## Targets",
    ):
        assert heading in md
    assert "| fsdp | skipped: needs a GPU |" in md


def test_large_vocab_part_dry_run(tmp_path):
    """Part 5 (issue 17) on the CPU, in this process: the real 128,256-token vocabulary on a tiny body, batch 2; CPO
    with the chunked log-probs, on the full logits and TRL's CPOTrainer, and its section of the report."""
    from cpo.bench import trl_available
    from cpo.bench.gpu_parts import Plan, run_part
    from cpo.bench.gpu_report import markdown

    assert run_part("large_vocab_8b", Plan(dry_run=True, work=tmp_path), tmp_path / "part.json") == 0
    res = json.loads((tmp_path / "part.json").read_text())
    assert res["status"] in ("ok", "partial"), res
    row = res["figures"]["batches"]["2"]
    impls = row["implementations"]
    expected = {"cpo", "cpo[chunk_tokens=null]"} | ({"trl_cpo"} if trl_available() else set())
    assert set(impls) == expected and all(r["pairs_per_s_median"] > 0 for r in impls.values()), impls
    if trl_available():
        first = row["trl_first_batch_by_impl"]
        assert first["cpo"]["chunk_tokens"] == 261 and first["cpo[chunk_tokens=null]"]["chunk_tokens"] is None
        assert all(t["loss_abs_diff"] < 1e-4 for t in first.values()), first
    report = {"title": "t", "dry_run": True, "started": "now", "command": "python scripts/gpu_check.py --dry-run",
              "versions": {}, "device": {}, "total_limit_s": 900, "wall_s": 1,
              "parts": {"large_vocab_8b": {"part": 5, "seconds": 1} | res}}
    md = markdown(report)
    assert "## 5. Large vocabulary: Llama-3-8B shape" in md and "### Batch 2 pairs" in md
    assert "| cpo, chunked log-probs (logps.chunk_tokens=auto, the default) |" in md
    assert "| cpo, full logits (logps.chunk_tokens=null) |" in md


def test_usage_errors_exit_2_with_one_sentence(tmp_path):
    p, report, _ = _check(tmp_path, "--dry-run", "--parts", "train_auto,nope")
    assert (
        p.returncode == 2 and p.stderr.startswith("error: --parts: unknown part nope") and "Traceback" not in p.stderr
    )
    assert report is None
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "gpu_report.json").write_text("{}")
    p, _, _ = _check(tmp_path, "--dry-run", "--parts", "beam_7b")
    assert p.returncode == 2 and "gpu_report.json already exists: pass --overwrite" in p.stderr
    p, _, _ = _check(tmp_path, "--dry-run", "--limit", "beam_7b=soon", "--overwrite")
    assert p.returncode == 2 and "--limit beam_7b=soon: expected PART=SECONDS" in p.stderr


def test_error_sentences_and_targets():
    from cpo.bench.gpu_report import last_error_line, markdown, targets

    trace = ('Traceback (most recent call last):\n  File "x.py", line 1\n'
             "torch.OutOfMemoryError: CUDA out of memory. Tried\n\nSet HYDRA_FULL_ERROR=1\n")
    assert last_error_line(trace) == "torch.OutOfMemoryError: CUDA out of memory. Tried"
    assert (
        last_error_line("Could not override 'resume'.\nTo append use +resume=false\nKey 'resume' is not in struct\n")
        == "Key 'resume' is not in struct"
    )
    assert last_error_line("error: data.train_file: /x does not exist\n") == "error: data.train_file: /x does not exist"
    assert len(last_error_line("ValueError: " + "x" * 1000)) == 300
    report = {
        "title": "t",
        "dry_run": False,
        "started": "now",
        "command": "python scripts/gpu_check.py --out o",
        "versions": {},
        "device": {"name": "GPU"},
        "total_limit_s": 480,
        "wall_s": 1,
        "parts": {
            "throughput_7b": {
                "part": 2,
                "status": "ok",
                "seconds": 1,
                "figures": {
                    "ratios": {
                        "cpo_pairs_per_s_over_trl_median": 1.29,
                        "cpo_peak_gpu_over_trl": 0.9,
                        "cpo_step_over_dpo_live_median": 0.8,
                    },
                    "implementations": {
                        "cpo": {
                            "pairs_per_s_median": 2.0,
                            "step_s_median": 0.1,
                            "peak_share_median": 0.41,
                            "padding_share": 0.1,
                        }
                    },
                    "matmul_peak_tflops": 700.0,
                },
            },
            "train_fsdp": {
                "part": 1,
                "status": "failed",
                "seconds": 3,
                "error": "train.py exited with code 1: ValueError: flat",
            },
        },
    }
    got = {t["target"]: t["met"] for t in targets(report)}
    assert got == {
        "CPO pairs/s >= 1.3x TRL's CPOTrainer": False,
        "CPO peak CUDA memory <= TRL's": True,
        "CPO step <= 0.8x DPO with a live reference": True,
        "MFU of the CPO step >= 40%": True,
    }
    report["targets"] = targets(report)
    md = markdown(report)
    assert "| fsdp | failed: train.py exited with code 1: ValueError: flat |" in md and "| 1.29 | no |" in md
