"""The parts of the GPU check (scripts/gpu_check.py). Each runs in its own process and returns its figures.

A part returns ``{"figures": ..., "errors": {...}}`` (errors: what did not run, one sentence each) or
raises :class:`PartFailure` with one sentence. The plan holds every size and count, so that the CPU dry
run (``Plan(dry_run=True)``) goes through exactly the code the GPU run does, on tiny shapes.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MISSING = "{pkg} is not installed: run scripts/gpu_wheels.sh and carry .whl (see scripts/gpu_check.py)"


class PartFailure(RuntimeError):
    """A part that could not give its figures; the message is the report's sentence."""

    def __init__(self, sentence: str, log: str | None = None, figures: dict | None = None):
        super().__init__(sentence)
        self.log, self.figures = log, figures


@dataclass(frozen=True)
class Plan:
    dry_run: bool
    work: Path
    seed: int = 0
    lora_r: int = 16  # ALMA-R's LoRA: r16, alpha 32, on down_proj
    train_lr: float = 1e-3  # ALMA-R uses 1e-4; 20 steps from a random init need more for the loss to move visibly

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    @property
    def precision(self) -> str:
        return "fp32" if self.dry_run else "bf16"

    @property
    def dtype(self) -> str:
        return "float32" if self.dry_run else "bfloat16"

    def shape(self, name: str) -> str:
        return f"dry_{name}" if self.dry_run else name

    @property
    def threads(self) -> int:
        return 1 if self.dry_run else max(1, min(8, os.cpu_count() or 1))

    @property
    def train_steps(self) -> int:
        return 6 if self.dry_run else 20

    # Benchmark chunks: steps per repetition, measured repetitions, discarded ones.
    @property
    def bench(self) -> dict:
        return dict(steps=2, reps=1, warmup=1) if self.dry_run else dict(steps=5, reps=3, warmup=1)

    @property
    def large_vocab_batches(self) -> tuple[int, ...]:
        return (2,) if self.dry_run else (2, 8)

    @property
    def large_vocab_bench(self) -> dict:
        return dict(steps=1, reps=1, warmup=0) if self.dry_run else self.bench

    @property
    def large_vocab_lengths(self) -> str:
        # The dry run keeps the real vocabulary and short sentences, so that TRL's full logits stay small on a CPU.
        return "demo" if self.dry_run else "alma_r"

    @property
    def beam_new_tokens(self) -> int:
        return 8 if self.dry_run else 256

    @property
    def model_dir(self) -> Path:
        return self.work / "model_1b"


def _need(*packages: str) -> None:
    for pkg, module in (p.split(":") if ":" in p else (p, p) for p in packages):
        if importlib.util.find_spec(module) is None:
            raise PartFailure(MISSING.format(pkg=pkg))


# --------------------------------------------------------------------------- part 1: train.py on the 1B shape
def prepare(plan: Plan) -> dict:
    """The 1B model (random init, saved with its tokenizer) and the preference JSONL that train.py reads."""
    from cpo.bench.workload import build_model, make_workload

    # Batch 2, two epochs over the same pairs: the loss of epoch 2 against epoch 1 compares like with like
    # (per-batch losses of a random-init model swing with the chosen/rejected length difference).
    n_train, n_val = plan.train_steps, 4
    wl = make_workload(2, plan.train_steps, n_pairs=n_train + n_val, seed=plan.seed, lengths="alma_r")
    model = build_model(wl.tok, plan.shape("1b"), seed=plan.seed, device=plan.device, dtype=plan.dtype)
    model.save_pretrained(plan.model_dir)
    wl.tok.save_pretrained(plan.model_dir)
    for name, rows in (("train.jsonl", wl.examples[:n_train]), ("val.jsonl", wl.examples[n_train:])):
        with open(plan.work / name, "w", encoding="utf-8") as f:
            for e in rows:
                record = {"source": e.source, "chosen": e.chosen, "rejected": e.rejected, "src_lang": e.src_lang,
                          "tgt_lang": e.tgt_lang}
                f.write(json.dumps(record) + "\n")
    tokenizer = (f"byte-level BPE trained locally on the demo language, {len(wl.tok)} ids; the model's vocabulary "
                 f"is padded to {model.config.vocab_size} (rows never used as inputs)")
    return {"figures": {"model": plan.shape("1b"), "parameters": sum(p.numel() for p in model.parameters()),
                        "vocab": model.config.vocab_size, "tokenizer": tokenizer, "train_pairs": n_train,
                        "val_pairs": n_val, "token_lengths": wl.token_lengths()}}


