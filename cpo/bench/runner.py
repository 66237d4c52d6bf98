"""The measuring loop: build the implementations, run their chunks interleaved, turn times into rates."""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import torch

from cpo.bench.flops import Lora, Work, matmul_peak, peak_size
from cpo.bench.memory import CudaPeak, probe_memory_subprocess, saved_activation_mb
from cpo.bench.ours import OursImpl, Variant
from cpo.bench.policies import FullCopies, SharedLora
from cpo.bench.report import format_model, large_vocab_targets
from cpo.bench.trl_impl import TrlImpl, compare_first_batch, trl_available
from cpo.bench.workload import LOSSES, MODELS, build_model, make_workload

FORWARDS = ("packed", "kv_cache", "concat")
FULL_LOGITS = "cpo[chunk_tokens=null]"  # CPO on the full logits, the chunked path's baseline


def chunk_name(chunk: int | str | None) -> str:
    return f"cpo[chunk_tokens={'null' if chunk is None else chunk}]"


def _stats(chunks: list[list[float]], work: list[Work], pairs_per_step: int, peak: float) -> dict:
    tot = Work()
    for w in work:
        tot += w
    times = sorted(sum(c) for c in chunks)
    tmin, tmed = times[0], statistics.median(times)
    n = len(work)
    return {
        "step_s_min": tmin / n,
        "step_s_median": tmed / n,
        "pairs_per_s_max": pairs_per_step * n / tmin,
        "pairs_per_s_median": pairs_per_step * n / tmed,
        "completion_tokens_per_s_median": tot.completion_tokens / tmed,
        "completion_tokens_per_s_max": tot.completion_tokens / tmin,
        "real_tokens_per_s_median": tot.real / tmed,
        "flops_per_step": tot.flops / n,
        "flops_per_s_median": tot.flops / tmed,
        "peak_share_median": tot.flops / tmed / peak,
        "peak_share_max": tot.flops / tmin / peak,
        "padding_share": 1 - tot.real / tot.positions,
        "reps": len(chunks),
    }


@dataclass
class BenchArgs:
    models: Sequence[str] = ("demo", "h256")
    batch_size: int = 8
    threads: int = 1
    reps: int = 5
    warmup: int = 1
    steps: int = 3
    lr: float = 1e-5
    against: str | None = None
    shared_prompt: bool = True
    fused_adamw: bool = True  # TRL's default optimizer (adamw_torch_fused) since torch 2.8
    levers: bool = False
    vocab_size: int | None = None
    gradient_checkpointing: bool = False
    packed: bool = True  # the shared prompt through completion_logps_packed (PreferenceModule's default forward)
    memory: str = "subprocess"  # subprocess | off
    device: str = "cpu"
    seed: int = 0
    losses: Sequence[str] = LOSSES  # our implementations, by loss (with the default forward)
    forwards: Sequence[str] = ()  # also CPO with each of these forwards: "cpo[packed]", "cpo[kv_cache]", "cpo[concat]"
    lora_r: int | None = None  # LoRA of this rank on a shared frozen base (policies.SharedLora); None: full fine-tuning
    lora_targets: Sequence[str] = ("down_proj",)
    precision: str = "fp32"  # fp32 | bf16 (weights in bf16, compute under bf16 autocast: the project's bf16-mixed)
    lengths: str = "demo"  # demo | alma_r | alma_r_max (cpo.bench.lengths)
    activation: bool = True  # count the tensors saved for the backward (one extra forward per implementation)
    # also CPO with each of these logps.chunk_tokens (None: full logits; "auto": the default, what "cpo" runs)
    chunk_tokens: Sequence[int | str | None] = ()
    memory_parallel: int = 2  # memory probes run at once (1 where TRL's full logits alone take gigabytes)


