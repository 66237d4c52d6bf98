"""Evaluate existing translation files (Hydra app; see conf/evaluate.yaml for the modes).

Writes ``metrics.json`` and ``metrics.md`` into the Hydra run directory, atomically, and
prints the Markdown table. ``metrics.json`` holds ``directions`` (per-direction metrics),
``averages`` (xx->en and en->xx), ``inputs`` (the files read) and ``scorers`` (name ->
identity); with a single direction its metrics are also at the top level.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, ListConfig, OmegaConf

from cpo.evaluation import evaluate_directions, markdown_table, parse_direction, summarize, wmt22_directions
from cpo.io import atomic_write_json, atomic_write_text
from cpo.languages import language_name
from cpo.scoring import Scorer, build_scorer


def _abs(path: Any, field: str) -> str:
    if path in (None, ""):
        raise ValueError(f"{field} is not set")
    return to_absolute_path(str(path))


def _single_direction(cfg: DictConfig) -> dict[str, dict[str, str]]:
    for field in ("src", "ref", "hyp", "src_lang", "tgt_lang"):
        if cfg.get(field) in (None, ""):
            raise ValueError(f"one-direction mode needs {field}= (have src, ref, hyp, src_lang, tgt_lang)")
    language_name(cfg.src_lang, "src_lang")
    language_name(cfg.tgt_lang, "tgt_lang")
    return {f"{cfg.src_lang}-{cfg.tgt_lang}": {k: _abs(cfg[k], k) for k in ("src", "ref", "hyp")}}


def _listed_directions(spec: DictConfig | ListConfig) -> dict[str, dict[str, str]]:
    """``{dir: {src, ref, hyp}}`` or ``[{direction, src, ref, hyp}, ...]`` with absolute paths."""
    items: list[tuple[str, Any]]
    if isinstance(spec, ListConfig):
        items = []
        for i, entry in enumerate(spec):
            if not isinstance(entry, DictConfig) or not entry.get("direction"):
                raise ValueError(f"directions[{i}]: expected {{direction, src, ref, hyp}}, got {entry}")
            items.append((str(entry.direction), entry))
    else:
        items = [(str(k), v) for k, v in spec.items()]
    out: dict[str, dict[str, str]] = {}
    for direction, files in items:
        parse_direction(direction)
        if direction in out:
            raise ValueError(f"directions: {direction} is listed twice")
        out[direction] = {k: _abs(files.get(k), f"directions.{direction}.{k}") for k in ("src", "ref", "hyp")}
    return out


def collect_directions(cfg: DictConfig) -> dict[str, dict[str, str]]:
    """The direction -> files mapping of whichever single input mode the config uses."""
    modes = {
        "src/ref/hyp": any(cfg.get(k) not in (None, "") for k in ("src", "ref", "hyp")),
        "directions": bool(cfg.get("directions")),
        "wmt22": bool(cfg.get("wmt22") and (cfg.wmt22.get("root") or cfg.wmt22.get("system"))),
    }
    chosen = [m for m, on in modes.items() if on]
    if len(chosen) != 1:
        raise ValueError(
            "give exactly one input mode: src/ref/hyp (+src_lang/tgt_lang), directions, or "
            f"wmt22.root + wmt22.system; got {chosen or 'none'} (see conf/evaluate.yaml)"
        )
    if chosen[0] == "src/ref/hyp":
        return _single_direction(cfg)
    if chosen[0] == "directions":
        return _listed_directions(cfg.directions)
    if not cfg.wmt22.get("system"):
        raise ValueError("wmt22 mode needs wmt22.system= (e.g. ALMA-13B-LoRA)")
    dirs = cfg.wmt22.get("directions")
    return wmt22_directions(_abs(cfg.wmt22.root, "wmt22.root"), cfg.wmt22.system, list(dirs) if dirs else None)


def build_scorers(cfg: DictConfig) -> list[Scorer]:
    cache = cfg.get("scorer_cache_dir")
    cache = to_absolute_path(cache) if cache else None
    return [build_scorer(c, cache_dir=cache, where=f"scorers[{i}]") for i, c in enumerate(cfg.get("scorers") or [])]


def report(results: dict[str, dict[str, Any]], inputs: dict[str, dict[str, str]], scorers: list[Scorer]) -> dict[str, Any]:
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
def main(cfg: DictConfig) -> None:
    directions = collect_directions(cfg)
    scorers = build_scorers(cfg)
    results = evaluate_directions(directions, scorers)
    table = markdown_table(results)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    atomic_write_json(out_dir / "metrics.json", report(results, directions, scorers))
    atomic_write_text(out_dir / "metrics.md", table)
    print(table, end="")
    print(f"\nwrote {out_dir / 'metrics.json'} and {out_dir / 'metrics.md'}")


if __name__ == "__main__":
    main()
