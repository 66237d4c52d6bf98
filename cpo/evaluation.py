"""Corpus-level evaluation of translation files (SPEC section 6).

BLEU and chrF come from sacrebleu with the tokenizer fixed by the target language (``13a``,
``zh`` for Chinese, ``ja-mecab`` for Japanese) and are reported with sacrebleu's signature,
so figures are comparable with published ones; any configured ``Scorer`` (COMET, CometKiwi,
XCOMET, ...) adds its mean segment score. Directions are ``"<src>-<tgt>"`` strings, and the
paper reports averages over xx->en and en->xx separately, which ``summarize`` reproduces.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cpo.io import read_aligned
from cpo.languages import sacrebleu_tokenizer
from cpo.scoring import Scorer

__all__ = [
    "RESERVED_KEYS",
    "WMT22_DIRECTIONS",
    "corpus_metrics",
    "evaluate_files",
    "evaluate_directions",
    "parse_direction",
    "summarize",
    "markdown_table",
    "wmt22_directions",
]

#: Keys ``corpus_metrics`` fills itself; a scorer may not use one of them as its name.
RESERVED_KEYS = frozenset({"bleu", "chrf", "bleu_signature", "chrf_signature", "n"})

#: The ten WMT'22 directions of the ALMA / ALMA-R papers, xx->en first.
WMT22_DIRECTIONS: tuple[str, ...] = (
    "cs-en", "de-en", "is-en", "ru-en", "zh-en",
    "en-cs", "en-de", "en-is", "en-ru", "en-zh",
)

XX_EN = "xx->en"
EN_XX = "en->xx"


def parse_direction(direction: str) -> tuple[str, str]:
    """``"de-en"`` -> ``("de", "en")``; anything else is an error naming the string."""
    parts = str(direction).split("-")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"direction {direction!r} is not of the form <src>-<tgt> (e.g. de-en)")
    return parts[0], parts[1]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def corpus_metrics(
    hypotheses: Sequence[str],
    references: Sequence[str],
    tgt_lang: str,
    sources: Sequence[str] | None = None,
    scorers: Sequence[Scorer] = (),
    src_lang: str | None = None,
) -> dict[str, Any]:
    """Corpus BLEU/chrF with signatures, segment count, and each scorer's mean segment score.

    References go to every scorer (a reference-free one drops them itself); ``sources`` are
    required as soon as a scorer is configured, since COMET-style models read them.
    """
    from sacrebleu.metrics import BLEU, CHRF

    hyps, refs = list(hypotheses), list(references)
    if not hyps:
        raise ValueError("corpus_metrics: no segments to evaluate")
    if len(hyps) != len(refs):
        raise ValueError(f"corpus_metrics: {len(hyps)} hypotheses but {len(refs)} references")
    if sources is not None and len(sources) != len(hyps):
        raise ValueError(f"corpus_metrics: {len(sources)} sources but {len(hyps)} hypotheses")
    bleu = BLEU(tokenize=sacrebleu_tokenizer(tgt_lang))
    chrf = CHRF()
    out: dict[str, Any] = {
        "bleu": bleu.corpus_score(hyps, [refs]).score,
        "chrf": chrf.corpus_score(hyps, [refs]).score,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "n": len(hyps),
    }
    for scorer in scorers:
        if scorer.name in out:
            raise ValueError(
                f"scorer name {scorer.name!r} clashes with a metric key ({sorted(out)}); give it another name"
            )
        if sources is None:
            raise ValueError(f"scorer {scorer.name!r} needs the source sentences; pass sources=")
        scores = scorer.score(list(sources), hyps, refs, tgt_lang=tgt_lang)
        out[scorer.name] = _mean(scores)
    return out


def evaluate_files(
    src: str | os.PathLike,
    ref: str | os.PathLike,
    hyp: str | os.PathLike,
    src_lang: str,
    tgt_lang: str,
    scorers: Sequence[Scorer] = (),
) -> dict[str, Any]:
    """``corpus_metrics`` of three line-aligned UTF-8 files.

    Misaligned files, invalid UTF-8 and empty lines stop with the file (and line) named; an
    empty line in a system output is a generation failure that must not be scored silently.
    """
    del src_lang  # part of the signature for symmetry and future source-side metrics
    texts = read_aligned({"src": src, "ref": ref, "hyp": hyp})
    return corpus_metrics(texts["hyp"], texts["ref"], tgt_lang, sources=texts["src"], scorers=scorers)


def evaluate_directions(
    directions: Mapping[str, Mapping[str, str | os.PathLike]], scorers: Sequence[Scorer] = ()
) -> dict[str, dict[str, Any]]:
    """``evaluate_files`` for each ``direction -> {src, ref, hyp}``, in the given order."""
    results: dict[str, dict[str, Any]] = {}
    for direction, files in directions.items():
        src_lang, tgt_lang = parse_direction(direction)
        missing = [k for k in ("src", "ref", "hyp") if not files.get(k)]
        if missing:
            raise ValueError(f"direction {direction}: missing file path(s) {missing} (need src, ref, hyp)")
        results[direction] = evaluate_files(files["src"], files["ref"], files["hyp"], src_lang, tgt_lang, scorers)
    return results


def _numeric_keys(metrics: Mapping[str, Any]) -> list[str]:
    return [k for k, v in metrics.items() if k != "n" and isinstance(v, (int, float)) and not isinstance(v, bool)]


def summarize(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Averages of each numeric metric over xx->en (tgt == en) and en->xx (src == en) directions.

    A group appears only if it has directions; a metric is averaged only if every direction
    of the group has it, so an average never silently covers a subset. ``directions`` lists
    what each average covers.
    """
    groups: dict[str, list[str]] = {XX_EN: [], EN_XX: []}
    for direction in results:
        src, tgt = parse_direction(direction)
        if tgt == "en":
            groups[XX_EN].append(direction)
        if src == "en":
            groups[EN_XX].append(direction)
    summary: dict[str, dict[str, Any]] = {}
    for group, dirs in groups.items():
        if not dirs:
            continue
        keys = [k for k in _numeric_keys(results[dirs[0]]) if all(k in results[d] for d in dirs)]
        avg: dict[str, Any] = {k: _mean([float(results[d][k]) for d in dirs]) for k in keys}
        avg["directions"] = list(dirs)
        summary[group] = avg
    return summary


