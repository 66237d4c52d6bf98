"""The GPU check's report: the targets it states, its Markdown summary, and the one-sentence error of a log.

Imports nothing beyond the standard library: the check's driver (scripts/gpu_check.py) writes a report
even where torch itself is broken.
"""
from __future__ import annotations

import re

TITLES = {
    "prepare": "1B model (random init) and preference JSONL",
    "train_auto": "train.py, strategy=auto",
    "train_fsdp": "train.py, strategy=fsdp",
    "train_deepspeed_zero2": "train.py, strategy=deepspeed_zero2",
    "throughput_7b": "7B throughput and memory vs TRL",
    "fit_13b": "13B CPO LoRA as ALMA-R trains it",
    "beam_7b": "7B batched beam search",
    "large_vocab_8b": "Llama-3-8B shape (vocabulary 128,256): chunked log-probs vs full logits vs TRL",
}
TRAIN_PARTS = ("train_auto", "train_fsdp", "train_deepspeed_zero2")
IMPL_NAMES = {"cpo": "cpo (forward=packed, the default)", "cpo[kv_cache]": "cpo (forward=kv_cache)",
              "cpo[concat]": "cpo (forward=concat)", "dpo_live": "dpo, live reference (adapter off)",
              "trl_cpo": "TRL CPOTrainer", "cpo[chunk_tokens=null]": "cpo, full logits (logps.chunk_tokens=null)"}
LARGE_VOCAB_NAMES = {"cpo": "cpo, chunked log-probs (logps.chunk_tokens=auto, the default)"}
# An exception, an app's "error: ...", or Hydra's override errors ("Could not override ...", "Key ... not in struct").
ERROR_LINE = re.compile(r"^(error: .+|[\w.]*(Error|Exception|Interrupt|Failure)\b.*"
                        r"|Could not .+|Key '.+' is not in struct)$")


def last_error_line(text: str) -> str:
    """The last line of a log that reads like an error (an exception, or an app's ``error: ...``), shortened."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    hit = next((ln for ln in reversed(lines) if ERROR_LINE.match(ln)), lines[-1] if lines else "no output")
    return hit if len(hit) <= 300 else hit[:297] + "..."


def targets(report: dict) -> list[dict]:
    """Issue 9's targets, each with its measured value (None where the part did not give it)."""
    fig = report["parts"].get("throughput_7b", {}).get("figures", {})
    ratios, impls = fig.get("ratios", {}), fig.get("implementations", {})
    rows = [
        ("CPO pairs/s >= 1.3x TRL's CPOTrainer", ratios.get("cpo_pairs_per_s_over_trl_median"), ">=", 1.3),
        ("CPO peak CUDA memory <= TRL's", ratios.get("cpo_peak_gpu_over_trl"), "<=", 1.0),
        ("CPO step <= 0.8x DPO with a live reference", ratios.get("cpo_step_over_dpo_live_median"), "<=", 0.8),
        ("MFU of the CPO step >= 40%", impls.get("cpo", {}).get("peak_share_median"), ">=", 0.40),
    ]
    out = []
    for name, value, op, bound in rows:
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out.append({"target": name, "value": value, "bound": f"{op} {bound}", "met": met})
    return out