def train_command(plan: Plan, strategy: str) -> list[str]:
    run = plan.work / "runs" / strategy
    lora = f"{{r:{plan.lora_r},alpha:{2 * plan.lora_r},dropout:0.0,target_modules:[down_proj],adapter:null}}"
    return [
        sys.executable, "train.py", f"hydra.run.dir={run}",
        "model=hf", f"model.name_or_path={plan.model_dir}", f"model.dtype={plan.dtype}",
        "model.gradient_checkpointing=true", f"model.lora={lora}",
        "data=jsonl", f"data.train_file={plan.work / 'train.jsonl'}", f"data.val_file={plan.work / 'val.jsonl'}",
        "data.batch_size=2", "loss=cpo", f"strategy={strategy}", "logger=csv",
        f"trainer.max_steps={plan.train_steps}", "trainer.max_epochs=2",
        f"trainer.precision={'32-true' if plan.dry_run else 'bf16-mixed'}", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "evaluate.before_after=false", "evaluate.during_training.enabled=false",
        f"optim.lr={plan.train_lr}", f"seed={plan.seed}", f"cache_dir={plan.work / 'cache'}",
    ]


def train(plan: Plan, strategy: str) -> dict:
    """python train.py on the 1B shape; the loss from csv/metrics.csv; the saved policy reloaded with peft."""
    _need("hydra-core:hydra", "omegaconf")
    if strategy.startswith("deepspeed"):
        _need("deepspeed")
    if not (plan.model_dir / "config.json").exists():
        raise PartFailure("the 1B model was not prepared (see the prepare part)")
    cmd = train_command(plan, strategy)
    run = plan.work / "runs" / strategy
    log = plan.work / "logs" / f"train_{strategy}.train_py.log"
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise PartFailure(f"train.py exited with code {rc}", log=str(log))
    rows = _metrics(run / "csv" / "metrics.csv")
    losses = [r["loss"] for r in rows]
    epochs = [[r["loss"] for r in rows if r["epoch"] == e] for e in (0, 1)]
    nll = [[r["nll"] for r in rows if r["epoch"] == e and r["nll"] is not None] for e in (0, 1)]
    results = json.loads((run / "results.json").read_text())
    figures = {"command": " ".join(cmd[1:]), "steps": results.get("global_steps"), "fit_s": results.get("fit_seconds"),
               "losses": losses, "finite": all(map(math.isfinite, losses)), "val": results.get("val", {})}
    if len(losses) != plan.train_steps or not all(epochs):
        seen = sorted({r["epoch"] for r in rows})
        raise PartFailure(f"metrics.csv holds {len(losses)} training losses over epochs {seen}, "
                          f"expected {plan.train_steps} over two epochs", log=str(log))
    figures.update(loss_epoch1=sum(epochs[0]) / len(epochs[0]), loss_epoch2=sum(epochs[1]) / len(epochs[1]))
    if all(nll):
        figures.update(nll_epoch1=sum(nll[0]) / len(nll[0]), nll_epoch2=sum(nll[1]) / len(nll[1]))
    figures["falling"] = figures["loss_epoch2"] < figures["loss_epoch1"]
    figures.update(reload_policy(plan, run / "policy"))
    if not figures["finite"]:
        raise PartFailure(f"the loss is not finite: {losses}", figures=figures)
    if not figures["falling"]:
        raise PartFailure(f"the loss did not fall: mean over the same pairs {figures['loss_epoch1']:.4f} in epoch 1, "
                          f"{figures['loss_epoch2']:.4f} in epoch 2", figures=figures)
    return {"figures": figures}


def _metrics(path: Path) -> list[dict]:
    """Per-step training rows of Lightning's CSV: epoch, loss and (when logged) the NLL term."""
    if not path.exists():
        raise PartFailure(f"{path} was not written")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    key = next((k for k in ("train/loss", "train/loss_step") if rows and k in rows[0]), None)
    if key is None:
        raise PartFailure(f"{path}: no train/loss column")
    return [{"epoch": int(r["epoch"]), "loss": float(r[key]),
             "nll": float(r["train/nll_loss"]) if r.get("train/nll_loss") else None} for r in rows if r.get(key)]


