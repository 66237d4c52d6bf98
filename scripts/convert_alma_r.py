"""ALMA-R-Preference rows -> the project's preference JSONL, with a report (Hydra app; conf/convert_alma_r.yaml).

The per-row rule (directions, ``required_directions``, human ``Delta``, the score field, the
order [ref, gpt4, alma] and the dropping of degenerate pairs) is ``cpo.data.alma_r_examples``;
this app reads the rows (a local copy or the hub), applies it per direction, validates every
example with ``cpo.data.example_from_record`` and counts what was kept and dropped and why.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from cpo.data import alma_r_examples, example_from_record
from cpo.evaluation import parse_direction
from cpo.io import DataError, check_writable, iter_jsonl, report_paths, write_jsonl_with_report
from cpo.languages import language_name

log = logging.getLogger("convert_alma_r")

SCORE_FIELDS = ("kiwi", "xcomet", "kiwi_xcomet")
SYSTEMS = ("ref", "gpt4", "alma")


def config_of(direction: str) -> str:
    """The data set config holding a direction: ``en-de`` and ``de-en`` are both in ``de-en``."""
    src, tgt = parse_direction(direction)
    return f"{tgt}-{src}" if src == "en" else f"{src}-{tgt}"


def _read_json_file(path: Path) -> Iterator[tuple[str, dict]]:
    head = path.read_bytes().lstrip()[:1]
    if head != b"[":  # one object per line
        yield from ((f"{path}:{i}", r) for i, r in iter_jsonl(path))
        return
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    for i, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {i}: expected an object, got {type(row).__name__}")
        yield f"{path}: row {i}", row


def read_rows(source: str, pairs: list[str], split: str) -> tuple[list[tuple[str, dict]], list[str]]:
    """(where, row) for every row of the configs that hold ``pairs``, and the files/configs read."""
    configs = sorted({config_of(p) for p in pairs})
    local = Path(to_absolute_path(source))
    rows: list[tuple[str, dict]] = []
    if local.exists():
        files = [local] if local.is_file() else sorted(f for c in configs for f in local.glob(f"{c}*.json*"))
        if not files:
            raise DataError(f"{local}: no files named like <pair>*.json(l) for configs {configs}")
        for f in files:
            rows += list(_read_json_file(f))
        return rows, [str(f) for f in files]
    if source.startswith(("/", ".", "~")) or source.count("/") != 1:
        raise FileNotFoundError(f"source={source}: {local} does not exist (and it is not a hub name like owner/dataset)")
    try:
        import datasets
    except ImportError:
        raise RuntimeError(f"source={source!r} is not a local path; loading it from the hub needs `pip install cpo[hub]`") from None
    for c in configs:
        ds = datasets.load_dataset(source, c, split=split)
        rows += [(f"{source}[{c}] row {i}", r) for i, r in enumerate(ds, 1)]
    return rows, [f"{source}[{c}]:{split}" for c in configs]


def convert(rows: list[tuple[str, dict]], pairs: list[str], score_field: str) -> tuple[list[dict], dict[str, dict]]:
    """Output records and per-direction statistics."""
    stats = {
        p: {"candidate_rows": 0, "kept": 0, "dropped": Counter(), "chosen_by_system": Counter(),
            "rejected_by_system": Counter(), "human_delta": 0, "first_invalid": None}
        for p in pairs
    }
    out: list[dict] = []
    for where, row in rows:
        tr = row.get("translation", row)
        if not isinstance(tr, dict):
            raise DataError(f"{where}: field 'translation' must be an object")
        pair = tr.get("language_pair")
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
                record["provenance"]["alma_r_row"] = where
                try:
                    example_from_record(record, f"{where} ({direction})")
                except DataError as e:
                    st["dropped"]["invalid_record"] += 1
                    st["first_invalid"] = st["first_invalid"] or str(e)
                    continue
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
        f"- score field: `{report['score_field']}` (tie order: {', '.join(SYSTEMS)}; a non-zero human Delta decides gpt4 vs alma)",
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
    invalid = [(d, st["first_invalid"]) for d, st in dirs.items() if st["first_invalid"]]
    if invalid:
        lines += ["", "First invalid record per direction:", ""] + [f"- {d}: {msg}" for d, msg in invalid]
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig) -> dict:
    """The whole conversion; returns the report object (also written next to the output)."""
    t0 = time.time()
    if cfg.get("source") in (None, ""):
        raise ValueError("source= is not set (a local ALMA-R-Preference copy or a hub name; see conf/convert_alma_r.yaml)")
    if cfg.get("output") in (None, ""):
        raise ValueError("output= is not set (see conf/convert_alma_r.yaml)")
    if cfg.score_field not in SCORE_FIELDS:
        raise ValueError(f"score_field must be one of {', '.join(SCORE_FIELDS)}, got {cfg.score_field!r}")
    pairs = [str(p) for p in cfg.pairs]
    if not pairs or len(set(pairs)) != len(pairs):
        raise ValueError(f"pairs must list distinct directions, got {pairs}")
    for p in pairs:
        src, tgt = parse_direction(p)
        language_name(src, f"pairs: {p}")
        language_name(tgt, f"pairs: {p}")
    output = Path(to_absolute_path(str(cfg.output)))
    md_path, json_path = report_paths(output)
    for p in (output, md_path, json_path):
        check_writable(p, bool(cfg.overwrite))
    rows, inputs = read_rows(str(cfg.source), pairs, str(cfg.split))
    records, stats = convert(rows, pairs, str(cfg.score_field))
    if not records:
        raise DataError(f"{cfg.source}: no examples for pairs {pairs} (per direction: "
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
def main(cfg: DictConfig) -> None:
    report = run(cfg)
    output = Path(report["output"])
    print(
        f"wrote {report['kept']} examples from {report['rows']} rows to {output}\n"
        f"report: {output.parent / (output.stem + '.report.md')} and .report.json"
    )


if __name__ == "__main__":
    main()
