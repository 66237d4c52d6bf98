"""The README's measured figures, generated from result files, so that a stale figure is noticed.

A measured block of README.md sits between two markers::

    <!-- measured: demo (docs/results/demo/demo_run.json; scripts/check_readme.py) -->
    ...
    <!-- end measured: demo -->

and is rendered by :data:`BLOCKS` from the result files committed under ``docs/results/`` (the record of the
command that produced the figures). :func:`check` re-renders every block and names those that differ from the
README; ``scripts/check_readme.py`` runs it (``--write`` rewrites the blocks, ``--rerun demo`` runs the demo's
command again and records what it printed). The default test suite runs :func:`check`, so a README edited by
hand, or a result file replaced without regenerating the README, fails it.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
DEMO_RECORD = Path("docs/results/demo/demo_run.json")
_MARK = re.compile(r"<!-- measured: (?P<name>[\w-]+) \((?P<source>[^)]*)\) -->\n(?P<body>.*?)<!-- end measured: "
                   r"(?P=name) -->", re.S)


# ------------------------------------------------------------------------------------------------ demo
def before_after_rows(before: dict, after: dict, change: dict | None = None) -> list[str]:
    """The rows of the run's before/after table, formatted as ``cpo.train.heldout.before_after_table`` does
    (``change``: the change column as recorded, for a record transcribed from a table)."""
    from cpo.mt.evaluation import table_metric_keys

    lines = ["| metric | before | after | change |", "|---|---:|---:|---:|"]
    for k in table_metric_keys(before, after):
        delta = f"{change[k]}" if change and k in change else f"{after[k] - before[k]:+.4g}"
        lines.append(f"| {k} | {before[k]:.4g} | {after[k]:.4g} | {delta} |")
    return lines


def render_demo(record: dict) -> str:
    """The sentence that says what was run and measured, and the before/after table of ``python train.py``."""
    r, m = record["results"], record["measured"]
    head = (f"A measured run (`{record['command']}`, default config, one epoch of {r['loss'].upper()}: "
            f"{r['global_steps']} steps, {r['train_pairs']} train / {r['val_pairs']} val pairs; "
            f"{m['wall_seconds']:.0f} s wall from an empty cache on this {m['cpu_cores']}-core machine, "
            f"{m['asset_build_seconds']:.0f} s of it the one-time asset build; peak RSS {m['peak_rss_gb']:.1f} GB):")
    lines = _wrap(head) + [""] + before_after_rows(r["before"], r["after"], record.get("change"))
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int = 100) -> list[str]:
    out, line = [], ""
    for word in text.split(" "):
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return out + [line]


def cpu_description() -> str:
    """The CPU model and the vector instructions torch's kernels use here: the demo's figures are bit-identical
    from run to run and for any thread count on one kind of CPU, but another CPU (an AVX-512 one, or another
    generation, where MKL and ATen pick other kernels) rounds differently and ends with other figures."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        return f"{model}, torch {torch.__version__} {torch.backends.cpu.get_cpu_capability()}"
    except Exception:  # noqa: BLE001 - a description only
        return model


def demo_record_from_run(run_dir: Path, command: str, wall_seconds: float, asset_build_seconds: float,
                         peak_rss_gb: float, cpu_cores: int) -> dict:
    """What the README quotes of a finished ``python train.py`` run (its results.json) and of its measurement."""
    res = json.loads((Path(run_dir) / "results.json").read_text(encoding="utf-8"))
    keep = ("loss", "beta", "seed", "train_pairs", "val_pairs", "global_steps", "fit_seconds", "total_seconds",
            "before", "after", "fingerprint", "provenance")
    return {"command": command, "results": {k: res[k] for k in keep if k in res},
            "measured": {"wall_seconds": round(wall_seconds, 1), "asset_build_seconds": round(asset_build_seconds, 1),
                         "peak_rss_gb": round(peak_rss_gb, 2), "cpu_cores": cpu_cores, "cpu": cpu_description()}}


# ------------------------------------------------------------------------------------------------ protocol
_NAMES = {"sft_ref": "SFT on references", "sft": "SFT on preferred"}
_TABLE_METRICS = (("bleu", "BLEU", 2), ("chrf", "chrF", 2), ("ter", "TER", 2), ("demo_qe", "demo QE", 3))