def reload_policy(plan: Plan, policy_dir: Path) -> dict:
    """The saved adapter loads onto the base with peft, is trained (LoRA B no longer zero), changes the
    model's logits, and generates."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from cpo.bench.workload import DTYPES, SRC, TGT
    from cpo.data import format_prompt
    from cpo.train.models import load_tokenizer

    if not (policy_dir / "adapter_config.json").exists():
        raise PartFailure(f"{policy_dir}/adapter_config.json was not written: no LoRA adapter was saved")
    base = AutoModelForCausalLM.from_pretrained(plan.model_dir, dtype=DTYPES[plan.dtype]).to(plan.device)
    model = PeftModel.from_pretrained(base, str(policy_dir)).eval()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    trained = sum(int(p.abs().sum() > 0) for p in lora_b)
    tok = load_tokenizer(str(policy_dir))
    prompt = format_prompt("kedrav granzo talvuk", SRC, TGT)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], 1).to(plan.device)
    with torch.no_grad():
        with model.disable_adapter():
            plain = model(input_ids=ids).logits.float()
        adapted = model(input_ids=ids).logits.float()
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    out = {"policy_reloaded": True, "lora_b_trained": f"{trained}/{len(lora_b)}",
           "adapter_logit_change": float((adapted - plain).abs().max()),
           "generated_tokens": int(gen.shape[1] - ids.shape[1])}
    if trained == 0:
        raise PartFailure("the reloaded adapter is untrained: every LoRA B matrix is zero")
    if out["generated_tokens"] < 1:
        raise PartFailure("the reloaded policy generated no tokens")
    return out


# --------------------------------------------------------------------------- parts 2 and 3: the benchmark
def _bench(plan: Plan, model: str, **kw) -> dict:
    import torch

    from cpo.bench import BenchArgs, bench_model, format_model, matmul_peak
    from cpo.bench.flops import peak_size

    params = dict(batch_size=2, threads=plan.threads, lr=1e-4, memory="off", device=plan.device, seed=plan.seed,
                  lora_r=plan.lora_r, precision=plan.precision, lengths="alma_r") | plan.bench | kw
    torch.set_num_threads(plan.threads)
    dtype = torch.bfloat16 if plan.precision == "bf16" else torch.float32
    peak = matmul_peak(plan.threads, n=peak_size(plan.device), device=plan.device, dtype=dtype)
    res = bench_model(model, BenchArgs(models=(model,), **params), peak, log=lambda line: print(line, flush=True))
    print("\n".join(format_model(res, peak)), flush=True)
    res["matmul_peak_flops"] = peak
    return res


def _summary(res: dict) -> dict:
    keys = ("pairs_per_s_median", "pairs_per_s_max", "completion_tokens_per_s_median", "real_tokens_per_s_median",
            "step_s_median", "peak_share_median", "padding_share", "peak_gpu_mb", "step_gpu_mb", "activation_mb")
    return {n: {k: r[k] for k in keys if k in r} for n, r in res["results"].items()}


def throughput(plan: Plan) -> dict:
    """7B shape, LoRA r16 on down_proj, batch 2: CPO with each forward, DPO with a live reference, TRL's CPOTrainer."""
    from cpo.bench import trl_available

    errors = {}
    against = None
    if importlib.util.find_spec("trl") is None:
        errors["trl_cpo"] = MISSING.format(pkg="trl")
    elif importlib.util.find_spec("datasets") is None:
        errors["trl_cpo"] = MISSING.format(pkg="datasets (TRL's CPOTrainer needs it)")
    elif not trl_available():
        errors["trl_cpo"] = "trl is installed but trl.experimental.cpo does not import (trl >= 0.24 has it)"
    else:
        against = "trl"
    res = _bench(plan, plan.shape("7b"), losses=("cpo", "dpo_live"), forwards=("kv_cache", "concat"), against=against)
    figures = {"implementations": _summary(res), "ratios": res["ratios"],
               "matmul_peak_tflops": res["matmul_peak_flops"] / 1e12, "token_lengths": res["token_lengths"],
               "model": res["model"], "parameters": res["parameters"], "precision": res["precision"],
               "device": plan.device}
    for key in ("trl_first_batch", "trl_tokens"):
        if key in res:
            figures[key] = res[key]
    return {"figures": figures, "errors": errors}


def fit_13b(plan: Plan) -> dict:
    """13B shape, CPO LoRA as ALMA-R trains it (r16 on down_proj, gradient checkpointing, batch 2, bf16):
    speed on ALMA-R's lengths, then peak memory with every pair at the bounds (256 prompt, 512 total)."""
    import gc

    import torch

    figures, errors = {}, {}
    runs = (("alma_r_lengths", "alma_r", {}), ("worst_case_lengths", "alma_r_max", dict(steps=1, reps=1, warmup=1)))
    for label, lengths, kw in runs:
        try:
            res = _bench(plan, plan.shape("13b"), losses=("cpo",), gradient_checkpointing=True, lengths=lengths, **kw)
            figures[label] = _summary(res)["cpo"] | {"token_lengths": res["token_lengths"]}
        except Exception as e:  # noqa: BLE001 - out of memory is the answer to "does it fit"
            if not (torch.cuda.is_available() and isinstance(e, torch.cuda.OutOfMemoryError)):
                raise
            errors[label] = f"does not fit: CUDA out of memory ({str(e).splitlines()[0][:200]})"
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    figures.update(fits=not errors, model=plan.shape("13b"), precision=plan.precision, device=plan.device)
    return {"figures": figures, "errors": errors}


