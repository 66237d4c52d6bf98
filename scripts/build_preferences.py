"""Build preference triples from scored candidate translations (Hydra app; conf/build_preferences.yaml).

For each source, every candidate (the reference as ``ref`` when ``include_ref``, then each named
system's output, then every candidate of each multi-candidate file given as ``samples``) is scored by
the configured scorer; ``cpo.pairs.build.build_pairs`` picks the best as chosen and the worst as
rejected (SPEC sections 2 and 9; ``pairs_per_source=k``: the best against each of the k worst;
``min_score_gap``: no pair below that gap), or, with ``negatives=noised``, a noised copy of the chosen
translation as rejected (SPEC section 7). Scores are cached on disk (``scorer_cache_dir``), so a
re-run or a resumed run only scores what is new.

Outputs: the preference JSONL (the format ``cpo.data.read_preference_jsonl`` reads: sources are
validated by ``cpo.mt.parallel``, a pair with an empty side is dropped) and a report
``<output stem>.report.md`` / ``.report.json`` (``cpo.pairs.report``): per direction, the
pairs kept and dropped (and why), how often each system is chosen and rejected, its empty
hypotheses, each system's mean score and its win ratio against the reference (the paper's
Table 1), and the run time.

Empty hypotheses are legitimate system output (real WMT'23 submissions have them): they are scored
like any other text and counted per system. A NaN or infinite score stops the build with the file
and line it belongs to (and the score cache it may have come from). Building from evaluation test
sets (wmt22 mode, or a file that looks like one) is warned about: ALMA-R built its preference data
from FLORES-200, never from the sets it was evaluated on.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from cpo.console import say
from cpo.cli import UsageError, one_sentence_errors, run_app
from cpo.mt.evaluation import WMT22_DIRECTIONS, wmt22_directions
from cpo.io import DataError, check_outputs_with_report, report_paths, write_jsonl_with_report
from cpo.languages import language_pair
from cpo.mt.candidates import CandidateSet, check_aligned, read_candidates
from cpo.mt.parallel import FORMATS, ParallelData, read_parallel, read_system_outputs
from cpo.pairs.report import REF, build_report, direction_stats, markdown_report
from cpo.pairs.build import build_pairs
from cpo.pairs.noise import NoiseSettings
from cpo.pairs.rule import NEGATIVES, BuildCounts
from cpo.pairs.scoring import score_candidate_lists, score_texts
from cpo.scoring import Scorer, ScorerConfigError, build_scorer

log = logging.getLogger("build_preferences")


# --------------------------------------------------------------------------- inputs
@dataclass
class Job:
    """One direction's parallel data and candidate system files (name -> path, in tie order)."""

    direction: str
    data: ParallelData
    systems: dict[str, str] = field(default_factory=dict)
    test_set: bool = False  # the sources are an evaluation test set (wmt22 mode, or a file named like one)
    outputs: dict[str, list[str]] = field(default_factory=dict)  # each system's lines, read before any scoring
    samples: dict[str, str] = field(default_factory=dict)  # name -> multi-candidate file (after the systems)
    sample_outputs: dict[str, CandidateSet] = field(default_factory=dict)


def _abs(value: Any, what: str) -> str:
    if value in (None, ""):
        raise UsageError(f"{what} is not set (see conf/build_preferences.yaml)")
    return to_absolute_path(str(value))


_TEST_FILE = re.compile(r"^test\.[a-z]{2,3}-[a-z]{2,3}\.")


def looks_like_test_set(path: str | Path | None) -> bool:
    """A WMT/ALMA evaluation test file: under a ``wmt-testset`` folder, or named ``test.<s>-<t>.*``.

    ALMA's ``human_written_data/<pair>/test.<s>-<t>.json`` (``../shared/data/alma_human_written``)
    are the WMT'22 test sets, and ``wmt22/wmt-testset`` holds them as text.
    """
    if path is None:
        return False
    p = Path(path)
    return "wmt-testset" in p.parts or bool(_TEST_FILE.match(p.name))


TEST_SET_WARNING = (
    "preference data built from evaluation test sets ({files}): a model trained on these pairs and then "
    "evaluated on the same sets gets inflated scores; ALMA-R built its preference data from FLORES-200 "
    "(the train files of ../shared/data/alma_human_written), never from the test sets "
    "(pass allow_test_sets=true to silence this)"
)