def _variants(a: BenchArgs) -> list[Variant]:
    base = dict(
        shared_prompt=a.shared_prompt,
        fused_adamw=a.fused_adamw,
        gradient_checkpointing=a.gradient_checkpointing,
        packed=a.packed and a.shared_prompt,
    )
    variants = [Variant(loss, loss, **base) for loss in a.losses]
    cpo, dpo = Variant("cpo", "cpo", **base), Variant("dpo_live", "dpo_live", **base)

    def with_forward(v: Variant, stem: str, f: str) -> Variant:
        return replace(v, name=f"{stem}[{f}]", shared_prompt=f != "concat", packed=f == "packed")

    extra = [with_forward(cpo, "cpo", f) for f in a.forwards]
    extra += [replace(cpo, name=chunk_name(c), chunk_tokens=c) for c in a.chunk_tokens]
    if a.levers:  # explicit configurations around our default one (duplicates of it are measured again)
        extra += [
            with_forward(v, stem, f)
            for v, stem in ((cpo, "cpo"), (dpo, "dpo_live"))
            for f in ("concat", "kv_cache", "packed")
        ]
        extra += [
            replace(cpo, name="cpo[concat,full_logits]", shared_prompt=False, packed=False, logits_to_keep=False),
            replace(cpo, name=f"cpo[fused_adamw={not a.fused_adamw}]", fused_adamw=not a.fused_adamw),
        ]
    names = {v.name for v in variants}
    for v in extra:
        if v.name not in names:
            variants.append(v)
            names.add(v.name)
    return variants


def bench_model(name: str, a: BenchArgs, peak: float, log=print) -> dict:
    torch.manual_seed(a.seed)
    spec = MODELS[name]
    cuda = a.device.startswith("cuda")
    lever_pool = 16 if a.levers else None  # batches of the pool the length-grouping lever draws from
    wl = make_workload(a.batch_size, a.steps, seed=a.seed, lengths=a.lengths)
    dtype = "bfloat16" if a.precision == "bf16" else "float32"
    # A LoRA base is built where it runs, once; full fine-tuning copies a CPU model to the device per implementation.
    init = build_model(
        wl.tok, name, seed=a.seed, vocab_size=a.vocab_size, device=a.device if a.lora_r else "cpu", dtype=dtype
    )
    n_params = sum(p.numel() for p in init.parameters())
    policies = (
        SharedLora(init, Lora(a.lora_r, tuple(a.lora_targets)), a.seed, a.gradient_checkpointing)
        if a.lora_r
        else FullCopies(init, a.device)
    )
    variants = _variants(a)
    impls = [OursImpl(v, policies, wl, spec, a.lr, a.device, a.precision) for v in variants]
    if a.levers:  # length grouping: a bigger pool, the same model, random vs length-grouped batches
        cpo = next(v for v in variants if v.name == "cpo")
        pool = make_workload(a.batch_size, lever_pool, seed=a.seed, tok=wl.tok, lengths=a.lengths)
        for g in (False, True):
            v = replace(cpo, name=f"cpo[pool,group_by_length={g}]", group_by_length=g)
            impl = OursImpl(v, policies, pool, spec, a.lr, a.device, a.precision)
            if not g:  # random order (not sequential) for the ungrouped pool batches
                order = list(range(len(pool.pairs)))
                random.Random(a.seed).shuffle(order)
                idx = [order[s * a.batch_size : (s + 1) * a.batch_size] for s in range(lever_pool)]
                impl.set_batches([pool.collate(i) for i in idx])
            impls.append(impl)
    chunks: dict[str, list[list[float]]] = {i.name: [] for i in impls}
    gpu = {i.name: CudaPeak() for i in impls} if cuda else {}

    def run_ours(rep: int) -> None:
        k = rep % len(impls)
        for impl in impls[k:] + impls[:k]:  # rotate the order every repetition
            if cuda:
                gpu[impl.name].begin()
            t = impl.run_chunk()
            if cuda:
                gpu[impl.name].end()
            if rep >= a.warmup:
                chunks[impl.name].append(t)

    result: dict = {
        "model": name,
        "spec": asdict(spec),
        "parameters": n_params,
        "vocab": init.config.vocab_size,
        "tokenizer_vocab": len(wl.tok),
        "precision": a.precision,
        "batch_size": a.batch_size,
        "lora": {"r": a.lora_r, "targets": list(a.lora_targets)} if a.lora_r else None,
        "gradient_checkpointing": a.gradient_checkpointing,
        "lengths": a.lengths,
        "token_lengths": wl.token_lengths(),
    }
    act = {}
    if a.activation:
        for i in impls:
            i.activate()
            act[i.name] = saved_activation_mb(lambda: i.compute(i.batches[0]), list(i.module.policy.parameters()))
    trl = None
    if a.against == "trl":
        total = (a.warmup + a.reps) * a.steps
        trl = TrlImpl(
            policies, wl, spec, a.lr, a.device, a.fused_adamw, a.threads, total, a.gradient_checkpointing, a.precision
        )
        result["trl_tokens"] = trl.token_check(wl)
        ours_cpo = next((i for i in impls if i.v.loss == "cpo" and i.name.startswith("cpo")), None)
        if ours_cpo is not None:
            got = trl.first_batch()
            result["trl_first_batch"] = compare_first_batch(ours_cpo, trl, got)
            # Every log-prob setting measured (chunked, full logits) against the same TRL loss.
            result["trl_first_batch_by_impl"] = {ours_cpo.name: result["trl_first_batch"]} | {
                i.name: compare_first_batch(i, trl, got) for i in impls
                if i.name != ours_cpo.name and i.name.startswith("cpo[chunk_tokens=")
            }
        if a.activation:
            act[trl.name] = saved_activation_mb(trl.first_batch_loss, list(trl.model.parameters()))
        chunks[trl.name] = []
        gpu[trl.name] = CudaPeak()
        rep = [0]

        def on_chunk(times):
            if rep[0] >= a.warmup:
                chunks[trl.name].append(times)
            run_ours(rep[0])
            rep[0] += 1

        trl.train(
            on_chunk,
            a.steps,
            on_step_begin=gpu[trl.name].begin if cuda else None,
            on_step_end=gpu[trl.name].end if cuda else None,
        )
    else:
        for r in range(a.warmup + a.reps):
            run_ours(r)

    res = {}
    for impl in impls + ([trl] if trl else []):
        res[impl.name] = _stats(chunks[impl.name], impl.work, a.batch_size, peak)
        if impl.name in act:
            res[impl.name]["activation_mb"] = act[impl.name]
        if getattr(impl, "ref_cache_s", None) is not None:
            res[impl.name]["ref_cache_s"] = impl.ref_cache_s
            res[impl.name]["ref_cache_s_per_pair"] = impl.ref_cache_s / len(wl.pairs)
        if cuda:
            res[impl.name].update(gpu[impl.name].as_dict())
    result["results"] = res

    if a.memory == "subprocess" and not cuda:
        names = list(a.losses) + [chunk_name(c) for c in a.chunk_tokens] + (["trl_cpo"] if trl else [])
        names = list(dict.fromkeys(names))
        cfgs = []
        for n in names:
            cfg = dict(
                model=name,
                impl=n,
                batch_size=a.batch_size,
                steps=a.steps,
                lr=a.lr,
                threads=a.threads,
                seed=a.seed,
                fused=a.fused_adamw,
                import_trl=trl is not None,
                vocab_size=a.vocab_size,
                gradient_checkpointing=a.gradient_checkpointing,
                lengths=a.lengths,
                lora_r=a.lora_r,
                lora_targets=list(a.lora_targets),
                precision=a.precision,
            )
            if n != "trl_cpo":
                cfg["variant"] = asdict(next(v for v in variants if v.name == n))
            cfgs.append(cfg)
        log(f"[bench] {name}: memory probes ({len(cfgs)} subprocesses)")
        for n, m in zip(names, probe_memory_subprocess(cfgs, a.memory_parallel)):
            res[n].update(m)

    result["ratios"] = ratios(res)
    result["targets"] = large_vocab_targets(result)
    if a.levers:
        result["levers"] = levers(res, a.fused_adamw)
    return result