def _f(x, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def _row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _outcome(r: dict) -> str:
    return r["status"] + (f": {r['error']}" if r.get("error") else "")


def _lengths(t: dict | None) -> str:
    if not t:
        return "-"
    return ", ".join(f"{k} median {v['median']:.0f} / p90 {v['p90']} / max {v['max']}" for k, v in t.items())


def _ran_on(f: dict) -> str:
    return f"Ran on: model `{f.get('model')}`, {f.get('precision') or f.get('dtype')}, {f.get('device')}."


def _errors(r: dict) -> list[str]:
    return [f"- {k}: {v}" for k, v in r.get("errors", {}).items()]


def _part1(parts: dict) -> list[str]:
    lines = ["## 1. `python train.py` on the 1B shape (LoRA r16 on down_proj, gradient checkpointing)", ""]
    prep = parts.get("prepare")
    if prep:
        f = prep.get("figures")
        detail = (f" {f['parameters'] / 1e6:,.1f}M parameters; tokenizer: {f['tokenizer']}; {f['train_pairs']} train / "
                  f"{f['val_pairs']} val pairs; token lengths {_lengths(f.get('token_lengths'))}.") if f else ""
        lines += [f"Prepare: {_outcome(prep)}.{detail}", ""]
    lines += [_row("strategy", "status", "steps", "loss, epoch 1 -> 2 (mean, same pairs)", "NLL/token", "finite",
                   "falling", "policy reloaded (LoRA B trained)", "generated tokens", "fit s"),
              "|---|---|---:|---|---|---|---|---|---:|---:|"]
    for name in TRAIN_PARTS:
        r = parts.get(name)
        if r is None:
            continue
        f = r.get("figures") or {}
        if "loss_epoch1" not in f:
            lines.append(_row(name[6:], _outcome(r), *[""] * 8))
            continue
        nll = f"{f['nll_epoch1']:.3f} -> {f['nll_epoch2']:.3f}" if "nll_epoch1" in f else "-"
        reload = f"{f.get('policy_reloaded', '-')} ({f.get('lora_b_trained', '-')})"
        lines.append(_row(name[6:], _outcome(r), f["steps"], f"{f['loss_epoch1']:.4f} -> {f['loss_epoch2']:.4f}", nll,
                          f["finite"], f["falling"], reload, f.get("generated_tokens", "-"), _f(f["fit_s"], ".1f")))
    cmd = next((parts[n]["figures"]["command"] for n in TRAIN_PARTS if parts.get(n, {}).get("figures")), None)
    if cmd:
        lines += ["", f"Command (per strategy): `python {cmd}`"]
    return lines + [""]


def _impl_table(impls: dict, names: dict | None = None) -> list[str]:
    lines = [_row("implementation", "pairs/s (median)", "completion tok/s", "real tok/s", "step ms", "peak GPU GiB",
                  "+step GiB", "MFU %", "pad %"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, r in impls.items():
        def gib(k):
            return _f(r[k] / 1024, ".2f") if k in r else "-"

        lines.append(_row((names or {}).get(n, IMPL_NAMES.get(n, n)), _f(r.get("pairs_per_s_median"), ".2f"),
                          _f(r.get("completion_tokens_per_s_median"), ".0f"),
                          _f(r.get("real_tokens_per_s_median"), ".0f"),
                          _f(1e3 * r["step_s_median"], ".1f"), gib("peak_gpu_mb"), gib("step_gpu_mb"),
                          _f(100 * r["peak_share_median"], ".1f"), _f(100 * r["padding_share"], ".1f")))
    return lines


def _part2(r: dict | None) -> list[str]:
    if r is None:
        return []
    lines = ["## 2. Throughput and memory, 7B shape (LoRA r16 on down_proj, batch 2, bf16)", "",
             f"Status: {_outcome(r)}."]
    f = r.get("figures")
    if f:
        lines += [f"{_ran_on(f)} Matmul peak measured in the same process: {f['matmul_peak_tflops']:.1f} TFLOP/s. "
                  f"Token lengths: {_lengths(f.get('token_lengths'))}.", ""]
        lines += _impl_table(f["implementations"])
        lines += ["", "Completion tokens are the chosen and rejected tokens trained on; real tokens are every non-pad "
                  "token a forward processes (the prompt once or twice, and the reference's for DPO). MFU: executed "
                  "model FLOPs on real tokens (LoRA's frozen base: 4 N per token) over the measured matmul peak.", ""]
        lines += [f"- {k}: {v:.3f}" for k, v in f["ratios"].items()]
        if "trl_first_batch" in f:
            t, c = f["trl_first_batch"], f.get("trl_tokens", {})
            lines.append(f"- TRL token ids identical to ours for {c.get('identical_ids')}/{c.get('pairs')} pairs; "
                         f"first-batch loss ours {t['ours_loss']:.5f}, TRL {t['trl_loss']:.5f}")
    return lines + _errors(r) + [""]


def _part3(r: dict | None) -> list[str]:
    if r is None:
        return []
    lines = ["## 3. 13B shape, CPO LoRA as ALMA-R trains it (r16 on down_proj, gradient checkpointing, batch 2, bf16)",
             "", f"Status: {_outcome(r)}."]
    f = r.get("figures")
    if f:
        lines.append(f"{_ran_on(f)} Ran without running out of memory: {f['fits']}.")
        rows = {k: v for k, v in f.items() if isinstance(v, dict)}
        if rows:
            lines += ["", _row("lengths", "pairs/s", "step ms", "peak GPU GiB", "MFU %"), "|---|---:|---:|---:|---:|"]
            for k, v in rows.items():
                peak = _f(v["peak_gpu_mb"] / 1024, ".2f") if "peak_gpu_mb" in v else "-"
                lines.append(_row(k, _f(v.get("pairs_per_s_median"), ".2f"), _f(1e3 * v["step_s_median"], ".1f"), peak,
                                  _f(100 * v["peak_share_median"], ".1f")))
    return lines + _errors(r) + [""]


def _part4(r: dict | None) -> list[str]:
    if r is None:
        return []
    lines = ["## 4. Batched beam search, 7B shape", "", f"Status: {_outcome(r)}."]
    f = r.get("figures")
    if f:
        lines.append(f"{_ran_on(f)} {f['num_beams']} beams, {f['max_new_tokens']} new tokens ({f['note']}).")
        lines += ["", "| batch | sentences/s |", "|---:|---:|"]
        lines += [_row(b, f"{v:.2f}") for b, v in f["sentences_per_s"].items()]
    return lines + _errors(r) + [""]


def _part5(r: dict | None) -> list[str]:
    if r is None:
        return []
    lines = ["## 5. Large vocabulary: Llama-3-8B shape (vocabulary 128,256, LoRA r16 on down_proj, bf16)", "",
             f"Status: {_outcome(r)}."]
    f = r.get("figures")
    for batch, row in (f or {}).get("batches", {}).items():
        lengths = _lengths(row.get("token_lengths"))
        lines += ["", f"### Batch {batch} pairs", "", f"{_ran_on(f)} Token lengths: {lengths}.", ""]
        lines += _impl_table(row["implementations"], LARGE_VOCAB_NAMES)
        lines += [""] + [f"- {k}: {v:.3f}" for k, v in row["ratios"].items()]
        for name, t in row.get("trl_first_batch_by_impl", {}).items():
            how = "full logits" if t["chunk_tokens"] is None else f"chunks of {t['chunk_tokens']} tokens"
            lines.append(f"- first-batch loss, {name} ({how}): {t['ours_loss']:.5f}, TRL {t['trl_loss']:.5f}, "
                         f"|diff| {t['loss_abs_diff']:.2e}")
        for t in row.get("targets", []):
            met = "-" if t["met"] is None else ("met" if t["met"] else "not met")
            lines.append(f"- target (stated for the CPU benchmark) {t['target']}: {_f(t['value'])} ({met})")
    return lines + _errors(r) + [""]


def markdown(report: dict) -> str:
    d, parts = report.get("device", {}), report["parts"]
    device = d.get("name") or ("CPU (dry run)" if report["dry_run"] else d.get("error", "no CUDA device"))
    if d.get("memory_gib"):
        device += f", {d['memory_gib']} GiB, compute capability {d.get('capability')}, driver {d.get('driver') or '-'}"
    dry = " — CPU dry run (tiny shapes; figures check the code path, not the GPU)" if report["dry_run"] else ""
    lines = [f"# {report['title']}{dry}", "", f"- Command: `{report['command']}`",
             f"- Started {report['started']}, wall {report.get('wall_s')} s "
             f"(overall limit {report['total_limit_s']:.0f} s)",
             f"- Device: {device}; torch CUDA {d.get('torch_cuda') or '-'}",
             "- Versions: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in report.get("versions", {}).items()),
             "", "## Summary", "", _row("part", "what", "status", "s", "outcome"), "|---:|---|---|---:|---|"]
    for name, r in parts.items():
        outcome = r.get("error") or "figures below"
        lines.append(_row(r["part"], TITLES[name], r["status"], r.get("seconds", "-"), outcome))
    lines += ["", "## Targets (7B shape, same run)", "", "| target | measured | met |", "|---|---:|---|"]
    for t in report.get("targets", []):
        lines.append(_row(t["target"], _f(t["value"]), "-" if t["met"] is None else ("yes" if t["met"] else "no")))
    lines.append("")
    lines += _part1(parts) + _part2(parts.get("throughput_7b"))
    lines += _part3(parts.get("fit_13b")) + _part4(parts.get("beam_7b")) + _part5(parts.get("large_vocab_8b"))
    return "\n".join(lines).rstrip() + "\n"
