"""GPU check (issue 9): the project's GPU paths, run and measured on one CUDA GPU by one command.

    python3 scripts/gpu_check.py --out results/gpu          # one CUDA GPU: about 8 minutes on an H100
    python3 scripts/gpu_check.py --dry-run --out /tmp/dry   # the same code on the CPU, tiny shapes (tests run it)

Parts, in order of value. Each runs in its own process with its own time limit (``--limit NAME=SECONDS``;
``--total-limit`` caps the whole); a part that fails or runs out of time is one sentence in the report
and the next part runs. Models are random-initialised LlamaConfig models of the real shapes, built on
the GPU (no hub); prompts and completions have ALMA-R's token lengths (cpo/bench/lengths.py: prompt up
to 256, total up to 512).

1. ``prepare``, then ``train_auto``, ``train_fsdp``, ``train_deepspeed_zero2``: ``python train.py`` through
   the real entry point (Hydra, Lightning, bf16-mixed) on the "1B" shape (TinyLlama: hidden 2048, 22
   layers, 32 heads, 4 KV heads, FFN 5632, vocabulary 32000) saved to a local folder, with a byte-level
   BPE tokenizer trained locally on the demo language (1000 ids; the model's vocabulary is padded to
   32000), LoRA r16 on ``down_proj``, gradient checkpointing, 20 steps of batch 2 (two epochs over 20
   pairs of a project-format JSONL, validated on 4 more), ``logger=csv``, ``optim.lr=1e-3``: the
   loss in ``csv/metrics.csv`` must be finite and falling (its mean over epoch 2 below epoch 1's, same
   pairs), and the saved ``policy/`` must reload with peft, be trained, change the logits and generate.
2. ``throughput_7b``: the "7B" shape (hidden 4096, 32 layers, 32 heads, FFN 11008), LoRA r16 on
   ``down_proj`` over one shared bf16 base, batch 2, bf16 autocast: CPO with each forward (packed, the
   default; kv_cache; concat), DPO with a live reference (the adapter switched off) and TRL's CPOTrainer
   on the same weights and batches (cpo/bench): tokens/s, pairs/s, peak CUDA memory, and model FLOP
   utilisation against a bf16 matmul peak measured in the same process (real tokens only; LoRA's frozen
   base costs 4 N per token, not 6 N: cpo/bench/flops.py).
3. ``fit_13b``: the "13B" shape (5120, 40 layers, 40 heads, FFN 13824), CPO LoRA as ALMA-R trains it
   (gradient checkpointing on): speed on ALMA-R's lengths, peak memory with every pair at the bounds.
4. ``beam_7b``: batched beam search (5 beams, 256 new tokens) on the 7B shape: sentences/s at batch 1, 16, 64.
5. ``large_vocab_8b`` (issue 17): the Llama-3-8B shape (hidden 4096, 32 layers, 32 heads, 8 KV heads, FFN
   14336, vocabulary 128,256), LoRA r16 on ``down_proj``, bf16, ALMA-R's lengths, batch 2 and 8: CPO with
   the chunked log-probs (``logps.chunk_tokens=auto``, the default), CPO on the full logits and TRL's
   CPOTrainer on the same weights and batches: tokens/s, pairs/s, peak CUDA memory. Alone:
   ``--parts large_vocab_8b`` (about 3 minutes on an H100).

Targets, as ratios of the same run (part 2): CPO pairs/s >= 1.3x TRL's; CPO peak memory <= TRL's; CPO
step <= 0.8x DPO with a live reference; MFU of the CPO step >= 40%.

Output in ``--out``: ``gpu_report.json``, ``gpu_report.md`` (device, versions, every part's figures or
its failure in one sentence, the exact command) and ``gpu_logs.tar.gz`` (each part's log). Models,
data and runs go to ``--work`` (a temporary folder, removed at the end unless ``--keep-work``).
The exit code is 0 when every part that ran gave its figures, 1 otherwise, 2 for bad arguments.

Recipe (also for your own cluster)
----------------------------------
The GPU machine this was written for (python 3.12, torch with CUDA, transformers, peft, lightning,
accelerate, sentencepiece, tokenizers, safetensors) has no network and lacks hydra-core, omegaconf,
antlr4-python3-runtime (train.py), trl and datasets (TRL's CPOTrainer) and deepspeed (ZeRO-2). A
missing package fails only the parts that need it, in one sentence. Carry them as wheels:

1. On a machine with PyPI, in the repository root (``.whl/`` is git-ignored):

       bash scripts/gpu_wheels.sh

   For each package it runs (versions: the ones the project is tested with)

       python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
           --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
           -d .whl NAME==VERSION

   for hydra-core, omegaconf, trl, datasets, dill, multiprocess, hjson, pydantic, pydantic-core,
   annotated-types, typing-inspection, typing-extensions, and the project's pinned transformers,
   huggingface-hub and tokenizers (``transformers<5``; ``--device-transformers`` keeps the machine's own). Two
   packages are source-only on PyPI and are built here as pure-Python wheels:

       python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
       DS_BUILD_OPS=0 python3 -m pip wheel --no-deps --no-build-isolation -w .whl deepspeed==<v>

   (``DS_BUILD_OPS=0``: no CUDA ops are compiled; DeepSpeed JIT-builds one on first use, and ZeRO-2 with
   torch's AdamW, which the project passes it, needs none.) The wheels take about 23 MB.
2. On the GPU machine, in the repository root:

       python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
           --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
       PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --out <folder>

   The exact single command for this workplace's device tool (``carry: [".whl"]``, timeout 600 s;
   what the command writes under ``$OUT`` comes back):

       python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
           --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site && \\
           PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py --out $OUT

   With network (your own cluster), ``pip install -e '.[bench,deepspeed]'`` replaces the wheels.
   Rerun one part with a longer limit: ``--parts train_fsdp --limit train_fsdp=300``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from cpo.bench.gpu_report import last_error_line, markdown, targets  # noqa: E402  (imports no torch)

# name: (part of the issue, default limit in seconds on the GPU, in the dry run)
PARTS = {
    "prepare": (1, 90, 120),
    "train_auto": (1, 120, 180),
    "train_fsdp": (1, 120, 180),
    "train_deepspeed_zero2": (1, 150, 180),
    "throughput_7b": (2, 150, 180),
    "fit_13b": (3, 90, 120),
    "beam_7b": (4, 120, 120),
    "large_vocab_8b": (5, 240, 120),
}
GPU_ONLY = ("train_fsdp", "train_deepspeed_zero2")
NEEDS_GPU = "needs a GPU"  # why the dry run skips GPU_ONLY parts
VERSIONS = ("torch", "transformers", "peft", "lightning", "pytorch-lightning", "accelerate", "tokenizers",
            "safetensors", "sentencepiece", "huggingface-hub", "hydra-core", "omegaconf", "trl", "datasets",
            "deepspeed")
MIN_PART_S = 15  # a part is not started with less than this left of --total-limit


class UsageError(Exception):
    pass


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="folder for gpu_report.json, gpu_report.md and gpu_logs.tar.gz")
    p.add_argument(
        "--work", type=Path, default=None, help="folder for models, data and runs (default: a temporary one)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny shapes, few steps: the same code path, for the test suite"
    )
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of: {', '.join(PARTS)}")
    p.add_argument(
        "--limit", action="append", default=[], metavar="PART=SECONDS", help="a part's time limit (repeatable)"
    )
    p.add_argument(
        "--total-limit", type=float, default=None, help="seconds for all parts together (default 480; dry run 900)"
    )
    p.add_argument("--keep-work", action="store_true", help="keep --work (the 1B model, the runs) after the check")
    p.add_argument("--overwrite", action="store_true", help="replace a report already in --out")
    p.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    return p.parse_args(argv)


def plan_parts(ns: argparse.Namespace) -> tuple[list[str], dict[str, float]]:
    chosen = [x.strip() for x in ns.parts.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in PARTS]
    if unknown:
        raise UsageError(f"--parts: unknown part {', '.join(unknown)} (known: {', '.join(PARTS)})")
    if any(x.startswith("train_") for x in chosen) and "prepare" not in chosen:
        chosen.insert(0, "prepare")  # the training parts read the model and data it writes
    limits = {n: float(v[2] if ns.dry_run else v[1]) for n, v in PARTS.items()}
    for item in ns.limit:
        name, _, secs = item.partition("=")
        if name not in PARTS or not re.fullmatch(r"\d+(\.\d+)?", secs):
            raise UsageError(f"--limit {item}: expected PART=SECONDS with PART one of {', '.join(PARTS)}")
        limits[name] = float(secs)
    return [n for n in PARTS if n in chosen], limits


# --------------------------------------------------------------------------- facts about the machine
def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in VERSIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


DEVICE_PROBE = """
import json, torch
d = {"cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
if d["cuda_available"]:
    p = torch.cuda.get_device_properties(0)
    d.update(name=p.name, memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
             count=torch.cuda.device_count(), bf16=torch.cuda.is_bf16_supported())
print("DEVICE " + json.dumps(d))
"""


def device_info(env: dict) -> dict:
    try:
        r = subprocess.run([sys.executable, "-c", DEVICE_PROBE], capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        return {"error": "probing the device with torch did not finish within 120 s"}
    for line in r.stdout.splitlines():
        if line.startswith("DEVICE "):
            info = json.loads(line[7:])
            break
    else:
        return {"error": "torch could not probe the device: " + last_error_line(r.stderr)}
    if shutil.which("nvidia-smi"):
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
        except subprocess.TimeoutExpired:
            info["driver"] = None
    return info


# --------------------------------------------------------------------------- running the parts
def _kill_group(proc: subprocess.Popen) -> int | None:
    """SIGTERM to the part's whole process group (train.py and its workers too), SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


def run_part_process(name: str, ns: argparse.Namespace, work: Path, limit: float, env: dict) -> dict:
    """One part in its own process group, killed with everything it started when ``limit`` runs out."""
    out, log = work / "parts" / f"{name}.json", work / "logs" / f"{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--work", str(work)]
    cmd += ["--dry-run"] if ns.dry_run else []
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc, timed_out = proc.wait(timeout=limit), False
        except subprocess.TimeoutExpired:
            rc, timed_out = _kill_group(proc), True
        except BaseException:  # the check itself is stopped (SIGTERM, Ctrl-C): no part may outlive it on the GPU
            _kill_group(proc)
            raise
    base = {"part": PARTS[name][0], "seconds": round(time.monotonic() - t0, 1), "limit_s": limit,
            "log": str(log.relative_to(work))}
    if timed_out:
        return base | {"status": "timeout",
                       "error": f"did not finish within its limit of {limit:.0f} s "
                                f"(raise it with --limit {name}=SECONDS)"}
    if out.exists():
        res = json.loads(out.read_text())
        if res.get("status") == "failed" and res.get("log"):  # the part names a log holding the cause
            res["error"] += ": " + last_error_line(Path(res.pop("log")).read_text(errors="replace"))
        return base | res
    why = f"was killed by signal {-rc}" if rc and rc < 0 else f"exited with code {rc} without a report"
    return base | {"status": "failed",
                   "error": f"the part's process {why}: {last_error_line(log.read_text(errors='replace'))}"}