# --------------------------------------------------------------------------- part 5: a large vocabulary
def large_vocab(plan: Plan) -> dict:
    """Llama-3-8B shape (hidden 4096, 32 layers, 32 heads, 8 KV heads, FFN 14336, vocabulary 128,256), LoRA r16 on
    down_proj, bf16, batch 2 and 8: CPO with the chunked log-probs (logps.chunk_tokens=auto, the default), CPO on
    the full logits and TRL's CPOTrainer, same weights and batches: tokens/s, pairs/s, peak CUDA memory."""
    import gc

    import torch

    from cpo.bench import trl_available
    from cpo.bench.report import large_vocab_targets

    errors, by_batch = {}, {}
    against = "trl" if importlib.util.find_spec("datasets") is not None and trl_available() else None
    if against is None:
        errors["trl_cpo"] = MISSING.format(pkg="trl and datasets")
    for batch in plan.large_vocab_batches:
        try:
            res = _bench(plan, plan.shape("8b"), batch_size=batch, losses=("cpo",), chunk_tokens=(None,),
                         against=against, lengths=plan.large_vocab_lengths, **plan.large_vocab_bench)
        except Exception as e:  # noqa: BLE001 - out of memory at batch 8 is a figure too: the other batch still runs
            if not (torch.cuda.is_available() and isinstance(e, torch.cuda.OutOfMemoryError)):
                raise
            errors[f"batch_{batch}"] = f"CUDA out of memory ({str(e).splitlines()[0][:200]})"
            continue
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        row = {"implementations": _summary(res), "ratios": res["ratios"], "token_lengths": res["token_lengths"],
               "targets": large_vocab_targets(res)}
        for key in ("trl_first_batch_by_impl", "trl_tokens"):
            if key in res:
                row[key] = res[key]
        by_batch[str(batch)] = row
    if not by_batch:
        raise PartFailure("no batch size ran: " + "; ".join(errors.values()))
    return {"figures": {"batches": by_batch, "model": plan.shape("8b"), "vocab": 128256, "lora_r": plan.lora_r,
                        "precision": plan.precision, "device": plan.device}, "errors": errors}


# --------------------------------------------------------------------------- part 4: beam search
def beam(plan: Plan) -> dict:
    """Batched beam search (5 beams, 256 new tokens, SPEC section 6) on the 7B shape: sentences/s at batch 1, 16, 64."""
    from cpo.bench import run_generation_bench

    res = run_generation_bench([plan.shape("7b")], plan.threads, n_single=1, batch_sizes=(16, 64), num_beams=5,
                               max_new_tokens=plan.beam_new_tokens, reps=1, seed=plan.seed, device=plan.device,
                               dtype=plan.dtype, lengths="alma_r", batches_per_size=1, warmup_new_tokens=4,
                               log=lambda line: print(line, flush=True))
    m = res["models"][plan.shape("7b")]
    rates, errors = {}, {}
    if "single_sent_per_s_median" in m:
        rates["1"] = m["single_sent_per_s_median"]
    else:
        errors["1"] = m["single_error"]
    for bs, row in m["batched"].items():
        if "error" in row:
            errors[str(bs)] = row["error"]
        else:
            rates[str(bs)] = row["sent_per_s_median"]
    if not rates:
        raise PartFailure("no batch size ran: " + "; ".join(errors.values()))
    note = "random weights: beams never stop early, every sentence decodes all new tokens"
    return {"figures": {"sentences_per_s": rates, "num_beams": 5, "max_new_tokens": plan.beam_new_tokens,
                        "model": plan.shape("7b"), "dtype": plan.dtype, "device": plan.device, "note": note},
            "errors": errors}


PARTS = {
    "prepare": prepare,
    "train_auto": lambda plan: train(plan, "auto"),
    "train_fsdp": lambda plan: train(plan, "fsdp"),
    "train_deepspeed_zero2": lambda plan: train(plan, "deepspeed_zero2"),
    "throughput_7b": throughput,
    "fit_13b": fit_13b,
    "beam_7b": beam,
    "large_vocab_8b": large_vocab,
}


def run_part(name: str, plan: Plan, out: Path) -> int:
    """Runs one part and writes its JSON; the exit code says whether it gave figures."""
    try:
        result = PARTS[name](plan)
        result["status"] = "partial" if result.get("errors") else "ok"
    except PartFailure as e:
        result = {"status": "failed", "error": str(e)} | ({"log": e.log} if e.log else {})
        result |= {"figures": e.figures} if e.figures else {}
    except Exception as e:  # noqa: BLE001 - the report states it in one sentence; the traceback is in the log
        import traceback

        traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0][:300]
        result = {"status": "failed", "error": f"{type(e).__name__}: {first}"}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, out)
    return 0 if result["status"] != "failed" else 1
