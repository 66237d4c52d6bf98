"""ALMA-R-Preference (SPEC section 2): the published rows, read into preference examples.

One reader and one validation for training (``data=alma_r_preference``) and for
``scripts/convert_alma_r.py``, so training on the raw rows and on the converted file uses the same
pairs: :func:`read_alma_r_rows` finds and reads the rows (one rule for JSON vs JSON Lines, that of
``cpo.io.json_layout``), :func:`alma_r_examples` turns a row into examples. Every example is
validated by ``cpo.data.records.example_from_record``, the reader of the converted file.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import Sequence

from cpo.data.records import PreferenceExample, example_from_record
from cpo.io import DataError, Unavailable, iter_json_records
from cpo.pairs.rule import Candidate, Selection, checked_pair, select_pair
from cpo.text import is_blank

log = logging.getLogger(__name__)


ALMA_R_SYSTEMS = ("ref", "gpt4", "alma")  # the original tie-breaking order
DROP_EMPTY_SOURCE = "empty_source"


def config_of(direction: str) -> str:
    """The data set config holding a direction: ``en-de`` and ``de-en`` are both in ``de-en``."""
    src, tgt = str(direction).split("-")
    return f"{tgt}-{src}" if src == "en" else f"{src}-{tgt}"


def _text(tr: dict, key: str, where: str) -> str:
    if key not in tr:
        raise DataError(f"{where}: missing field 'translation.{key}'")
    value = tr[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field 'translation.{key}' must be a string, got {type(value).__name__}")
    return value


def _score(tr: dict, key: str, where: str, scorer: str) -> float:
    if key not in tr:
        raise DataError(f"{where}: missing field 'translation.{key}' (scorer={scorer!r})")
    value = tr[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{where}: field 'translation.{key}' must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise DataError(f"{where}: field 'translation.{key}' is {value}; a non-finite score cannot rank translations")
    return float(value)


def alma_r_examples(
    row: dict, pairs: Sequence[str], scorer: str, where: str
) -> tuple[list[PreferenceExample], Counter]:
    """Examples from one ALMA-R-Preference row, one per requested direction, and the drops by reason.

    A row of config "de-en" holds texts in both languages, so it can give de->en and en->de;
    ``required_directions`` (e.g. "en-de") restricts it to one. A non-zero human ``Delta``
    overrides the scores between gpt4 (Delta > 0) and alma, as in the original code (which by
    mistake returned the two scores instead of the texts there). The pair is selected first, as
    ALMA's code selected it, then dropped when it cannot be trained on: equal scores, equal texts
    (human-preferred pairs included) or an empty side (``empty_text``), or an empty source.
    """
    tr = row.get("translation", row) if isinstance(row, dict) else None
    if not isinstance(tr, dict):
        raise DataError(f"{where}: expected an object with a 'translation' record")
    dropped: Counter = Counter()
    pair = tr.get("language_pair")
    if not isinstance(pair, str) or pair.count("-") != 1:
        raise DataError(f"{where}: field 'translation.language_pair' missing or not like 'de-en'")
    a, b = pair.split("-")
    required = tr.get("required_directions") or ""
    delta = tr.get("Delta") or 0
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not math.isfinite(delta):
        raise DataError(f"{where}: field 'translation.Delta' must be a finite number, got {delta!r}")
    out = []
    for src, tgt in ((a, b), (b, a)):
        direction = f"{src}-{tgt}"
        if direction not in pairs:
            continue
        if required and required.split("-")[-1] != tgt:
            dropped["required_directions"] += 1
            continue
        fields = {"ref": tgt, "gpt4": f"gpt4_{tgt}", "alma": f"alma_{tgt}"}
        cands = [Candidate(system, _text(tr, fields[system], where),
                           _score(tr, f"{system}_{tgt}_{scorer}", where, scorer)) for system in ALMA_R_SYSTEMS]
        source = _text(tr, src, where)
        if delta:
            sel = checked_pair(*((cands[1], cands[2]) if delta > 0 else (cands[2], cands[1])))
        else:
            sel = select_pair(cands)
        if sel.kept and is_blank(source):
            sel = Selection(sel.chosen, sel.rejected, DROP_EMPTY_SOURCE)
        if not sel.kept:
            dropped[sel.dropped] += 1
            continue
        reference = tr[tgt] if not is_blank(tr[tgt]) else None  # an empty reference is no reference
        record = {
            "source": source, "chosen": sel.chosen.text, "rejected": sel.rejected.text,
            "src_lang": src, "tgt_lang": tgt, "reference": reference,
            "provenance": {
                "scorer": scorer,
                "chosen_system": sel.chosen.system,
                "rejected_system": sel.rejected.system,
                "scores": {c.system: c.score for c in cands},
                "human_delta": delta,
            },
        }
        out.append(example_from_record(record, f"{where} ({direction})"))
    return out, dropped


def _looks_like_hub_name(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith(("/", ".", "~"))


def read_alma_r_rows(source: str, pairs: Sequence[str], split: str = "train", key: str = "data.path"
                     ) -> tuple[list[tuple[str, dict]], list[str]]:
    """(where, row) for every row of the configs holding ``pairs``, and the files (or hub configs) read.

    ``source`` is a JSON / JSON Lines file, a folder of ``<config>*.json(l)`` files, or a hub name;
    the hub is touched only when ``source`` is not a local path, i.e. when the user's config names a
    remote data set. ``key`` names the setting in messages.
    """
    configs = sorted({config_of(p) for p in pairs})
    path = Path(source).expanduser()
    rows: list[tuple[str, dict]] = []
    if path.exists():
        files = [path] if path.is_file() else sorted(
            f for c in configs for f in path.glob(f"{c}*.json*") if f.is_file())
        if not files:
            raise DataError(f"{key}={source}: no files named like <config>*.json or *.jsonl for configs {configs}")
        for f in files:
            for where, row in iter_json_records(f):
                if not isinstance(row, dict):
                    raise DataError(f"{where}: expected an object, got {type(row).__name__}")
                rows.append((where, row))
        return rows, [str(f) for f in files]
    if not _looks_like_hub_name(str(source)):
        raise FileNotFoundError(f"{key}={source}: {path} does not exist (and it is not a hub name like owner/dataset)")
    try:
        import datasets
    except ImportError:
        raise Unavailable(f"{key}={source!r}: cannot load it from the hub without the `datasets` package "
                          "(bash scripts/install.sh hub); or pass a local copy") from None
    from cpo.hub import hub_files_only

    if hub_files_only(key, str(source), repo_type="dataset"):  # cached, and the hub cannot be used: no retries
        datasets.config.HF_HUB_OFFLINE = True
    for c in configs:
        try:
            ds = datasets.load_dataset(source, c, split=split)
        except Exception as e:  # offline, unknown name, missing config: say which and what to do
            raise Unavailable(f"{key}={source!r} (config {c}): cannot load it from the hub ({type(e).__name__}: {e}); "
                              "pass a local copy instead") from None
        rows += [(f"{source}[{c}] row {i}", r) for i, r in enumerate(ds, 1)]
    return rows, [f"{source}[{c}]:{split}" for c in configs]


def read_alma_r_preference(
    source: str, pairs: Sequence[str], scorer: str = "kiwi_xcomet", split: str = "train"
) -> list[PreferenceExample]:
    """ALMA-R-Preference from a local copy (a JSON/JSONL file or a folder of ``<pair>*.jsonl``) or a hub name."""
    rows, _ = read_alma_r_rows(source, pairs, split)
    examples: list[PreferenceExample] = []
    dropped: Counter = Counter()
    for where, row in rows:
        ex, d = alma_r_examples(row, pairs, scorer, where)
        examples += ex
        dropped += d
    if dropped:
        log.info("ALMA-R-Preference: dropped %s", dict(dropped))
    if not examples:
        raise DataError(f"{source}: no examples for pairs {list(pairs)}")
    return examples