def _fmt(key: str, value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    if key == "n":
        return str(int(value))
    return f"{value:.2f}" if key in ("bleu", "chrf") else f"{value:.4f}"


def markdown_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per direction, then the xx->en / en->xx average rows, then the signatures."""
    columns = ["n"]
    for metrics in results.values():
        for k in _numeric_keys(metrics):
            if k not in columns:
                columns.append(k)
    lines = [
        "| direction | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for direction, metrics in results.items():
        lines.append(f"| {direction} | " + " | ".join(_fmt(c, metrics.get(c, "")) for c in columns) + " |")
    for group, avg in summarize(results).items():
        cells = [_fmt(c, avg[c]) if c in avg else "" for c in columns]
        cells[0] = str(len(avg["directions"]))  # the n column of an average row counts directions
        lines.append(f"| **avg {group}** | " + " | ".join(cells) + " |")
    signatures: dict[str, list[str]] = {}
    for direction, metrics in results.items():
        for key, label in (("bleu_signature", "BLEU"), ("chrf_signature", "chrF")):
            if key in metrics:
                signatures.setdefault(f"{label} `{metrics[key]}`", []).append(direction)
    if signatures:
        lines.append("")
        for sig, dirs in signatures.items():
            lines.append(f"- {sig}: {', '.join(dirs)}")
    return "\n".join(lines) + "\n"


def wmt22_directions(
    root: str | os.PathLike, system: str, directions: Sequence[str] | None = None
) -> dict[str, dict[str, str]]:
    """File paths of a system's WMT'22 outputs in the layout of ``shared/data/wmt22``.

    ``<root>/wmt-testset/<s><t>/test.<s>-<t>.<s|t>`` are source and reference, and
    ``<root>/<system>/<s><t>/test.<s>-<t>.<t>`` the system output. Every path is checked
    here so a typo in a system name fails before any scoring starts.
    """
    root = Path(root)
    if not (root / "wmt-testset").is_dir():
        raise FileNotFoundError(f"{root}: not a WMT'22 folder (no wmt-testset/ inside)")
    if not (root / system).is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "wmt-testset")
        raise FileNotFoundError(f"{root / system}: no such system (available: {', '.join(known)})")
    out: dict[str, dict[str, str]] = {}
    for direction in directions or WMT22_DIRECTIONS:
        s, t = parse_direction(direction)
        pair, stem = f"{s}{t}", f"test.{s}-{t}"
        files = {
            "src": root / "wmt-testset" / pair / f"{stem}.{s}",
            "ref": root / "wmt-testset" / pair / f"{stem}.{t}",
            "hyp": root / system / pair / f"{stem}.{t}",
        }
        for path in files.values():
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing file for direction {direction} of {system}")
        out[direction] = {k: str(v) for k, v in files.items()}
    return out
