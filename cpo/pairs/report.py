"""The report of a preference build (``scripts/build_preferences.py``): JSON object and Markdown text.

Per direction: the pairs kept and dropped (and why), how often each system is chosen and rejected,
its empty hypotheses, each system's mean score and its win ratio against the reference (the paper's
Table 1, ``win_counts``), and the run time; over all directions: the totals, the
win ratios pooled over xx->en, en->xx and all directions, and the scorer cache's hits and misses.
The app writes the object as ``<output stem>.report.json`` and ``markdown_report`` of it as
``<output stem>.report.md``.
"""
from __future__ import annotations

import time
from pathlib import Path

from cpo.mt.parallel import ParallelData
from cpo.pairs.noise import NoiseSettings
from cpo.pairs.rule import KIND_REFERENCE, KIND_SAMPLE, KIND_SYSTEM, REF, BuildCounts
from cpo.scoring import CachedScorer, MeanScorer, Scorer

KINDS = (KIND_REFERENCE, KIND_SYSTEM, KIND_SAMPLE)
XX_EN, EN_XX = "xx->en", "en->xx"


# --------------------------------------------------------------------------- JSON
def win_counts(system_scores: list[float | None], ref_scores: list[float | None]) -> dict:
    """How often a system's score beats the reference's on the same source (paper Table 1).

    Sources where either side has no score are left out (an empty output is scored like any text); ties are counted
    on their own, never as wins.
    """
    wins = ties = losses = 0
    for s, r in zip(system_scores, ref_scores):
        if s is None or r is None:
            continue
        if s > r:
            wins += 1
        elif s == r:
            ties += 1
        else:
            losses += 1
    n = wins + ties + losses
    return {
        "n": n,
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "win_ratio": wins / n if n else None,
        "tie_ratio": ties / n if n else None,
    }