def ratios(r: dict) -> dict:
    """The comparisons the targets are stated in, for whichever implementations ran."""
    out = {}

    def put(key, x, y, field):
        if x in r and y in r and field in r[x] and field in r[y] and r[y][field]:
            out[key] = r[x][field] / r[y][field]

    for s in ("median", "min"):
        put(f"cpo_step_over_dpo_live_{s}", "cpo", "dpo_live", f"step_s_{s}")
    for s in ("median", "min"):
        put(f"dpo_cached_step_over_cpo_{s}", "dpo_cached", "cpo", f"step_s_{s}")
    put("cpo_pairs_per_s_over_trl_median", "cpo", "trl_cpo", "pairs_per_s_median")
    put("cpo_pairs_per_s_over_trl_max", "cpo", "trl_cpo", "pairs_per_s_max")
    put("cpo_peak_rss_over_trl", "cpo", "trl_cpo", "peak_rss_mb")
    if "step_rss_mb" in r.get("cpo", {}) and "step_rss_mb" in r.get("trl_cpo", {}):
        out["cpo_step_rss_over_trl"] = r["cpo"]["step_rss_mb"] / max(r["trl_cpo"]["step_rss_mb"], 1e-9)
    put("cpo_peak_gpu_over_trl", "cpo", "trl_cpo", "peak_gpu_mb")
    put("cpo_step_gpu_over_trl", "cpo", "trl_cpo", "step_gpu_mb")
    put("cpo_activation_over_trl", "cpo", "trl_cpo", "activation_mb")
    # The chunked log-probs (the default "cpo" at a large vocabulary) against the full logits.
    for s in ("median", "max"):
        put(f"cpo_pairs_per_s_over_full_logits_{s}", "cpo", FULL_LOGITS, f"pairs_per_s_{s}")
    if "step_rss_mb" in r.get("cpo", {}) and "step_rss_mb" in r.get(FULL_LOGITS, {}):
        out["cpo_step_rss_over_full_logits"] = r["cpo"]["step_rss_mb"] / max(r[FULL_LOGITS]["step_rss_mb"], 1e-9)
    put("cpo_step_gpu_over_full_logits", "cpo", FULL_LOGITS, "step_gpu_mb")
    put("cpo_peak_gpu_over_full_logits", "cpo", FULL_LOGITS, "peak_gpu_mb")
    put("cpo_activation_over_full_logits", "cpo", FULL_LOGITS, "activation_mb")
    return out