def _system_files(spec: Any, where: str) -> dict[str, str]:
    """``{name: path}`` in the given order; names are checked (``ref`` is reserved)."""
    if spec is None:
        return {}
    if not isinstance(spec, (Mapping, DictConfig)):
        example = "{policy: round1.jsonl}" if where.endswith("samples") else "{gpt4: gpt4.en, alma: alma.en}"
        raise UsageError(f"{where} must be a mapping name -> output file, e.g. {example}; got {spec!r}")
    out: dict[str, str] = {}
    for name, path in spec.items():
        name = str(name)
        if name == REF:
            raise UsageError(f"{where}: the system name {REF!r} is reserved for the reference "
                             "(include_ref=true adds it)")
        if not name.strip() or name.startswith("noised(") or "#" in name:
            raise UsageError(f"{where}: invalid system name {name!r}")
        out[name] = _abs(path, f"{where}.{name}")
    return out


def _job(direction: str, data: ParallelData, systems: Any, samples: Any, test: bool, prefix: str) -> Job:
    singles = _system_files(systems, f"{prefix}systems")
    multi = _system_files(samples, f"{prefix}samples")
    both = sorted(set(singles) & set(multi))
    if both:
        raise UsageError(f"{prefix}samples: {both[0]!r} also names a system; give each system one name")
    return Job(direction, data, singles, test, samples=multi)


def collect_jobs(cfg: DictConfig, references: str) -> list[Job]:
    """The jobs of whichever single input mode the config uses (see conf/build_preferences.yaml)."""
    modes = {
        "input": cfg.get("input") not in (None, ""),
        "directions": bool(cfg.get("directions")),
        "wmt22": bool(cfg.get("wmt22") and (cfg.wmt22.get("root") or cfg.wmt22.get("systems"))),
    }
    chosen = [m for m, on in modes.items() if on]
    if len(chosen) != 1:
        raise UsageError(
            "give exactly one input mode: input= (+ systems, ref/src_lang/tgt_lang as needed), "
            f"directions, or wmt22.root + wmt22.systems; got {chosen or 'none'} (see conf/build_preferences.yaml)"
        )
    mode = chosen[0]
    if mode == "input":
        if cfg.get("format") not in FORMATS:
            raise UsageError(f"format must be one of {', '.join(FORMATS)}, got {cfg.get('format')!r}")
        data = read_parallel(
            _abs(cfg.input, "input"), cfg.format, cfg.get("src_lang"), cfg.get("tgt_lang"),
            ref=_abs(cfg.ref, "ref") if cfg.get("ref") else None, references=references, key="input",
        )
        test = looks_like_test_set(data.path) or looks_like_test_set(data.ref_path)
        return [_job(data.direction, data, cfg.get("systems"), cfg.get("samples"), test, "")]
    for key in ("systems", "samples"):
        if cfg.get(key):
            raise UsageError(f"{key}= belongs to the one-direction mode; in {mode} mode give the {key} per direction")
    if mode == "directions":
        jobs = []
        for direction, spec in cfg.directions.items():
            direction = str(direction)
            where = f"directions.{direction}"
            src, tgt = language_pair(direction, where)
            if not isinstance(spec, DictConfig):
                raise UsageError(f"{where}: expected {{input, format, ref, systems}}, got {spec!r}")
            unknown = set(spec) - {"input", "format", "ref", "systems", "samples"}
            if unknown:
                raise UsageError(f"{where}: unknown key(s) {sorted(unknown)} (known: input, format, ref, systems, "
                                 "samples)")
            data = read_parallel(
                _abs(spec.get("input"), f"{where}.input"), spec.get("format") or "auto", src, tgt,
                ref=_abs(spec.ref, f"{where}.ref") if spec.get("ref") else None, references=references,
                key=f"{where}.input",
            )
            test = looks_like_test_set(data.path) or looks_like_test_set(data.ref_path)
            jobs.append(_job(direction, data, spec.get("systems"), spec.get("samples"), test, f"{where}."))
        return jobs
    # wmt22
    w = cfg.wmt22
    root = _abs(w.get("root"), "wmt22.root")
    systems = [str(s) for s in (w.get("systems") or [])]
    if len(set(systems)) != len(systems):
        raise UsageError(f"wmt22.systems lists a system twice: {systems}")
    directions = [str(d) for d in (w.get("directions") or WMT22_DIRECTIONS)]
    if len(set(directions)) != len(directions):
        raise UsageError(f"wmt22.directions lists a direction twice: {directions}")
    for d in directions:
        language_pair(d, "wmt22.directions")
    if not systems:
        wmt22_directions(root, "wmt-testset", directions)  # checks the layout and the test set files
    paths = {s: wmt22_directions(root, s, directions) for s in systems}  # names an unknown system
    jobs = []
    for d in directions:
        src, tgt = d.split("-")
        base = wmt22_directions(root, systems[0] if systems else "wmt-testset", [d])[d]
        data = read_parallel(base["src"], "text", src, tgt, ref=base["ref"], references=references)
        jobs.append(Job(d, data, {s: paths[s][d]["hyp"] for s in systems}, test_set=True))
    return jobs


