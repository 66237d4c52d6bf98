"""ALMA-R-Preference (SPEC section 2): the published rows, read into preference examples.

Used by training (``data=alma_r_preference``) and by ``scripts/convert_alma_r.py``, so both select
the same pairs.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

from cpo.data.records import PreferenceExample
from cpo.io import DataError, Unavailable, iter_jsonl
from cpo.preferences import Candidate, Selection, select_pair

log = logging.getLogger(__name__)


ALMA_R_SYSTEMS = ("ref", "gpt4", "alma")  # the original tie-breaking order


def alma_r_examples(row: dict, pairs: Sequence[str], scorer: str, where: str) -> tuple[list[PreferenceExample], Counter]:
    """Examples from one ALMA-R-Preference row, one per requested direction.

    A row of config "de-en" holds texts in both languages, so it can give de->en and en->de;
    ``required_directions`` (e.g. "en-de") restricts it to one. A non-zero human ``Delta``
    overrides the scores between gpt4 (Delta > 0) and alma, as in the original code (which by
    mistake returned the two scores instead of the texts there).
    """
    tr = row.get("translation", row)
    dropped: Counter = Counter()
    try:
        a, b = tr["language_pair"].split("-")
    except (KeyError, ValueError):
        raise DataError(f"{where}: field 'translation.language_pair' missing or not like 'de-en'") from None
    required = tr.get("required_directions") or ""
    out = []
    for src, tgt in ((a, b), (b, a)):
        if f"{src}-{tgt}" not in pairs:
            continue
        if required and required.split("-")[1] != tgt:
            dropped["required_directions"] += 1
            continue
        fields = {"ref": tgt, "gpt4": f"gpt4_{tgt}", "alma": f"alma_{tgt}"}
        cands = []
        for system in ALMA_R_SYSTEMS:
            text_key, score_key = fields[system], f"{system}_{tgt}_{scorer}"
            if text_key not in tr or score_key not in tr:
                missing = text_key if text_key not in tr else score_key
                raise DataError(f"{where}: missing field 'translation.{missing}' (scorer={scorer!r})")
            cands.append(Candidate(system, tr[text_key], float(tr[score_key])))
        delta = tr.get("Delta") or 0
        if delta:
            win, lose = (cands[1], cands[2]) if delta > 0 else (cands[2], cands[1])
            sel = Selection(win, lose)
        else:
            sel = select_pair(cands)
        if not sel.kept:
            dropped[sel.dropped] += 1
            continue
        out.append(
            PreferenceExample(
                source=tr[src],
                chosen=sel.chosen.text,
                rejected=sel.rejected.text,
                src_lang=src,
                tgt_lang=tgt,
                reference=tr[tgt],
                provenance={
                    "scorer": scorer,
                    "chosen_system": sel.chosen.system,
                    "rejected_system": sel.rejected.system,
                    "scores": {c.system: c.score for c in cands},
                    "human_delta": delta,
                },
            )
        )
    return out, dropped


def read_alma_r_preference(source: str, pairs: Sequence[str], scorer: str = "kiwi_xcomet", split: str = "train") -> list[PreferenceExample]:
    """ALMA-R-Preference from a local copy (a JSON/JSONL file or a folder of ``<pair>*.jsonl``) or a hub name.

    The hub is touched only when ``source`` is not a local path, i.e. when the user's config names
    a remote data set.
    """
    configs = sorted({"-".join(sorted(p.split("-"), key=lambda x: x == "en")) for p in pairs})  # de-en style
    rows: list[tuple[str, dict]] = []
    path = Path(source)
    if path.exists():
        files = [path] if path.is_file() else sorted(f for c in configs for f in path.glob(f"{c}*.json*"))
        if not files:
            raise DataError(f"{path}: no files named like {configs[0]}*.jsonl for pairs {list(pairs)}")
        for f in files:
            if f.suffix == ".json":
                try:
                    data = json.loads(f.read_text(encoding="utf-8"))
                except json.JSONDecodeError as e:
                    raise DataError(f"{f}:{e.lineno}: malformed JSON ({e.msg})") from None
                rows += [(f"{f}: row {i}", r) for i, r in enumerate(data, 1)]
            else:
                rows += [(f"{f}:{i}", r) for i, r in iter_jsonl(f)]
    else:
        try:
            import datasets
        except ImportError:
            raise Unavailable(f"data.path={source!r}: cannot load it from the hub without the `datasets` package "
                              "(bash scripts/install.sh hub); or pass a local copy") from None
        for c in configs:
            try:
                ds = datasets.load_dataset(source, c, split=split)
            except Exception as e:  # offline, unknown name, missing config: say which and what to do
                raise Unavailable(f"data.path={source!r} (config {c}): cannot load it from the hub ({type(e).__name__}: {e}); "
                                  "pass a local copy instead") from None
            rows += [(f"{source}[{c}] row {i}", r) for i, r in enumerate(ds, 1)]
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
