"""The pairs stage: score the round's candidates (samples, the reference, offline systems) and pick pairs by the rule
over all of them (``cpo.pairs``), into ``round-k/pairs/{train,val}.jsonl`` with a build report."""
from __future__ import annotations

import time
from pathlib import Path

from cpo.console import say
from cpo.io import DataError, atomic_write_json, atomic_write_jsonl, atomic_write_text
from cpo.mt.candidates import check_aligned, read_candidates
from cpo.mt.parallel import ParallelData
from cpo.pairs.build import build_pairs
from cpo.pairs.report import build_report, direction_stats, markdown_report
from cpo.pairs.noise import NoiseSettings
from cpo.pairs.rule import REF, BuildCounts
from cpo.pairs.scoring import score_candidate_lists, score_texts
from cpo.rounds.candidates import candidate_file
from cpo.rounds.sources import SourceRow, by_direction
from cpo.rounds.stages import StageFolder

POLICY = "policy"  # the name of the policy's samples among the candidates


def _build_split(split: str, rows: list[SourceRow], systems: dict[str, list[str]], candidate_files: dict[str, Path],
                 scorer, rule: dict, t0: float) -> tuple[list[dict], list[dict], BuildCounts]:
    out_rows, per_direction, totals = [], [], BuildCounts()
    for direction, group in by_direction(rows).items():
        src, tgt = direction.split("-")
        refs = [r.reference for r in group]
        have_refs = all(x is not None for x in refs)
        if rule["include_ref"] and not have_refs:
            raise DataError(f"{split} sources of {direction} lack references, so the reference cannot be a candidate "
                            "(pool.include_ref=false, or give references)")
        data = ParallelData([r.source for r in group], refs if have_refs else None, src, tgt,
                            Path(f"{split}.{direction}"), "jsonl")
        candidates = {REF: refs} if rule["include_ref"] else {}
        candidates.update({name: [texts[r.index] for r in group] for name, texts in systems.items()})
        scores = {name: score_texts(scorer, data, texts)[scorer.name] for name, texts in candidates.items()}
        samples, sample_scores = {}, {}
        if rule["samples"]:
            path = candidate_files[direction]
            cs = read_candidates(path)
            check_aligned(cs, data.sources, src, tgt, "the candidates")
            samples[POLICY] = cs.candidates
            sample_scores[POLICY] = score_candidate_lists(
                scorer, data, cs.candidates, lambda row, k: f"{path}:{row + 1} (candidate {k})")[scorer.name]
        built, counts = build_pairs(
            data.sources, candidates, scores, src, tgt, scorer.name, references=data.references,
            scorer_identity=scorer.identity, samples=samples, sample_scores=sample_scores,
            pairs_per_source=rule["pairs_per_source"], min_gap=rule["min_score_gap"])
        ref_scores = scores.get(REF)
        per_direction.append(direction_stats(
            direction=direction, data=data, systems={n: "offline" for n in systems}, candidates=list(candidates)
            + list(samples), test_set=False, counts=counts, scores=scores, ref_scores=ref_scores,
            ref_note=None if ref_scores else "the reference is not a candidate", started=t0,
            samples={POLICY: "candidates stage"} if samples else None, sample_scores=sample_scores))
        out_rows += built
        totals.merge(counts)
    return out_rows, per_direction, totals


def run_pairs(stage: StageFolder, settings: dict, splits: dict[str, list[SourceRow]],
              systems: dict[str, dict[str, list[str]]], candidate_dir: Path | None, scorer, cache_dir: Path,
              rule: dict, tracker=None) -> dict:
    """Build (or reuse) the round's pairs. ``systems``: split -> offline system -> texts aligned with that split's
    input rows; ``rule``: samples, include_ref, pairs_per_source, min_score_gap."""
    t0 = time.time()
    record = stage.reuse_or_start(settings)
    if record is not None:
        return record
    outputs: dict = {}
    for split, rows in splits.items():
        files = {d: candidate_file(candidate_dir, split, d) for d in by_direction(rows)} if rule["samples"] else {}
        built, per_direction, totals = _build_split(split, rows, systems.get(split, {}), files, scorer, rule, t0)
        if not built:
            raise DataError(f"{stage.name}: no {split} pair was kept of {len(rows)} sources (dropped: "
                            + ", ".join(f"{k} {v}" for k, v in totals.dropped.items()) + "); the candidates are too "
                            "alike to rank (more samples, a higher temperature, or the reference as a candidate)")
        output = stage.path / f"{split}.jsonl"
        order = ([REF] if rule["include_ref"] else []) + list(systems.get(split, {})) + ([POLICY] if rule["samples"]
                                                                                          else [])
        report = build_report(
            output=output, scorer=scorer, include_ref=rule["include_ref"], candidate_order=order, negatives="real",
            noise=NoiseSettings(), cache_dir=cache_dir, totals=totals, n_sources=len(rows),
            per_direction=per_direction, test_sets=[], test_set_warning=None, started=t0,
            pairs_per_source=rule["pairs_per_source"], min_score_gap=rule["min_score_gap"])
        atomic_write_jsonl(output, built)
        atomic_write_json(stage.path / f"{split}.report.json", report)
        atomic_write_text(stage.path / f"{split}.report.md", markdown_report(report))
        t = report["totals"]
        outputs[split] = {"file": output.name, "pairs": t["kept"], "sources": t.get("sources"),
                          "sources_with_pairs": t.get("sources_with_pairs"), "dropped": t["dropped"],
                          "duplicates": t.get("duplicates_by_system", {}), "chosen_by_kind": t.get("chosen_by_kind"),
                          "mean_score": {k: v for st in per_direction for k, v in st["mean_score"].items()}}
        say(f"{stage.name}: {split}: {t['kept']} pairs from {len(rows)} sources (dropped {t['dropped_total']}"
            f"{' ' + str(t['dropped']) if t['dropped'] else ''})")
    record = stage.finish(settings, outputs, time.time() - t0)
    if tracker is not None:
        tracker.log_stage(stage, settings, {f"{s}/pairs": o["pairs"] for s, o in outputs.items()})
    return record
