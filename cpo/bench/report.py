"""The benchmark's text table for one model."""

from __future__ import annotations


def _memory(r: dict) -> str:
    if "peak_rss_mb" in r:
        return f"{r['peak_rss_mb']:7.0f} {r['step_rss_mb']:8.1f}"
    if "peak_gpu_mb" in r:
        return f"{r['peak_gpu_mb']:7.0f} {r['step_gpu_mb']:8.1f}"
    return f"{'-':>7s} {'-':>8s}"


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
    if "levers" in res:
        for k, v in res["levers"].items():
            lines.append(f"  lever {k}: " + ", ".join(f"{a} {b:.3f}" for a, b in v.items()))
    return lines