def _read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _lr(value: str) -> str:
    return f"{float(value):.0e}".replace("e-0", "e-")


def render_protocol(folder: Path) -> str:
    """The selected configuration of each method on test (mean [95% interval] over seeds, ▼/▲ where both tests
    say worse/better than the baseline) and a verdict, from compare.py's report.csv and significance.csv."""
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    baseline = report["protocol"]["baseline"]
    rows = [r for r in _read_csv(folder / "report.csv") if r["selected"] in ("True", "true", "1")]
    rows.sort(key=lambda r: r["method"] != baseline)  # the baseline first, then the report's order
    verdicts: dict[tuple[str, str], str] = {(s["method"], s["metric"]): s["verdict"]
                                            for s in _read_csv(folder / "significance.csv")}
    lines = ["| method (selected lr) | " + " | ".join(label for _, label, _ in _TABLE_METRICS)
             + f" | verdict vs {_NAMES.get(report['methods'][baseline]['loss'], baseline)} |",
             "|---|" + "---:|" * len(_TABLE_METRICS) + "---|"]
    for r in rows:
        method, loss = r["method"], r["loss"]
        name = _NAMES.get(loss, report["methods"][method]["name"])
        name += f" ({_lr(r['optim.lr'])})" + (", baseline" if method == baseline else "")
        cells, said = [], []
        for metric, _, digits in _TABLE_METRICS:
            mean, lo, hi = (float(r[f"test/{metric}_{k}"]) for k in ("mean", "lo", "hi"))
            verdict = verdicts.get((method, metric), "")
            mark = {"worse": " ▼", "better": " ▲"}.get(verdict, "")
            cells.append(f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]{mark}")
            said.append(verdict)
        if method == baseline:
            summary = ""
        elif len(set(said)) == 1:
            summary = {"no significant difference": "no significant difference on any metric"}.get(
                said[0], f"{said[0]} on every metric")
        else:
            summary = "; ".join(f"{v} on {label}" for v, (_, label, _) in zip(said, _TABLE_METRICS))
        lines.append(f"| {name} | " + " | ".join(cells) + (f" | {summary} |" if summary else " | |"))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ large vocabularies
LARGE_VOCAB = Path("docs/results/bench/large_vocab.txt")
_FULL = "cpo[chunk_tokens=null]"  # cpo.bench.runner.FULL_LOGITS: the same CPO on the full logits


def _bench_models(path: Path) -> list[dict]:
    """Every model result of the benchmark summaries (``scripts/bench.py``'s JSON last lines) in a results file."""
    runs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.startswith('{"mode": "train"')]
    return [m for run in runs for m in run["models"].values()]


def _against(value: float, target: dict | None) -> str:
    if target is None:
        return f"{value:.2f}x"
    return f"{value:.2f}x ({target['bound']}, {'met' if target['met'] else 'NOT met'})"