def part_env(ns: argparse.Namespace, work: Path) -> dict:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        TRL_EXPERIMENTAL_SILENCE="1",
        PYTHONUNBUFFERED="1",
        WANDB_MODE="disabled",
        CPO_CACHE=str(work / "cache"),
        HF_HOME=str(work / "hf_home"),
    )
    if ns.dry_run:
        env["OMP_NUM_THREADS"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU path, even on a machine with a GPU
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK"):
        env.pop(k, None)  # a launcher's variables would make Lightning join a process group that does not exist
    return env


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(report: dict, out: Path, work: Path, t0: float) -> None:
    """Report and logs as they stand (after every part, so that a check stopped from outside leaves one)."""
    report["wall_s"] = round(time.monotonic() - t0, 1)
    report["targets"] = targets(report)
    write_atomic(out / "gpu_report.json", json.dumps(report, indent=1, default=str))
    write_atomic(out / "gpu_report.md", markdown(report))
    with tarfile.open(out / ".gpu_logs.tar.gz", "w:gz") as tar:
        for sub in ("logs", "parts"):
            tar.add(work / sub, arcname=sub)
    os.replace(out / ".gpu_logs.tar.gz", out / "gpu_logs.tar.gz")


def _stop(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through run_part_process, which stops the running part


def check(ns: argparse.Namespace) -> int:
    t0 = time.monotonic()
    if ns.out is None:
        raise UsageError("--out is required: the folder that receives gpu_report.json and gpu_report.md")
    if ns.out.exists() and not ns.out.is_dir():
        raise UsageError(f"--out {ns.out} is a file, not a folder")
    if (ns.out / "gpu_report.json").exists() and not ns.overwrite:
        raise UsageError(f"{ns.out / 'gpu_report.json'} already exists: pass --overwrite or another --out")
    names, limits = plan_parts(ns)
    total = ns.total_limit if ns.total_limit is not None else (900.0 if ns.dry_run else 480.0)
    if ns.work and ns.work.exists() and (not ns.work.is_dir() or any(ns.work.iterdir())):
        raise UsageError(f"--work {ns.work} is not an empty folder: give an empty or new one (runs must start fresh)")
    work = ns.work or Path(tempfile.mkdtemp(prefix="cpo-gpu-check-"))
    for sub in ("parts", "logs", "runs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    env = part_env(ns, work)
    command = shlex.join([Path(sys.executable).name, os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])
    report = {"title": "GPU check (issues 9 and 17)", "dry_run": ns.dry_run, "command": command,
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": versions(),
              "device": device_info(env), "total_limit_s": total, "parts": {}}
    print(f"[gpu_check] device: {report['device']}", flush=True)
    if not ns.dry_run and not report["device"].get("cuda_available"):
        if not ns.work:
            shutil.rmtree(work, ignore_errors=True)
        why = report["device"].get("error", "torch.cuda.is_available() is false")
        raise UsageError(f"no CUDA GPU is visible to torch ({why}); run with --dry-run on a CPU")
    ns.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _stop)
    try:
        for name in names:
            left = total - (time.monotonic() - t0)
            res = {"part": PARTS[name][0], "status": "skipped"}
            if ns.dry_run and name in GPU_ONLY:
                res["error"] = NEEDS_GPU
            elif name.startswith("train_") and report["parts"].get("prepare", {}).get("status") != "ok":
                res["error"] = "the prepare part did not produce the 1B model and data"
            elif left < MIN_PART_S:
                res["error"] = f"the overall limit (--total-limit {total:.0f} s) was spent before this part"
            else:
                print(f"[gpu_check] {name}: running (limit {min(limits[name], left):.0f} s)", flush=True)
                report["parts"][name] = {"part": PARTS[name][0], "status": "failed",
                                         "error": "the check was stopped from outside while this part ran"}
                res = run_part_process(name, ns, work, min(limits[name], left), env)
            report["parts"][name] = res
            took = f" in {res['seconds']} s" if "seconds" in res else ""
            print(f"[gpu_check] {name}: {_outcome(res)}{took}", flush=True)
            save(report, ns.out, work, t0)
    finally:
        save(report, ns.out, work, t0)
        if not ns.work and not ns.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"[gpu_check] report: {ns.out / 'gpu_report.md'} ({report['wall_s']} s)", flush=True)
    gave_figures = [r["status"] in ("ok", "partial") or r.get("error") == NEEDS_GPU for r in report["parts"].values()]
    return 0 if all(gave_figures) else 1


def _outcome(r: dict) -> str:
    return r["status"] + (f" ({r['error']})" if r.get("error") else "")


def main(argv=None) -> int:
    ns = parse_args(argv)
    if ns.part:  # inside a part's own process
        from cpo.bench.gpu_parts import Plan, run_part

        return run_part(ns.part, Plan(dry_run=ns.dry_run, work=ns.work), ns.work / "parts" / f"{ns.part}.json")
    try:
        return check(ns)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
