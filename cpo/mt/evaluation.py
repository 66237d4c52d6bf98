"""Corpus-level evaluation of translations (SPEC section 6): the metrics MT papers report, and health checks.

Per direction (``"<src>-<tgt>"``), under keys that stay the same in ``results.json``, logs
(``val/<key>``), ``metrics.json`` and reports:

- ``bleu``, ``chrf``, ``chrfpp`` (chrF++: chrF with word bigrams), ``ter``: sacrebleu corpus scores,
  each with its signature under ``<key>_signature``. BLEU's tokenizer follows the target language
  (:func:`cpo.languages.sacrebleu_tokenizer`); TER splits Chinese and Japanese into characters
  (sacrebleu's ``normalized`` + ``asian_support``, stated in the signature as ``norm:yes|asian:yes``).
- ``n``: the number of segments.
- one key per configured scorer (COMET, CometKiwi, XCOMET, ...): its mean segment score.
- the health checks of :mod:`cpo.mt.health` (``off_target``, ``copy_rate``, ``repetition``,
  ``length_ratio``, ``empty``, ...) when the sources are given.

Empty hypotheses are legitimate system output (real WMT submissions have them): they are scored as
empty strings, as sacrebleu does, and counted under ``empty``. Empty sources and references are
errors. The paper reports averages over xx->en and en->xx separately, which ``summarize`` reproduces.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cpo.mt.health import HEALTH_KEYS, health_checks
from cpo.io import DataError, read_aligned
from cpo.languages import sacrebleu_tokenizer
from cpo.scoring import Scorer, ScoreError
from cpo.text import is_blank

__all__ = [
    "CORPUS_METRICS",
    "COUNT_KEYS",
    "RESERVED_KEYS",
    "WMT22_DIRECTIONS",
    "corpus_metrics",
    "evaluate_files",
    "evaluate_directions",
    "parse_direction",
    "sacrebleu_metric",
    "summarize",
    "markdown_table",
    "wmt22_directions",
]

#: The sacrebleu corpus metrics ``corpus_metrics`` computes by default, by key.
CORPUS_METRICS: tuple[str, ...] = ("bleu", "chrf", "chrfpp", "ter")
#: Keys that count something: the average rows of a table give their total.
COUNT_KEYS = frozenset({"empty"})
#: Keys ``corpus_metrics`` fills itself; a scorer may not use one of them as its name.
RESERVED_KEYS = frozenset({*CORPUS_METRICS, *(f"{m}_signature" for m in CORPUS_METRICS), "n", *HEALTH_KEYS})

#: The ten WMT'22 directions of the ALMA / ALMA-R papers, xx->en first.
WMT22_DIRECTIONS: tuple[str, ...] = (
    "cs-en", "de-en", "is-en", "ru-en", "zh-en",
    "en-cs", "en-de", "en-is", "en-ru", "en-zh",
)

# What a held-out table rests on (corpus size, pairs, test sentences): stated above a table, never a row of it.
TABLE_SIZE_KEYS = ("n", "pairs", "sentences")


def table_metric_keys(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """The numeric metrics of ``before`` that ``after`` has too, in ``before``'s order: the rows of a before/after
    table (cpo.train.heldout.before_after_table, and the README's copy of it, cpo.report.readme)."""
    return [k for k in before if k in after and isinstance(before[k], (int, float)) and not isinstance(before[k], bool)
            and k not in TABLE_SIZE_KEYS]


XX_EN = "xx->en"
EN_XX = "en->xx"
_LABELS = {"bleu": "BLEU", "chrf": "chrF", "chrfpp": "chrF++", "ter": "TER"}


def parse_direction(direction: str) -> tuple[str, str]:
    """``"de-en"`` -> ``("de", "en")``; anything else is an error naming the string."""
    parts = str(direction).split("-")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"direction {direction!r} is not of the form <src>-<tgt> (e.g. de-en)")
    return parts[0], parts[1]


def sacrebleu_metric(name: str, tgt_lang: str):
    """A fresh sacrebleu metric object for key ``name`` and the target language."""
    from sacrebleu.metrics import BLEU, CHRF, TER

    if name == "bleu":
        return BLEU(tokenize=sacrebleu_tokenizer(tgt_lang))
    if name == "chrf":
        return CHRF()
    if name == "chrfpp":
        return CHRF(word_order=2)  # chrF++ (Popovic 2017)
    if name == "ter":
        # Without a split into characters, an unspaced Chinese or Japanese sentence is one TER "word".
        cjk = tgt_lang in ("zh", "ja")
        return TER(normalized=cjk, asian_support=cjk)
    raise ValueError(f"unknown corpus metric {name!r} (known: {', '.join(CORPUS_METRICS)})")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _check_segments(hyps: list[str], refs: list[str], sources: Sequence[str] | None) -> None:
    if not hyps:
        raise ValueError("corpus_metrics: no segments to evaluate")
    if len(hyps) != len(refs):
        raise ValueError(f"corpus_metrics: {len(hyps)} hypotheses but {len(refs)} references")
    if sources is not None and len(sources) != len(hyps):
        raise ValueError(f"corpus_metrics: {len(sources)} sources but {len(hyps)} hypotheses")
    for field, texts in (("reference", refs), ("source", sources or [])):
        blank = next((i for i, t in enumerate(texts) if is_blank(t)), None)
        if blank is not None:
            raise ValueError(f"corpus_metrics: {field} {blank + 1} of {len(texts)} is empty; every segment needs "
                             "a source and a reference (empty hypotheses are fine)")


