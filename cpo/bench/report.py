"""The benchmark's text table for one model."""

from __future__ import annotations


def _memory(r: dict) -> str:
    if "peak_rss_mb" in r:
        return f"{r['peak_rss_mb']:7.0f} {r['step_rss_mb']:8.1f}"
    if "peak_gpu_mb" in r:
        return f"{r['peak_gpu_mb']:7.0f} {r['step_gpu_mb']:8.1f}"
    return f"{'-':>7s} {'-':>8s}"


def large_vocab_targets(res: dict) -> list[dict]:
    """Issue 17's targets for the chunked log-probs at a large vocabulary (none below 65,536): step memory against
    TRL's (0.30x at 128k and 0.25x at 262k for batch 8, 0.6x at batch 2), pairs/s against the full logits and TRL."""
    if res.get("vocab", 0) < 65_536:
        return []
    r = res.get("ratios", {})
    mem_bound = (0.25 if res["vocab"] >= 200_000 else 0.30) if res["batch_size"] >= 8 else 0.6
    mem = r.get("cpo_step_gpu_over_trl", r.get("cpo_step_rss_over_trl"))
    rows = [(f"step memory <= {mem_bound}x TRL's", mem, "<=", mem_bound),
            ("pairs/s >= 0.9x the full logits'", r.get("cpo_pairs_per_s_over_full_logits_median"), ">=", 0.9),
            ("pairs/s >= 1.5x TRL's", r.get("cpo_pairs_per_s_over_trl_median"), ">=", 1.5)]
    return [{"target": name, "value": v, "bound": f"{op} {b}",
             "met": None if v is None else (v <= b if op == "<=" else v >= b)} for name, v, op, b in rows]


def format_model(res: dict, peak: float) -> list[str]:
    s = res["spec"]
    lora = f", LoRA r{res['lora']['r']} on {'/'.join(res['lora']['targets'])}" if res.get("lora") else ""
    lines = [
        f"== model {res['model']} (hidden {s['hidden']}, {s['layers']} layers, {s['heads']} heads, "
        f"{s['kv_heads']} kv heads, ffn {s['ffn']}, vocab {res['vocab']}, "
        f"{res['parameters'] / 1e6:.2f}M parameters{lora})"
    ]
    gpu = any("peak_gpu_mb" in r for r in res["results"].values())
    mem = ("GPU MB", "+step MB") if gpu else ("RSS MB", "+step MB")
    hdr = (
        f"{'impl':34s} {'pairs/s med':>11s} {'(best)':>8s} {'tok/s med':>9s} {'step ms med':>11s} {'(min)':>7s} "
        f"{'GFLOP/s':>8s} {'%peak':>6s} {'pad%':>5s} {'act MB':>6s} {mem[0]:>7s} {mem[1]:>8s}"
    )
    lines.append(hdr)
    for n, r in res["results"].items():
        act = f"{r['activation_mb']:6.1f}" if "activation_mb" in r else f"{'-':>6s}"
        lines.append(
            f"{n:34s} {r['pairs_per_s_median']:11.1f} {r['pairs_per_s_max']:8.1f} "
            f"{r['completion_tokens_per_s_median']:9.0f} {1e3 * r['step_s_median']:11.1f} {1e3 * r['step_s_min']:7.1f} "
            f"{r['flops_per_s_median'] / 1e9:8.2f} {100 * r['peak_share_median']:6.1f} {100 * r['padding_share']:5.1f} "
            f"{act} {_memory(r)}"
        )
        if "ref_cache_s" in r:
            per_pair = 1e3 * r["ref_cache_s_per_pair"]
            lines.append(f"{'':34s} (reference log-probs computed once before training: {per_pair:.2f} ms/pair, "
                         f"not in the step time)")
        if "error" in r:
            lines.append(f"{'':34s} memory probe failed: {r['error'][-300:]}")
    for k, v in res["ratios"].items():
        lines.append(f"  {k}: {v:.3f}")
    if "trl_first_batch" in res:
        t, c = res["trl_first_batch"], res["trl_tokens"]
        lines.append(f"  TRL token ids identical to ours for {c['identical_ids']}/{c['pairs']} pairs")
        lines.append(
            f"  first-batch loss: ours {t['ours_loss']:.7f}  TRL {t['trl_loss']:.7f}  |diff| {t['loss_abs_diff']:.2e}; "
            f"max |diff| of sequence log-probs {t['logps_max_abs_diff']:.2e} (values up to {t['logps_scale']:.1f})"
        )
    for name, t in res.get("trl_first_batch_by_impl", {}).items():
        how = "full logits" if t["chunk_tokens"] is None else f"chunks of {t['chunk_tokens']} tokens"
        lines.append(f"  first-batch loss, {name} ({how}): {t['ours_loss']:.7f}, "
                     f"|diff| to TRL {t['loss_abs_diff']:.2e}; "
                     f"max |diff| of sequence log-probs {t['logps_max_abs_diff']:.2e}")
    for t in res.get("targets", []):
        met = "-" if t["met"] is None else ("met" if t["met"] else "NOT met")
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        lines.append(f"  target {t['target']}: {value} ({met})")
    if "levers" in res:
        for k, v in res["levers"].items():
            lines.append(f"  lever {k}: " + ", ".join(f"{a} {b:.3f}" for a, b in v.items()))
    return lines