def render_large_vocab(path: Path) -> str:
    """Issue 17's table: the chunked log-probs against the full logits and TRL's CPOTrainer per vocabulary and batch,
    from ``scripts/bench.py --chunk-tokens null --against trl`` runs; then the runs without TRL (ALMA's vocabulary)."""
    lines = ["| vocabulary | tuning | batch | step MB: chunked / full / TRL | chunked vs TRL | "
             "pairs/s: chunked / full / TRL | chunked vs full | chunked vs TRL | "
             "first-batch loss: \\|chunked − TRL\\| / \\|chunked − full\\| |",
             "|---:|---|---:|---|---|---|---|---|---|"]
    notes = []
    for m in _bench_models(path):
        r, ratios = m["results"], m["ratios"]
        tuning = f"LoRA r{m['lora']['r']}" if m.get("lora") else "full"
        if "trl_cpo" not in r:  # chunked vs full only: each explicit chunk size against "cpo" (auto = full here)
            for name, x in r.items():
                if name.startswith("cpo[chunk_tokens=") and name != _FULL:
                    notes.append(f"At a vocabulary of {m['vocab']:,} ({tuning}, batch {m['batch_size']}), below "
                                 f"`auto`'s threshold: chunks of {int(name[17:-1]):,} tokens ran at "
                                 f"{x['pairs_per_s_median']:.2f} pairs/s "
                                 f"against {r['cpo']['pairs_per_s_median']:.2f} on the full logits, with "
                                 f"{x['step_rss_mb']:.0f} MB of step memory against {r['cpo']['step_rss_mb']:.0f}.")
            continue
        targets = {t["target"].split(" ")[0] + (" mem" if "memory" in t["target"] else " trl" if "TRL" in t["target"]
                                                else " full"): t for t in m.get("targets", [])}
        first = m.get("trl_first_batch_by_impl", {})
        loss = "-"
        if "cpo" in first and _FULL in first:
            full_diff = abs(first["cpo"]["ours_loss"] - first[_FULL]["ours_loss"])
            loss = f"{first['cpo']['loss_abs_diff']:.1e} / {full_diff:.1e}"
        mem = " / ".join(f"{r[n]['step_rss_mb']:,.0f}" for n in ("cpo", _FULL, "trl_cpo"))
        rate = " / ".join(f"{r[n]['pairs_per_s_median']:.2f}" for n in ("cpo", _FULL, "trl_cpo"))
        lines.append(f"| {m['vocab']:,} | {tuning} | {m['batch_size']} | {mem} | "
                     f"{_against(ratios['cpo_step_rss_over_trl'], targets.get('step mem'))} | {rate} | "
                     f"{_against(ratios['cpo_pairs_per_s_over_full_logits_median'], targets.get('pairs/s full'))} | "
                     f"{_against(ratios['cpo_pairs_per_s_over_trl_median'], targets.get('pairs/s trl'))} | {loss} |")
    return "\n".join(lines + ([""] + _wrap(" ".join(notes)) if notes else [])) + "\n"


# ------------------------------------------------------------------------------------------------ blocks
@dataclass(frozen=True)
class Block:
    source: str                       # the result file(s) it is rendered from, relative to the repository
    render: Callable[[Path], str]     # repository root -> the block's Markdown


BLOCKS: dict[str, Block] = {
    "demo": Block(str(DEMO_RECORD), lambda root: render_demo(json.loads((root / DEMO_RECORD).read_text("utf-8")))),
    "loss_ablation": Block("docs/results/loss_ablation/",
                           lambda root: render_protocol(root / "docs/results/loss_ablation")),
    "large_vocab": Block(str(LARGE_VOCAB), lambda root: render_large_vocab(root / LARGE_VOCAB)),
}


def blocks_in(text: str) -> dict[str, str]:
    """The measured blocks of a README text: name -> body."""
    return {m.group("name"): m.group("body") for m in _MARK.finditer(text)}


def check(root: Path = REPO, readme: Path | None = None) -> list[str]:
    """One line per measured block of the README that is missing, unknown or differs from its result file."""
    text = (readme or root / "README.md").read_text(encoding="utf-8")
    found = blocks_in(text)
    problems = [f"README has no measured block {name!r} (markers '<!-- measured: {name} (...) -->')"
                for name in BLOCKS if name not in found]
    problems += [f"README block {name!r} has no renderer in cpo.report.readme.BLOCKS" for name in found
                 if name not in BLOCKS]
    for name, body in found.items():
        if name in BLOCKS:
            want = BLOCKS[name].render(root)
            if body != want:
                problems.append(f"README block {name!r} differs from {BLOCKS[name].source}:\n"
                                + _diff(body, want))
    return problems


def _diff(old: str, new: str) -> str:
    import difflib

    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "README.md", "rendered", n=0))


def write(root: Path = REPO, readme: Path | None = None) -> list[str]:
    """Rewrite every measured block of the README from its result files; returns the names of those changed."""
    from cpo.io import atomic_write_text

    path = readme or root / "README.md"
    text = path.read_text(encoding="utf-8")
    changed: list[str] = []

    def replace(m: re.Match) -> str:
        name = m.group("name")
        if name not in BLOCKS:
            return m.group(0)
        body = BLOCKS[name].render(root)
        if body != m.group("body"):
            changed.append(name)
        return f"<!-- measured: {name} ({m.group('source')}) -->\n{body}<!-- end measured: {name} -->"

    new = _MARK.sub(replace, text)
    if new != text:
        atomic_write_text(path, new)
    return changed