def corpus_metrics(
    hypotheses: Sequence[str],
    references: Sequence[str],
    tgt_lang: str,
    sources: Sequence[str] | None = None,
    scorers: Sequence[Scorer] = (),
    src_lang: str | None = None,
    metrics: Sequence[str] = CORPUS_METRICS,
    health: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The sacrebleu ``metrics`` with signatures, ``n``, each scorer's mean, and the health checks.

    References go to every scorer (a reference-free one drops them itself); ``sources`` are
    required as soon as a scorer is configured, since COMET-style models read them. The health
    checks (:mod:`cpo.mt.health`) run when ``sources`` are given and ``health`` is true; ``src_lang``
    lets ``off_target_src`` tell output in the source language apart. ``progress`` receives one line
    per metric, scorer and the health checks as each is done (its value and seconds).
    """
    hyps, refs = list(hypotheses), list(references)
    _check_segments(hyps, refs, sources)
    out: dict[str, Any] = {}
    signatures: dict[str, str] = {}
    t0 = time.perf_counter()

    def done(name: str, value: Any = None) -> None:
        nonlocal t0
        if progress is not None:
            shown = f" {value:.4g}" if isinstance(value, (int, float)) else ""
            progress(f"{name}{shown} ({time.perf_counter() - t0:.1f} s)")
        t0 = time.perf_counter()

    for name in metrics:
        metric = sacrebleu_metric(name, tgt_lang)
        out[name] = metric.corpus_score(hyps, [refs]).score
        signatures[f"{name}_signature"] = str(metric.get_signature())
        done(name, out[name])
    out.update(signatures, n=len(hyps))
    checks = health_checks(hyps, sources, refs, tgt_lang, src_lang) if sources is not None and health else {}
    if checks:
        done("health checks (" + ", ".join(checks) + ")")
    for scorer in scorers:
        if scorer.name in RESERVED_KEYS or scorer.name in out:
            raise ValueError(
                f"scorer name {scorer.name!r} clashes with a metric key ({sorted(RESERVED_KEYS | set(out))}); "
                "give it another name"
            )
        if sources is None:
            raise ValueError(f"scorer {scorer.name!r} needs the source sentences; pass sources=")
        out[scorer.name] = _mean(scorer.score(list(sources), hyps, refs, tgt_lang=tgt_lang))
        done(scorer.name, out[scorer.name])
    out.update(checks)
    return out


def evaluate_files(
    src: str | os.PathLike,
    ref: str | os.PathLike,
    hyp: str | os.PathLike,
    src_lang: str,
    tgt_lang: str,
    scorers: Sequence[Scorer] = (),
    metrics: Sequence[str] = CORPUS_METRICS,
    health: bool = True,
    progress: Callable[[str], None] | None = None,
    max_sentences: int | None = None,
) -> dict[str, Any]:
    """``corpus_metrics`` of three line-aligned UTF-8 files.

    Misaligned files, invalid UTF-8, and empty lines in the source or reference file stop with
    the file (and line) named. Empty hypothesis lines are system output: scored as empty and
    counted (``empty``). A scorer's non-finite score names the hypothesis file and line.
    ``max_sentences``: only the first N lines of each file (a smoke test, e.g. of a hypothesis file
    that ``generate.py max_sentences=N`` wrote); they must then be aligned.
    """
    texts = read_aligned({"src": src, "ref": ref, "hyp": hyp}, allow_empty=True, limit=max_sentences)
    if not texts["src"]:
        raise DataError(f"{src}: no lines; give the files of a test set that has segments")
    for key, path in (("src", src), ("ref", ref)):
        blank = next((i for i, t in enumerate(texts[key]) if is_blank(t)), None)
        if blank is not None:
            what = "source" if key == "src" else "reference"
            raise DataError(f"{path}:{blank + 1}: empty {what} line; every {what} needs text (only hypotheses may "
                            "be empty): fix the file or remove the segment from all three files")
    try:
        return corpus_metrics(texts["hyp"], texts["ref"], tgt_lang, sources=texts["src"], scorers=scorers,
                              src_lang=src_lang, metrics=metrics, health=health, progress=progress)
    except ScoreError as e:
        raise e.located(where=f"{hyp}:{e.index + 1}") from None


def evaluate_directions(
    directions: Mapping[str, Mapping[str, str | os.PathLike]],
    scorers: Sequence[Scorer] = (),
    metrics: Sequence[str] = CORPUS_METRICS,
    health: bool = True,
    progress: Callable[[str], None] | None = None,
    max_sentences: int | None = None,
) -> dict[str, dict[str, Any]]:
    """``evaluate_files`` for each ``direction -> {src, ref, hyp}``, in the given order; ``progress`` gets one
    line per direction and metric (``de-en (2/10): chrf 61.3 (1.2 s)``), so a long evaluation shows where it is."""
    results: dict[str, dict[str, Any]] = {}
    for i, (direction, files) in enumerate(directions.items(), 1):
        src_lang, tgt_lang = parse_direction(direction)
        missing = [k for k in ("src", "ref", "hyp") if not files.get(k)]
        if missing:
            raise ValueError(f"direction {direction}: missing file path(s) {missing} (need src, ref, hyp)")
        where = f"{direction} ({i}/{len(directions)})"
        line = (lambda m, where=where: progress(f"{where}: {m}")) if progress is not None else None
        results[direction] = evaluate_files(files["src"], files["ref"], files["hyp"], src_lang, tgt_lang, scorers,
                                            metrics, health, line, max_sentences)
    return results


def _numeric_keys(metrics: Mapping[str, Any]) -> list[str]:
    return [k for k, v in metrics.items() if k != "n" and isinstance(v, (int, float)) and not isinstance(v, bool)]


def summarize(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Averages of each numeric metric over xx->en (tgt == en) and en->xx (src == en) directions.

    A group appears only if it has directions; a metric is averaged only if every direction
    of the group has it, so an average never silently covers a subset. Counts (``empty``) are
    summed instead. ``directions`` lists what each average covers.
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
        values = {k: [results[d][k] for d in dirs] for k in keys}
        avg: dict[str, Any] = {
            k: sum(v) if k in COUNT_KEYS else _mean([float(x) for x in v]) for k, v in values.items()
        }
        avg["directions"] = list(dirs)
        summary[group] = avg
    return summary


def _fmt(key: str, value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    if key == "n" or key in COUNT_KEYS:
        return str(int(value))
    return f"{value:.2f}" if key in CORPUS_METRICS else f"{value:.4f}"


_HEALTH_LEGEND = (
    "Health checks (cpo.mt.health): off_target = share of hypotheses identified (langid.py) as another language "
    "than the target, off_target_src = as the source language; copy_rate = share copying the source "
    "(character 3-gram Dice >= 0.8); repetition = share with a loop (3+ back-to-back copies covering 12+ units); "
    "length_ratio = hypothesis / reference length (characters for zh, ja, th; words otherwise); "
    "empty = empty hypotheses (average rows: the total)."
)


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
        for name, label in _LABELS.items():
            if f"{name}_signature" in metrics:
                signatures.setdefault(f"{label} `{metrics[f'{name}_signature']}`", []).append(direction)
    if signatures:
        lines.append("")
        for sig, dirs in signatures.items():
            lines.append(f"- {sig}: {', '.join(dirs)}")
    if any(k in HEALTH_KEYS for k in columns):
        lines += ["", _HEALTH_LEGEND]
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
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder (give the folder that holds wmt-testset/ and the systems)")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: is a file, not a folder (give the folder that holds wmt-testset/)")
    if not (root / "wmt-testset").is_dir():
        raise FileNotFoundError(f"{root}: not a WMT'22 folder (no wmt-testset/ inside)")
    if not (root / system).is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "wmt-testset")
        what = "is a file, not a system folder" if (root / system).exists() else "no such system"
        raise FileNotFoundError(f"{root / system}: {what} (available: {', '.join(known)})")
    out: dict[str, dict[str, str]] = {}
    for direction in directions or WMT22_DIRECTIONS:
        s, t = parse_direction(direction)
        pair, stem = f"{s}{t}", f"test.{s}-{t}"
        files = {
            "src": root / "wmt-testset" / pair / f"{stem}.{s}",
            "ref": root / "wmt-testset" / pair / f"{stem}.{t}",
            "hyp": root / system / pair / f"{stem}.{t}",
        }
        for key, path in files.items():
            if path.is_dir():
                raise IsADirectoryError(f"{path}: is a directory, not the {key} file of direction {direction} "
                                        f"of {system}")
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing {key} file for direction {direction} of {system}")
        out[direction] = {k: str(v) for k, v in files.items()}
    return out
