"""ALMA-R-Preference rows -> the project's preference JSONL, with a report (Hydra app; conf/convert_alma_r.yaml).

Reading the rows and the per-row rule (directions, ``required_directions``, human ``Delta``, the
score field, the order [ref, gpt4, alma], the dropping of pairs that cannot be trained on, the
validation of every example) are ``cpo.data.alma_r``'s, the code training uses on the raw rows, so
training on the converted file and on the raw set uses the same pairs. This app counts what was
kept and dropped per direction and why.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from cpo.console import say
from cpo.cli import UsageError, one_sentence_errors, run_app
from cpo.data.alma_r import ALMA_R_SYSTEMS, alma_r_examples, config_of, read_alma_r_rows
from cpo.io import DataError, check_outputs_with_report, write_jsonl_with_report
from cpo.languages import language_pair

log = logging.getLogger("convert_alma_r")

SCORE_FIELDS = ("kiwi", "xcomet", "kiwi_xcomet")
SYSTEMS = ALMA_R_SYSTEMS

__all__ = ["config_of", "convert", "markdown_report", "run"]


def convert(rows: list[tuple[str, dict]], pairs: list[str], score_field: str) -> tuple[list[dict], dict[str, dict]]:
    """Output records and per-direction statistics."""
    stats = {
        p: {"candidate_rows": 0, "kept": 0, "dropped": Counter(), "chosen_by_system": Counter(),
            "rejected_by_system": Counter(), "human_delta": 0}
        for p in pairs
    }
    out: list[dict] = []
    for where, row in rows:
        tr = row.get("translation", row)
        pair = tr.get("language_pair") if isinstance(tr, dict) else None
        if not isinstance(pair, str) or pair.count("-") != 1:
            raise DataError(f"{where}: field 'translation.language_pair' missing or not like 'de-en'")
        a, b = pair.split("-")
        for direction in (f"{a}-{b}", f"{b}-{a}"):
            if direction not in stats:
                continue
            st = stats[direction]
            st["candidate_rows"] += 1
            examples, dropped = alma_r_examples(row, [direction], score_field, where)
            st["dropped"].update(dropped)
            for ex in examples:
                record = asdict(ex)
                del record["prompt"]  # ALMA-R rows use ALMA's template, never a prompt of their own
                if record["reference"] is None:
                    del record["reference"]
                record["provenance"]["alma_r_row"] = where
                if ex.provenance.get("human_delta"):
                    st["human_delta"] += 1
                st["kept"] += 1
                st["chosen_by_system"][ex.provenance["chosen_system"]] += 1
                st["rejected_by_system"][ex.provenance["rejected_system"]] += 1
                out.append(record)
    for st in stats.values():
        for k in ("dropped", "chosen_by_system", "rejected_by_system"):
            st[k] = dict(st[k])
        st["dropped_total"] = sum(st["dropped"].values())
    return out, stats


def markdown_report(report: dict) -> str:
    dirs = report["directions"]
    reasons = sorted({r for st in dirs.values() for r in st["dropped"]})
    lines = [
        "# ALMA-R-Preference conversion report",
        "",
        f"- source: {', '.join(f'`{s}`' for s in report['inputs'])} ({report['rows']} rows)",
        f"- score field: `{report['score_field']}` (tie order: {', '.join(SYSTEMS)}; "
        "a non-zero human Delta decides gpt4 vs alma)",
        f"- output: `{report['output']}` ({report['kept']} examples)",
        f"- run time: {report['run_time_s']:.2f} s",
        "",
        "| direction | rows | kept | dropped | " + " | ".join(reasons) + (" | " if reasons else "")
        + "human Delta | " + " | ".join(f"{s} chosen/rejected" for s in SYSTEMS) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(reasons) + "---:|" + "---:|" * len(SYSTEMS),
    ]
    for d, st in dirs.items():
        lines.append(
            f"| {d} | {st['candidate_rows']} | {st['kept']} | {st['dropped_total']} | "
            + " | ".join(str(st["dropped"].get(r, 0)) for r in reasons) + (" | " if reasons else "")
            + f"{st['human_delta']} | "
            + " | ".join(f"{st['chosen_by_system'].get(s, 0)} / {st['rejected_by_system'].get(s, 0)}" for s in SYSTEMS)
            + " |"
        )
    return "\n".join(lines) + "\n"


def _pairs(cfg: DictConfig) -> list[str]:
    pairs = [str(p) for p in (cfg.get("pairs") or [])]
    if not pairs or len(set(pairs)) != len(pairs):
        raise UsageError(f"pairs must list distinct directions like [de-en, en-de], got {pairs}")
    for p in pairs:
        if "en" not in language_pair(p, "pairs"):
            raise UsageError(f"pairs: {p}: ALMA-R-Preference holds directions to and from English only")
    return pairs


def run(cfg: DictConfig) -> dict:
    """The whole conversion; returns the report object (also written next to the output)."""
    t0 = time.time()
    if cfg.get("source") in (None, ""):
        raise UsageError("source= is not set (a local ALMA-R-Preference copy or a hub name; "
                         "see conf/convert_alma_r.yaml)")
    if cfg.get("output") in (None, ""):
        raise UsageError("output= is not set (see conf/convert_alma_r.yaml)")
    if cfg.score_field not in SCORE_FIELDS:
        raise UsageError(f"score_field must be one of {', '.join(SCORE_FIELDS)}, got {cfg.score_field!r}")
    pairs = _pairs(cfg)
    output = Path(to_absolute_path(str(cfg.output)))
    check_outputs_with_report(output, bool(cfg.overwrite))
    source = str(cfg.source)
    local = to_absolute_path(source)  # a local path is relative to the launch directory; a hub name stays as it is
    hub = not Path(local).exists() and source.count("/") == 1 and not source.startswith(("/", ".", "~"))
    rows, inputs = read_alma_r_rows(source if hub else local, pairs, str(cfg.split), key="source")
    records, stats = convert(rows, pairs, str(cfg.score_field))
    if not records:
        raise DataError(f"{source}: no examples for pairs {pairs} (per direction: "
                        + ", ".join(f"{d} {st['dropped']}" for d, st in stats.items()) + ")")
    report = {
        "inputs": inputs,
        "rows": len(rows),
        "score_field": str(cfg.score_field),
        "pairs": pairs,
        "output": str(output),
        "kept": len(records),
        "directions": stats,
        "run_time_s": round(time.time() - t0, 3),
    }
    write_jsonl_with_report(output, records, report, markdown_report(report), bool(cfg.overwrite))
    return report


@hydra.main(config_path="../conf", config_name="convert_alma_r", version_base="1.3")
@one_sentence_errors
def main(cfg: DictConfig) -> None:
    report = run(cfg)
    output = Path(report["output"])
    say(
        f"wrote {report['kept']} examples from {report['rows']} rows to {output}\n"
        f"report: {output.parent / (output.stem + '.report.md')} and .report.json"
    )


if __name__ == "__main__":
    run_app(main)