# --------------------------------------------------------------------------- scoring
def _text_location(job: Job, name: str, i: int) -> str:
    """``file:line`` of candidate ``name``'s text for source ``i``."""
    if name != REF:
        return f"{job.systems[name]}:{i + 1} (system {name!r})"
    if job.data.ref_path:
        return f"{job.data.ref_path}:{i + 1} (the reference)"
    return f"{_line_of(job.data, i)} (the reference)"


def _line_of(data: ParallelData, i: int) -> str:
    """Where source ``i`` is, for messages: ``file:line`` of a text input, else ``file (record n)``."""
    return f"{data.path}:{i + 1}" if data.format == "text" else f"{data.path} (record {i + 1})"


def score_samples(scorer: Scorer, job: Job, name: str) -> dict[str, list[list[float]]]:
    """Score components of every candidate of a multi-candidate file, per source (one scorer call, cached)."""
    path = job.samples[name]
    return score_candidate_lists(scorer, job.data, job.sample_outputs[name].candidates,
                                 lambda row, k: f"{path}:{row + 1} (system {name!r}, candidate {k})")


def run_job(job: Job, scorer: Scorer, cfg: DictConfig, noise: NoiseSettings) -> tuple[list[dict], dict, BuildCounts]:
    t0 = time.time()
    data = job.data
    candidates: dict[str, list[str]] = {}
    if cfg.include_ref:
        candidates[REF] = list(data.references)
    candidates.update(job.outputs)
    scores: dict[str, list[float | None]] = {}
    components: dict[str, dict[str, list[float | None]]] = {}
    for name, texts in candidates.items():
        comps = score_texts(scorer, data, texts, lambda i, name=name: _text_location(job, name, i))
        scores[name] = comps[scorer.name]
        if len(comps) > 1:
            components[name] = comps
    sample_scores: dict[str, list[list[float]]] = {}
    sample_components: dict[str, dict[str, list[list[float]]]] = {}
    for name in job.samples:
        comps = score_samples(scorer, job, name)
        sample_scores[name] = comps[scorer.name]
        if len(comps) > 1:
            sample_components[name] = comps
    ref_scores = scores.get(REF)
    note = None
    if ref_scores is None:
        if data.references is None:
            note = "no references in the input"
        elif scorer.uses_reference:
            note = f"scorer {scorer.name} uses the reference, so the reference cannot be scored against itself"
        elif cfg.score_ref_for_report:
            ref_scores = score_texts(scorer, data, data.references, lambda i: _text_location(job, REF, i))[scorer.name]
        else:
            note = "score_ref_for_report=false"
    rows, counts = build_pairs(
        data.sources, candidates, scores, data.src_lang, data.tgt_lang, scorer.name,
        references=data.references, scorer_identity=scorer.identity, components=components or None,
        negatives=cfg.negatives, noise=noise,
        samples={n: job.sample_outputs[n].candidates for n in job.samples}, sample_scores=sample_scores,
        sample_components=sample_components or None, pairs_per_source=int(cfg.get("pairs_per_source", 1)),
        min_gap=float(cfg.get("min_score_gap", 0.0)),
    )
    stats = direction_stats(
        direction=job.direction, data=data, systems=job.systems, candidates=list(candidates) + list(job.samples),
        test_set=job.test_set, counts=counts, scores=scores, ref_scores=ref_scores, ref_note=note, started=t0,
        samples=job.samples, sample_scores=sample_scores,
    )
    return rows, stats, counts


# --------------------------------------------------------------------------- app
def make_scorer(cfg: DictConfig, output: Path) -> tuple[Scorer, Path | None]:
    cache = cfg.get("scorer_cache_dir")
    if cache is None:
        cache_dir: Path | None = output.parent / "scorer_cache"
    elif str(cache).lower() in ("none", "false", "off", ""):
        cache_dir = None
    else:
        cache_dir = Path(to_absolute_path(str(cache)))
    scorer_cfg = cfg.get("scorer")
    if scorer_cfg is None:
        raise UsageError("scorer is not set: choose a preset of conf/scorer, e.g. scorer=kiwi_xcomet")
    try:
        scorer = build_scorer(OmegaConf.to_container(scorer_cfg, resolve=True), cache_dir=cache_dir,
                              progress=bool(cfg.progress))
    except ScorerConfigError as e:
        raise UsageError(str(e)) from None
    return scorer, cache_dir