def levers(r: dict, fused_adamw: bool) -> dict:
    def speed(x, y):  # how much faster y is than x (median and best)
        return {
            "median": r[x]["step_s_median"] / r[y]["step_s_median"],
            "best": r[x]["step_s_min"] / r[y]["step_s_min"],
        }

    fu_on, fu_off = ("cpo", f"cpo[fused_adamw={not fused_adamw}]")[:: 1 if fused_adamw else -1]
    g0, g1 = "cpo[pool,group_by_length=False]", "cpo[pool,group_by_length=True]"
    out = {
        "kv_cache_over_concat_speedup_cpo": speed("cpo[concat]", "cpo[kv_cache]"),
        "kv_cache_over_concat_speedup_dpo_live": speed("dpo_live[concat]", "dpo_live[kv_cache]"),
        "packed_over_concat_speedup_cpo": speed("cpo[concat]", "cpo[packed]"),
        "packed_over_concat_speedup_dpo_live": speed("dpo_live[concat]", "dpo_live[packed]"),
        "packed_over_kv_cache_speedup_cpo": speed("cpo[kv_cache]", "cpo[packed]"),
        "logits_to_keep_speedup_concat": speed("cpo[concat,full_logits]", "cpo[concat]"),
        "fused_adamw_speedup": speed(fu_off, fu_on),
        "group_by_length_speedup_pairs_per_s": {
            "median": r[g1]["pairs_per_s_median"] / r[g0]["pairs_per_s_median"],
            "best": r[g1]["pairs_per_s_max"] / r[g0]["pairs_per_s_max"],
        },
        "group_by_length_padding_share": {"random": r[g0]["padding_share"], "grouped": r[g1]["padding_share"]},
    }
    if "activation_mb" in r["cpo[concat]"]:
        out["logits_to_keep_activation_mb"] = {
            "full": r["cpo[concat,full_logits]"]["activation_mb"],
            "kept": r["cpo[concat]"]["activation_mb"],
        }
    return out


def run_train_bench(a: BenchArgs, log=print) -> dict:
    torch.set_num_threads(a.threads)
    if a.against == "trl" and not trl_available():
        raise RuntimeError("--against trl: trl (with trl.experimental.cpo) is not importable")
    t0 = time.perf_counter()
    dtype = torch.bfloat16 if a.precision == "bf16" else torch.float32
    n = peak_size(a.device)
    peak = matmul_peak(a.threads, n=n, device=a.device, dtype=dtype)
    log(f"[bench] {a.precision} matmul peak ({n}^3, {a.threads} thread(s), {a.device}): {peak / 1e9:.1f} GFLOP/s")
    out = {
        "mode": "train",
        "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(a).items()},
        "matmul_peak_flops": peak,
        "torch": torch.__version__,
        "models": {},
    }
    for name in a.models:
        res = bench_model(name, a, peak, log)
        for line in format_model(res, peak):
            log(line)
        out["models"][name] = res
    out["peak_after_flops"] = matmul_peak(a.threads, n=n, device=a.device, dtype=dtype)
    out["wall_s"] = time.perf_counter() - t0
    log(
        f"[bench] matmul peak re-measured at the end: {out['peak_after_flops'] / 1e9:.1f} GFLOP/s; "
        f"wall {out['wall_s']:.0f} s"
    )
    return out
