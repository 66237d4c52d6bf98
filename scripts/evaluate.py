"""Evaluate existing translation files (Hydra app; see conf/evaluate.yaml for the modes).

Writes ``metrics.json`` and ``metrics.md`` into the Hydra run directory, atomically, and
prints the Markdown table. ``metrics.json`` holds ``directions`` (per-direction metrics: BLEU,
chrF, chrF++, TER with signatures, scorer means, health checks), ``averages`` (xx->en and
en->xx), ``inputs`` (the files read) and ``scorers`` (name -> identity); with a single direction
its metrics are also at the top level. Every expected error is one sentence (``error: ...``,
exit 2) naming the file, line or setting.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, ListConfig

from cpo.cli import UsageError, one_sentence_errors, run_app
from cpo.console import say
from cpo.mt.evaluation import (CORPUS_METRICS, RESERVED_KEYS, evaluate_directions, markdown_table, parse_direction,
                            summarize, wmt22_directions)
from cpo.io import atomic_write_json, atomic_write_text, check_readable_file, check_writable
from cpo.languages import LANGUAGES
from cpo.scoring import Scorer, ScorerConfigError, build_scorer

log = logging.getLogger("evaluate")


def _abs(path: Any, field: str) -> str:
    if path in (None, ""):
        raise UsageError(f"{field} is not set (see conf/evaluate.yaml)")
    return to_absolute_path(str(path))


def _check_direction(direction: str, key: str) -> None:
    try:
        codes = parse_direction(direction)
    except ValueError as e:
        raise UsageError(f"{key}: {e}") from None
    for code in codes:
        if code not in LANGUAGES:
            known = ", ".join(sorted(LANGUAGES))
            raise UsageError(f"{key}: unknown language code {code!r} in {direction} (known: {known})")


def _single_direction(cfg: DictConfig) -> dict[str, dict[str, str]]:
    for field in ("src", "ref", "hyp", "src_lang", "tgt_lang"):
        if cfg.get(field) in (None, ""):
            raise UsageError(f"one-direction mode needs {field}= (give src, ref, hyp, src_lang and tgt_lang)")
    direction = f"{cfg.src_lang}-{cfg.tgt_lang}"
    _check_direction(direction, "src_lang/tgt_lang")
    return {direction: {k: _abs(cfg[k], k) for k in ("src", "ref", "hyp")}}


def _listed_directions(spec: DictConfig | ListConfig) -> dict[str, dict[str, str]]:
    """``{dir: {src, ref, hyp}}`` or ``[{direction, src, ref, hyp}, ...]`` with absolute paths."""
    items: list[tuple[str, str, Any]]
    if isinstance(spec, ListConfig):
        items = []
        for i, entry in enumerate(spec):
            if not isinstance(entry, DictConfig) or not entry.get("direction"):
                raise UsageError(f"directions[{i}]: expected {{direction, src, ref, hyp}}, got {entry}")
            items.append((str(entry.direction), f"directions[{i}]", entry))
    else:
        items = [(str(k), f"directions.{k}", v) for k, v in spec.items()]
    out: dict[str, dict[str, str]] = {}
    for direction, key, files in items:
        _check_direction(direction, key)
        if direction in out:
            raise UsageError(f"directions: {direction} is listed twice")
        if not isinstance(files, DictConfig):
            raise UsageError(f"{key}: expected {{src, ref, hyp}}, got {files}")
        out[direction] = {k: _abs(files.get(k), f"{key}.{k}") for k in ("src", "ref", "hyp")}
    return out


def collect_directions(cfg: DictConfig) -> dict[str, dict[str, str]]:
    """The direction -> files mapping of whichever single input mode the config uses; every file checked."""
    modes = {
        "src/ref/hyp": any(cfg.get(k) not in (None, "") for k in ("src", "ref", "hyp")),
        "directions": bool(cfg.get("directions")),
        "wmt22": bool(cfg.get("wmt22") and (cfg.wmt22.get("root") or cfg.wmt22.get("system"))),
    }
    chosen = [m for m, on in modes.items() if on]
    if len(chosen) != 1:
        raise UsageError(
            "give exactly one input mode: src/ref/hyp (+src_lang/tgt_lang), directions, or "
            f"wmt22.root + wmt22.system; got {' and '.join(chosen) or 'none'} (see conf/evaluate.yaml)"
        )
    if chosen[0] == "src/ref/hyp":
        out = _single_direction(cfg)
        for files in out.values():
            for k, path in files.items():
                check_readable_file(path, k)
        return out
    if chosen[0] == "directions":
        out = _listed_directions(cfg.directions)
        for direction, files in out.items():
            for k, path in files.items():
                check_readable_file(path, f"directions.{direction}.{k}")
        return out
    if not cfg.wmt22.get("system"):
        raise UsageError("wmt22 mode needs wmt22.system= (e.g. ALMA-13B-LoRA)")
    dirs = cfg.wmt22.get("directions")
    for i, d in enumerate(dirs or []):
        _check_direction(str(d), f"wmt22.directions[{i}]")
    # A system is a folder under the root (ALMA-13B-R) or, for outputs of scripts/generate.py, a folder of its own.
    system = str(cfg.wmt22.system)
    local = Path(to_absolute_path(system))
    if ("/" in system or system.startswith(".")) and local.is_dir():
        system = str(local)
    return wmt22_directions(_abs(cfg.wmt22.root, "wmt22.root"), system, list(dirs) if dirs else None)


def max_sentences(cfg: DictConfig) -> int | None:
    value = cfg.get("max_sentences")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UsageError(f"max_sentences={value} must be a positive integer (or null: every sentence)")
    return value


def corpus_metric_names(cfg: DictConfig) -> list[str]:
    names = cfg.get("metrics")
    names = list(CORPUS_METRICS) if names is None else [str(m) for m in names]
    unknown = [m for m in names if m not in CORPUS_METRICS]
    if unknown or len(set(names)) != len(names):
        raise UsageError(f"metrics={names}: give distinct names among {', '.join(CORPUS_METRICS)}")
    return names


def build_scorers(cfg: DictConfig) -> list[Scorer]:
    cache = cfg.get("scorer_cache_dir")
    cache = to_absolute_path(cache) if cache else None
    scorers = []
    for i, c in enumerate(cfg.get("scorers") or []):
        try:
            # progress=false silences every bar; true leaves each scorer's own setting.
            progress = None if cfg.get("progress", True) else False
            scorers.append(build_scorer(c, cache_dir=cache, where=f"scorers[{i}]", progress=progress))
        except ScorerConfigError as e:
            raise UsageError(str(e)) from None
    names = [s.name for s in scorers]
    if len(set(names)) != len(names):
        raise UsageError(f"scorers: two scorers share a name ({names}); give one of them name=...")
    clash = [n for n in names if n in RESERVED_KEYS]
    if clash:
        raise UsageError(f"scorers: the name {clash[0]!r} is a metric of its own; give that scorer another name=...")
    return scorers


def report(
    results: dict[str, dict[str, Any]], inputs: dict[str, dict[str, str]], scorers: list[Scorer]
) -> dict[str, Any]:
    """The metrics.json object (see the module docstring)."""
    out: dict[str, Any] = {}
    if len(results) == 1:
        direction, metrics = next(iter(results.items()))
        out.update(metrics, direction=direction)
    out.update(
        directions=results,
        averages=summarize(results),
        inputs=inputs,
        scorers={s.name: s.identity for s in scorers},
    )
    return out


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
@one_sentence_errors
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    for name in ("metrics.json", "metrics.md"):  # a finished evaluation in this folder is kept, as other outputs are
        check_writable(out_dir / name, bool(cfg.get("overwrite", False)))
    metrics = corpus_metric_names(cfg)
    limit = max_sentences(cfg)
    directions = collect_directions(cfg)
    scorers = build_scorers(cfg)
    if limit is not None:
        log.info("max_sentences=%d: the first %d sentences of each direction only (a smoke test)", limit, limit)
    # One line per direction and metric as each is done: a long evaluation (COMET on ten directions) is not a hang.
    results = evaluate_directions(directions, scorers, metrics=metrics, health=bool(cfg.get("health", True)),
                                  progress=log.info, max_sentences=limit)
    table = markdown_table(results)
    atomic_write_json(out_dir / "metrics.json", report(results, directions, scorers))
    atomic_write_text(out_dir / "metrics.md", table)
    say(table.rstrip("\n"))
    empty = {d: m["empty"] for d, m in results.items() if m.get("empty")}
    if empty:
        say("\nempty hypotheses (scored as empty): " + ", ".join(f"{d} {n}" for d, n in empty.items()))
    say(f"\nwrote {out_dir / 'metrics.json'} and {out_dir / 'metrics.md'}")


if __name__ == "__main__":
    run_app(main)