def _mean(values: list[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def direction_stats(
    *,
    direction: str,
    data: ParallelData,
    systems: dict[str, str],
    candidates: list[str],
    test_set: bool,
    counts: BuildCounts,
    scores: dict[str, list[float | None]],
    ref_scores: list[float | None] | None,
    ref_note: str | None,
    started: float,
    samples: dict[str, str] | None = None,
    sample_scores: dict[str, list[list[float]]] | None = None,
) -> dict:
    """One direction's part of the report; ``ref_note`` says why there are no ``ref_scores``.

    ``samples`` (name -> multi-candidate file) and ``sample_scores`` (per source, the scores of its candidates):
    a sample system's mean score is over all its candidates, and its win counts against the reference pit
    each candidate against its source's reference."""
    samples, sample_scores = samples or {}, sample_scores or {}
    stats = {
        "direction": direction,
        "input": str(data.path),
        "format": data.format,
        "reference": (
            str(data.ref_path) if data.ref_path
            else (f"in {data.path.name}" if data.references is not None else None)
        ),
        "systems": dict(systems),
        "samples": dict(samples),
        "candidates": list(candidates),
        "test_set": test_set,
        "n_sources": len(data),
        "pairs": counts.as_dict(),
        "mean_score": {n: _mean(v) for n, v in scores.items()}
        | {n: _mean([x for row in v for x in row]) for n, v in sample_scores.items()},
        "win_vs_ref": None,
        "run_time_s": round(time.time() - started, 3),
    }
    if ref_scores is not None:
        stats["mean_score"].setdefault(REF, _mean(ref_scores))
        stats["win_vs_ref"] = {n: win_counts(v, ref_scores) for n, v in scores.items() if n != REF}
        for n, per_source in sample_scores.items():
            flat = [(x, r) for row, r in zip(per_source, ref_scores) for x in row]
            stats["win_vs_ref"][n] = win_counts([x for x, _ in flat], [r for _, r in flat])
    else:
        stats["win_vs_ref_note"] = ref_note
    return stats


def _group(direction: str) -> list[str]:
    src, tgt = direction.split("-")
    return ([XX_EN] if tgt == "en" else []) + ([EN_XX] if src == "en" else [])


def aggregate_wins(per_direction: list[dict]) -> dict[str, dict[str, dict]]:
    """Win counts summed over xx->en, en->xx and all directions (sources pooled, as in Table 1)."""
    out: dict[str, dict[str, dict]] = {}
    for st in per_direction:
        if not st.get("win_vs_ref"):
            continue
        for group in _group(st["direction"]) + ["all"]:
            for system, w in st["win_vs_ref"].items():
                acc = out.setdefault(group, {}).setdefault(system, {"n": 0, "wins": 0, "ties": 0, "losses": 0})
                for k in ("n", "wins", "ties", "losses"):
                    acc[k] += w[k]
    for systems in out.values():
        for acc in systems.values():
            acc["win_ratio"] = acc["wins"] / acc["n"] if acc["n"] else None
            acc["tie_ratio"] = acc["ties"] / acc["n"] if acc["n"] else None
    return out


def _cached_parts(scorer: Scorer) -> list[CachedScorer]:
    if isinstance(scorer, CachedScorer):
        return [scorer]
    if isinstance(scorer, MeanScorer):
        return [s for m in scorer.scorers for s in _cached_parts(m)]
    return []


def build_report(
    *,
    output: Path,
    scorer: Scorer,
    include_ref: bool,
    candidate_order: list[str],
    negatives: str,
    noise: NoiseSettings,
    cache_dir: Path | None,
    totals: BuildCounts,
    n_sources: int,
    per_direction: list[dict],
    test_sets: list[str],
    test_set_warning: str | None,
    started: float,
    pairs_per_source: int = 1,
    min_score_gap: float = 0.0,
) -> dict:
    """The whole build's report object (``direction_stats`` of each direction in ``per_direction``)."""
    parts = _cached_parts(scorer)
    return {
        "output": str(output),
        "scorer": {"name": scorer.name, "identity": scorer.identity, "uses_reference": scorer.uses_reference},
        "include_ref": include_ref,
        "candidate_order": candidate_order,
        "negatives": negatives,
        "pairs_per_source": pairs_per_source,
        "min_score_gap": min_score_gap,
        "noise": {"drop_prob": noise.drop_prob, "swap_prob": noise.swap_prob, "seed": noise.seed},
        "scorer_cache": {
            "dir": str(cache_dir) if cache_dir else None,
            "hits": sum(p.hits for p in parts),
            "misses": sum(p.misses for p in parts),
        },
        "totals": totals.as_dict(),
        "n_sources": n_sources,
        "directions": per_direction,
        "win_vs_ref_by_group": aggregate_wins(per_direction),
        "test_sets": test_sets,
        "test_set_warning": test_set_warning,
        "run_time_s": round(time.time() - started, 3),
    }


# --------------------------------------------------------------------------- Markdown
def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _ratio_cells(wins: dict[str, dict], systems: list[str]) -> str:
    """Win and tie ratio cells of one row, two empty cells for a system without them."""
    return " | ".join(
        f"{_pct(wins[s]['win_ratio'])} | {_pct(wins[s]['tie_ratio'])}" if s in wins else " | " for s in systems
    )


def markdown_report(report: dict) -> str:
    dirs = report["directions"]
    reasons = sorted({r for st in dirs for r in st["pairs"]["dropped"]})
    systems: list[str] = []
    for st in dirs:
        for name in st["candidates"] + sorted(st["pairs"]["rejected_by_system"]):
            if name not in systems:
                systems.append(name)
    total_row = {"direction": "**total**", "n_sources": report["n_sources"], "pairs": report["totals"]}
    noise = (
        " (" + ", ".join(f"{k} {v}" for k, v in report["noise"].items()) + ")"
        if report["negatives"] == "noised" else ""
    )
    cache = report["scorer_cache"]
    lines = [
        "# Preference build report",
        "",
        f"- output: `{report['output']}` ({report['totals']['kept']} pairs)",
        f"- scorer: `{report['scorer']['name']}` ({report['scorer']['identity']})",
        f"- candidates in tie order: {', '.join(report['candidate_order'])}"
        f" (include_ref={str(report['include_ref']).lower()})",
        f"- negatives: {report['negatives']}" + noise,
        f"- pairs per source: {report.get('pairs_per_source', 1)} (best vs the "
        + ("worst" if report.get("pairs_per_source", 1) == 1 else f"{report['pairs_per_source']} worst")
        + f"); minimum score gap: {report.get('min_score_gap', 0.0):g}",
        f"- scorer cache: `{cache['dir']}` ({cache['hits']} hits, {cache['misses']} scored)"
        if cache["dir"] else "- scorer cache: none",
        f"- run time: {report['run_time_s']:.2f} s",
        *([f"- **warning**: {report['test_set_warning']}"] if report.get("test_set_warning") else []),
        "",
        "## Pairs kept and dropped",
        "",
        "| " + " | ".join(["direction", "sources", "kept", "dropped", *reasons, "missing candidates"]) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(reasons) + "---:|",
    ]
    for st in dirs + [total_row]:
        p = st["pairs"]
        cells = [st["direction"], st["n_sources"], p["kept"], p["dropped_total"],
                 *(p["dropped"].get(r, 0) for r in reasons), sum(p["missing_by_system"].values())]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    totals = report["totals"]
    if totals.get("sources"):
        per = totals["candidates_per_source"]
        lines += [
            "",
            "## Candidates per source and where the pairs come from",
            "",
            f"- sources: {totals['sources']}, with at least one pair: {totals['sources_with_pairs']}",
            f"- candidates per source (duplicates included): min {per['min']}, mean {per['mean']:g}, max {per['max']}",
            "- duplicates (a sample repeating an earlier candidate's text; left out of the rule): "
            + (", ".join(f"{k} {v}" for k, v in totals["duplicates_by_system"].items()) or "none"),
            "",
            "| side | " + " | ".join(KINDS) + " |",
            "|---|" + "---:|" * len(KINDS),
        ]
        kept = totals["kept"] or 1
        for side in ("chosen", "rejected"):
            by = totals[f"{side}_by_kind"]
            lines.append(f"| {side} | " + " | ".join(f"{by.get(k, 0)} ({_pct(by.get(k, 0) / kept)})" for k in KINDS)
                         + " |")
    lines += [
        "",
        "## Chosen / rejected by system",
        "",
        "Share of the kept pairs in which each system is the chosen (rejected) side.",
        "",
        "| direction | " + " | ".join(systems) + " |",
        "|---|" + "---:|" * len(systems),
    ]
    for st in dirs + [total_row]:
        p = st["pairs"]
        kept = p["kept"] or 1
        chosen, rejected = p["chosen_by_system"], p["rejected_by_system"]
        cells = [f"{chosen.get(s, 0)} / {rejected.get(s, 0)} "
                 f"({_pct(chosen.get(s, 0) / kept)} / {_pct(rejected.get(s, 0) / kept)})"
                 for s in systems]
        lines.append(f"| {st['direction']} | " + " | ".join(cells) + " |")
    win_systems = [s for s in systems if s != REF and any((st.get("win_vs_ref") or {}).get(s) for st in dirs)]
    lines += ["", "## Win ratio against the reference", ""]
    if win_systems:
        lines += [
            "Share of sources where the system's score is above the reference's (ties separately), "
            "as in the paper's Table 1.",
            "",
            "| direction | " + " | ".join(f"{s} wins | {s} ties" for s in win_systems) + " |",
            "|---|" + "---:|---:|" * len(win_systems),
        ]
        for st in dirs:
            lines.append(f"| {st['direction']} | " + _ratio_cells(st.get("win_vs_ref") or {}, win_systems) + " |")
        for group, w in report["win_vs_ref_by_group"].items():
            lines.append(f"| **{group}** | " + _ratio_cells(w, win_systems) + " |")
    else:
        notes = sorted({st.get("win_vs_ref_note") or "" for st in dirs} - {""})
        lines.append(f"Not available: {'; '.join(notes) or 'no reference scores'}.")
    for st in dirs:
        p = st["pairs"]
        lines += [
            "",
            f"## {st['direction']}",
            "",
            f"- input: `{st['input']}` ({st['format']}, {st['n_sources']} sources); "
            f"reference: {st['reference'] or 'none'}",
        ]
        for name, path in st["systems"].items():
            lines.append(f"- system `{name}`: `{path}`")
        for name, path in (st.get("samples") or {}).items():
            lines.append(f"- multi-candidate system `{name}`: `{path}`")
        lines += [
            f"- pairs kept: {p['kept']}; dropped: {p['dropped_total']}"
            + (f" ({', '.join(f'{k} {v}' for k, v in p['dropped'].items())})" if p["dropped"] else ""),
            "- chosen: " + (", ".join(f"{k} {v}" for k, v in p["chosen_by_system"].items()) or "none"),
            "- rejected: " + (", ".join(f"{k} {v}" for k, v in p["rejected_by_system"].items()) or "none"),
            "- mean score: " + ", ".join(f"{k} {_num(v)}" for k, v in st["mean_score"].items()),
        ]
        if p.get("empty_by_system"):
            lines.append("- empty hypotheses (scored as empty; a pair with an empty side is dropped): "
                         + ", ".join(f"{k} {v}" for k, v in p["empty_by_system"].items()))
        if p.get("candidates_per_source"):
            per = p["candidates_per_source"]
            lines.append(f"- candidates per source: min {per['min']}, mean {per['mean']:g}, max {per['max']}; "
                         f"sources with a pair: {p['sources_with_pairs']} of {p['sources']}")
        if p.get("duplicates_by_system"):
            dup = p["duplicates_by_system"]
            lines.append("- duplicates left out: " + ", ".join(f"{k} {v}" for k, v in dup.items()))
        if p["missing_by_system"]:
            lines.append("- candidates without a text or score, left out: "
                         + ", ".join(f"{k} {v}" for k, v in p["missing_by_system"].items()))
        if st.get("win_vs_ref"):
            lines.append("- against the reference (wins / ties / losses): " + ", ".join(
                f"{k} {w['wins']}/{w['ties']}/{w['losses']}" for k, w in st["win_vs_ref"].items()))
        else:
            lines.append(f"- win ratio against the reference: not available ({st.get('win_vs_ref_note')})")
        lines.append(f"- time: {st['run_time_s']:.2f} s")
    return "\n".join(lines) + "\n"