def build(cfg: DictConfig) -> dict:
    """The whole build; returns the report object (also written next to the output)."""
    t0 = time.time()
    output = Path(_abs(cfg.output, "output"))
    check_outputs_with_report(output, bool(cfg.overwrite))
    if cfg.negatives not in NEGATIVES:
        raise UsageError(f"negatives must be one of {', '.join(NEGATIVES)}, got {cfg.negatives!r}")
    k, gap = cfg.get("pairs_per_source", 1), cfg.get("min_score_gap", 0.0)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UsageError(f"pairs_per_source={k} must be a positive integer (1: the paper's best vs worst)")
    if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not gap >= 0:
        raise UsageError(f"min_score_gap={gap} must be a number >= 0 (in the scorer's units)")
    if k > 1 and cfg.negatives == "noised":
        raise UsageError("pairs_per_source > 1 pairs the best with several real candidates; negatives=noised has "
                         "one noised copy per source: use one of them")
    try:
        noise = NoiseSettings(float(cfg.noise.drop_prob), float(cfg.noise.swap_prob), int(cfg.noise.seed))
    except ValueError as e:
        raise UsageError(str(e)) from None
    scorer, cache_dir = make_scorer(cfg, output)
    include_ref = bool(cfg.include_ref)
    if include_ref and scorer.uses_reference:
        raise UsageError(
            f"scorer {scorer.name!r} ({scorer.identity}) is reference-based: with include_ref=true the reference "
            "would be scored against itself and always win. Use a reference-free scorer (e.g. scorer=kiwi_xcomet, "
            "kiwi, demo_qe) or include_ref=false to rank the systems against the reference."
        )
    need_refs = "required" if include_ref or scorer.requires_reference else "optional"
    jobs = collect_jobs(cfg, need_refs)
    for job in jobs:  # every input is read and checked before the first (possibly hours-long) scoring
        job.outputs = read_system_outputs(job.data, job.systems)
        for name, path in job.samples.items():
            cs = read_candidates(path, f"samples.{name}")
            check_aligned(cs, job.data.sources, job.data.src_lang, job.data.tgt_lang, f"samples.{name}")
            job.sample_outputs[name] = cs
    order = ([REF] if include_ref else [])
    for job in jobs:
        n_candidates = int(include_ref) + len(job.systems) + sum(
            max(len(c) for c in cs.candidates) for cs in job.sample_outputs.values())
        if n_candidates == 0 or (cfg.negatives == "real" and n_candidates < 2):
            raise UsageError(
                f"direction {job.direction}: {n_candidates} candidate(s) "
                f"({', '.join(([REF] if include_ref else []) + list(job.systems) + list(job.samples)) or 'none'}); "
                "real negatives need at least two (add systems or samples, or include_ref=true)"
            )
        for name in [*job.systems, *job.samples]:
            if name not in order:
                order.append(name)
    test_sets = [str(j.data.path) for j in jobs if j.test_set]
    test_set_warning = None
    if test_sets and not bool(cfg.get("allow_test_sets", False)):
        shown = ", ".join(test_sets[:2]) + (f" and {len(test_sets) - 2} more" if len(test_sets) > 2 else "")
        test_set_warning = TEST_SET_WARNING.format(files=shown)
        log.warning(test_set_warning)
    all_rows: list[dict] = []
    per_direction: list[dict] = []
    totals = BuildCounts()
    for job in jobs:
        log.info("%s: %d sources, candidates %s", job.direction, len(job.data),
                 ([REF] if include_ref else []) + list(job.systems)
                 + [f"{n} ({cs.n_candidates} candidates)" for n, cs in job.sample_outputs.items()])
        rows, stats, counts = run_job(job, scorer, cfg, noise)
        all_rows += rows
        per_direction.append(stats)
        totals.merge(counts)
    if not all_rows:  # an empty preference file would only fail later, in training
        raise DataError("no preference pair was kept (dropped: "
                        + ", ".join(f"{k} {v}" for k, v in totals.dropped.items()) + "); nothing was written. "
                        "Check the system outputs and the scorer")
    report = build_report(
        output=output, scorer=scorer, include_ref=include_ref, candidate_order=order, negatives=cfg.negatives,
        noise=noise, cache_dir=cache_dir, totals=totals, n_sources=sum(len(j.data) for j in jobs),
        per_direction=per_direction, test_sets=test_sets, test_set_warning=test_set_warning, started=t0,
        pairs_per_source=int(k), min_score_gap=float(gap),
    )
    write_jsonl_with_report(output, all_rows, report, markdown_report(report), bool(cfg.overwrite))
    return report


@hydra.main(config_path="../conf", config_name="build_preferences", version_base="1.3")
@one_sentence_errors
def main(cfg: DictConfig) -> None:
    report = build(cfg)
    md_path, json_path = report_paths(Path(report["output"]))
    t = report["totals"]
    say(
        f"wrote {t['kept']} preference pairs ({len(report['directions'])} direction(s); dropped {t['dropped_total']}"
        f"{' ' + str(t['dropped']) if t['dropped'] else ''}) to {report['output']} in {report['run_time_s']:.1f}s\n"
        f"report: {md_path} and {json_path}"
    )


if __name__ == "__main__":
    run_app(main)
