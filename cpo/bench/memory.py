"""Memory of a training step: tensors saved for the backward, peak RSS in a fresh process, peak CUDA memory.

CPU: each implementation runs in its own fresh subprocess (same imports for all, glibc's mmap
threshold fixed at 64 KiB so RSS follows live memory, free heap trimmed before the mark); the peak
RSS (VmHWM) is reset with /proc/self/clear_refs right before the first step: ``peak_rss_mb`` is the
process's peak from the first step on, ``step_rss_mb`` what training adds above the loaded model and
data (the first AdamW step, with gradients alive while the moment buffers are allocated, is in it).
GPU: ``peak_gpu_mb`` is ``torch.cuda.max_memory_allocated`` over an implementation's steps (reset
before them), ``step_gpu_mb`` the part of it above what was allocated when they began (the shared
base and every implementation's adapter and optimizer state).
``activation_mb`` counts, exactly, the tensors autograd saves for the backward of one step
(parameters excluded).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys
from typing import Callable, Sequence

import torch


def saved_activation_mb(fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor]) -> float:
    """MiB of tensors autograd keeps for the backward of ``fn()`` (distinct storages, parameters excluded).

    Exact and independent of the allocator, unlike RSS: the activation memory of one step.
    """
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    del loss
    return sum(seen.values()) / 2**20


class CudaPeak:
    """Peak CUDA memory over the regions bracketed by ``begin()`` / ``end()``, kept as the maximum over calls."""

    def __init__(self):
        self.peak = self.step = 0

    def begin(self) -> None:
        torch.cuda.reset_peak_memory_stats()
        self._base = torch.cuda.memory_allocated()

    def end(self) -> None:
        top = torch.cuda.max_memory_allocated()
        self.peak, self.step = max(self.peak, top), max(self.step, top - self._base)

    def as_dict(self) -> dict:
        return {"peak_gpu_mb": self.peak / 2**20, "step_gpu_mb": self.step / 2**20}


def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out


def reset_peak_rss() -> int:
    """Resets the kernel's peak-RSS mark (Linux >= 4.0); returns the current RSS in bytes.

    Free heap memory is handed back first (glibc ``malloc_trim``), so what a process allocated and
    freed before (tokenization, a reference-cache pass) cannot hide the growth that follows.
    """
    gc.collect()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _proc_status()["VmRSS"]


def memory_probe(cfg: dict) -> dict:
    """One implementation in this (fresh) process: peak RSS from its first step on, over two chunks.

    The peak mark is reset right before the first step (TRL: in its first ``on_step_begin``), so
    building the model, tokenizing and TRL's data set map are not in it, the first AdamW step
    (gradients alive while the moment buffers are allocated) is.
    """
    from cpo.bench.flops import Lora
    from cpo.bench.ours import OursImpl, Variant
    from cpo.bench.policies import FullCopies, SharedLora
    from cpo.bench.trl_impl import TrlImpl, trl_available
    from cpo.bench.workload import MODELS, build_model, make_workload

    torch.set_num_threads(cfg["threads"])
    if cfg.get("import_trl"):
        trl_available()  # same imports in every probe, so the baselines compare
    import cpo.train.module  # noqa: F401

    wl = make_workload(cfg["batch_size"], cfg["steps"], seed=cfg["seed"], lengths=cfg.get("lengths", "demo"))
    precision = cfg.get("precision", "fp32")
    init = build_model(wl.tok, cfg["model"], seed=cfg["seed"], vocab_size=cfg.get("vocab_size"),
                       dtype="bfloat16" if precision == "bf16" else "float32")
    spec = MODELS[cfg["model"]]
    # LoRA: the frozen base is the static memory (built before the mark), the adapter and its optimizer state not.
    lora = Lora(cfg["lora_r"], tuple(cfg.get("lora_targets") or ("down_proj",))) if cfg.get("lora_r") else None
    gc = cfg.get("gradient_checkpointing", False)
    policies = SharedLora(init, lora, cfg["seed"], gc) if lora else FullCopies(init, "cpu")
    mark = {}
    if cfg["impl"] == "trl_cpo":
        impl = TrlImpl(
            policies,
            wl,
            spec,
            cfg["lr"],
            "cpu",
            cfg["fused"],
            cfg["threads"],
            total_steps=2 * cfg["steps"],
            gradient_checkpointing=cfg.get("gradient_checkpointing", False),
            precision=precision,
        )
        del init, policies
        impl.train(lambda t: None, cfg["steps"], on_step_begin=lambda: mark.setdefault("base", reset_peak_rss()))
    else:
        impl = OursImpl(Variant(**cfg["variant"]), policies, wl, spec, cfg["lr"], "cpu", precision)
        del init, policies
        mark["base"] = reset_peak_rss()
        impl.run_chunk()
        impl.run_chunk()
    st = _proc_status()
    return {"peak_rss_mb": st["VmHWM"] / 2**20, "step_rss_mb": (st["VmHWM"] - mark["base"]) / 2**20}


def probe_memory_subprocess(cfgs: list[dict], parallel: int = 2) -> list[dict]:
    """Runs ``memory_probe`` for each config in its own Python process (``parallel`` at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(cfg):
        code = ("import json,sys; from cpo.bench import memory_probe; "
                "print('PROBE ' + json.dumps(memory_probe(json.loads(sys.argv[1]))))")
        # A fixed mmap threshold (glibc) returns every freed block above 64 KiB to the OS at once, so RSS
        # follows live memory instead of the allocator's history, and repeated probes agree to ~0.1 MB.
        env = dict(
            os.environ,
            TRL_EXPERIMENTAL_SILENCE="1",
            OMP_NUM_THREADS=str(cfg["threads"]),
            MALLOC_MMAP_THRESHOLD_="65536",
        )
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        r = subprocess.run(
            [sys.executable, "-c", code, json.dumps(cfg)], capture_output=True, text=True, env=env, cwd=root
        )
        for line in r.stdout.splitlines():
            if line.startswith("PROBE "):
                return json.loads(line[6:])
        return {"error": (r.stderr or r.stdout)[-2000:]}

    with ThreadPoolExecutor(parallel) as ex:
        return list(ex.map(one, cfgs))
