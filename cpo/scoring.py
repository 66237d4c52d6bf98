"""One interface for every segment-level translation scorer (SPEC sections 2 and 6).

Preference data needs a score per candidate translation, and which model gives it is
configuration, not code: CometKiwi, XCOMET, their mean (the paper's choice), a reference-based
COMET, sentence BLEU/chrF, or the embedded demo's estimator. They all answer
``score(sources, hypotheses, references=None, tgt_lang=None) -> list[float]``.

Scoring XXL models is the expensive step of building preference data, so ``CachedScorer``
keeps every score on disk, keyed by the scorer's identity and the exact texts: re-running
costs nothing and an interrupted build resumes where it stopped.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from cpo.languages import sacrebleu_tokenizer

log = logging.getLogger(__name__)

__all__ = [
    "Scorer",
    "CometScorer",
    "SentenceBleuScorer",
    "SentenceChrfScorer",
    "DemoQEScorer",
    "MeanScorer",
    "CachedScorer",
    "build_scorer",
    "load_scorer_preset",
    "SCORER_PRESET_DIR",
]

#: Folder of the named scorer configs (``conf/scorer/<name>.yaml``).
SCORER_PRESET_DIR = Path(__file__).resolve().parents[1] / "conf" / "scorer"


# --------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------
class Scorer(ABC):
    """A segment-level scorer: one float per (source, hypothesis[, reference]) item.

    Attributes:
        name: short label used as a metric / column name (``kiwi``, ``xcomet``, ``chrf``).
        identity: model and version; two scorers with the same identity give the same scores,
            which is what makes the on-disk cache and provenance records safe.
        requires_reference: scoring without references is an error.
        uses_reference: references are used when given (and so are part of the cache key).
        uses_tgt_lang: the score depends on ``tgt_lang`` (e.g. the BLEU tokenizer).
    """

    name: str
    requires_reference: bool = False
    uses_reference: bool = False
    uses_tgt_lang: bool = False

    @property
    @abstractmethod
    def identity(self) -> str:
        """Model + version string (see class docstring)."""

    def score(
        self,
        sources: Sequence[str],
        hypotheses: Sequence[str],
        references: Sequence[str] | None = None,
        tgt_lang: str | None = None,
    ) -> list[float]:
        """Score each hypothesis; validates inputs, then defers to ``_score``.

        References are dropped before ``_score`` when the scorer does not use them, so a
        reference-free model really is evaluated reference-free.
        """
        sources, hypotheses, references = self.check_inputs(sources, hypotheses, references)
        if not self.uses_reference:
            references = None
        if not hypotheses:
            return []
        scores = self._score(sources, hypotheses, references, tgt_lang)
        if len(scores) != len(hypotheses):
            raise RuntimeError(
                f"scorer {self.name!r} returned {len(scores)} scores for {len(hypotheses)} hypotheses"
            )
        return [float(s) for s in scores]

    def score_components(
        self,
        sources: Sequence[str],
        hypotheses: Sequence[str],
        references: Sequence[str] | None = None,
        tgt_lang: str | None = None,
    ) -> dict[str, list[float]]:
        """Scores by name: ``{self.name: scores}``; composites add their members' scores.

        Preference records keep every score that led to a choice (SPEC section 2), not only
        the final one.
        """
        return {self.name: self.score(sources, hypotheses, references, tgt_lang)}

    @abstractmethod
    def _score(
        self,
        sources: list[str],
        hypotheses: list[str],
        references: list[str] | None,
        tgt_lang: str | None,
    ) -> list[float]:
        """Score validated, non-empty inputs."""

    def check_inputs(
        self,
        sources: Sequence[str],
        hypotheses: Sequence[str],
        references: Sequence[str] | None,
    ) -> tuple[list[str], list[str], list[str] | None]:
        """Same lengths, strings only, references present when required."""
        sources, hypotheses = list(sources), list(hypotheses)
        refs = None if references is None else list(references)
        if len(sources) != len(hypotheses):
            raise ValueError(
                f"scorer {self.name!r}: {len(sources)} sources but {len(hypotheses)} hypotheses"
            )
        if refs is not None and len(refs) != len(hypotheses):
            raise ValueError(
                f"scorer {self.name!r}: {len(refs)} references but {len(hypotheses)} hypotheses"
            )
        if refs is None and self.requires_reference:
            raise ValueError(
                f"scorer {self.name!r} ({self.identity}) needs references, but none were given; "
                "pass references or use a reference-free scorer (e.g. kiwi, xcomet without reference)"
            )
        for field, texts in (("source", sources), ("hypothesis", hypotheses), ("reference", refs or [])):
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise TypeError(
                        f"scorer {self.name!r}: {field} {i} is {type(t).__name__}, expected str"
                    )
        return sources, hypotheses, refs

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, identity={self.identity!r})"


# --------------------------------------------------------------------------------------
# COMET
# --------------------------------------------------------------------------------------
def _comet_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("unbabel-comet")
    except PackageNotFoundError:  # pragma: no cover - comet is a dependency
        return "unknown"


def _looks_like_path(model: str) -> bool:
    """A hub name is ``owner/name``; anything else path-like is treated as a local path."""
    return (
        model.endswith(".ckpt")
        or model.startswith(("/", ".", "~"))
        or model.count("/") > 1
        or "\\" in model
    )


def _checkpoint_in(path: Path) -> Path:
    """The ``.ckpt`` file a local path denotes: the file itself or ``<dir>/checkpoints/model.ckpt``."""
    if path.is_file():
        return path
    candidate = path / "checkpoints" / "model.ckpt"
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(
        f"COMET checkpoint not found: {path} is a folder without checkpoints/model.ckpt"
    )


def _fingerprint(ckpt: Path) -> str:
    """Cheap content fingerprint of a checkpoint: size, hparams.yaml and the file's last MiB.

    A ``.ckpt`` is a zip whose central directory (at the end) lists every member's CRC32, so
    the tail identifies the content without reading gigabytes; a moved copy keeps its cache.
    """
    h = hashlib.sha256()
    size = ckpt.stat().st_size
    h.update(str(size).encode())
    with open(ckpt, "rb") as f:
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read())
    hparams = ckpt.parents[1] / "hparams.yaml"
    if hparams.is_file():
        h.update(hparams.read_bytes())
    return h.hexdigest()[:16]


def _reference_modes(hparams: Mapping[str, Any]) -> tuple[bool, bool]:
    """(requires_reference, can_use_reference) of a COMET model, from its hparams.

    RegressionMetric/RankingMetric (wmt22-comet-da) need a reference; ReferencelessRegression
    never uses one; a UnifiedMetric uses a reference iff ``ref`` is one of its input segments
    (CometKiwi: ``[mt, src]``) and needs one only when it has no source (``[mt, ref]``);
    XCOMET always has all three segments and runs with or without a reference.
    """
    kind = hparams.get("class_identifier")
    if kind in ("regression_metric", "ranking_metric"):
        return True, True
    if kind == "referenceless_regression_metric":
        return False, False
    if kind == "xcomet_metric":
        return False, True
    if kind == "unified_metric":
        segments = list(hparams.get("input_segments") or ["mt", "src", "ref"])
        return "src" not in segments, "ref" in segments
    raise ValueError(f"unknown COMET model class {kind!r} in hparams.yaml")


def _default_name(model: str) -> str:
    """``Unbabel/wmt22-cometkiwi-da`` -> ``wmt22-cometkiwi-da``; ``x/checkpoints/model.ckpt`` -> ``x``."""
    path = Path(model.rstrip("/"))
    if path.suffix == ".ckpt" and path.parent.name == "checkpoints":
        return path.parents[1].name or path.stem
    return path.name.removesuffix(".ckpt") or model


class CometScorer(Scorer):
    """Any unbabel-comet model, by hub name or local checkpoint, on one code path.

    A hub name is downloaded with ``comet.download_model`` into a local checkpoint path; a
    local path (a ``.ckpt`` file or a folder holding ``checkpoints/model.ckpt``) is used as
    is. From there on both are the same: ``hparams.yaml`` says whether the model needs or
    can use a reference, and the weights are loaded only on the first ``score`` call (so a
    fully cached run never loads them).

    Args:
        model: hub name (``Unbabel/wmt22-cometkiwi-da``) or local checkpoint path.
        batch_size: inference batch size.
        gpus: number of GPUs; ``None`` means 1 if CUDA is available, else 0.
        use_reference: ``None`` = use references when given and the model can; ``False`` =
            never (the paper scores XCOMET reference-free); ``True`` = always, so references
            become required.
        progress: show COMET's progress bar.
        name: metric name; defaults to the model's last path component.
    """

    def __init__(
        self,
        model: str,
        batch_size: int = 16,
        gpus: int | None = None,
        use_reference: bool | None = None,
        progress: bool = True,
        name: str | None = None,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"CometScorer: model must be a hub name or a checkpoint path, got {model!r}")
        self.model = model
        self.batch_size = int(batch_size)
        self._gpus = gpus
        self.use_reference = use_reference
        self.progress = progress
        self.name = name or _default_name(model)
        self._model = None  # loaded lazily
        self.n_model_calls = 0  # how many times the network ran (tests, cache accounting)
        local = Path(model).expanduser()
        self._local = local.exists() or _looks_like_path(model)
        if self._local and not local.exists():
            raise FileNotFoundError(f"COMET checkpoint not found: {local}")

    # -- resolution ---------------------------------------------------------------------
    @cached_property
    def checkpoint_path(self) -> Path:
        """Local ``.ckpt`` path, downloading a hub model first if needed."""
        if self._local:
            return _checkpoint_in(Path(self.model).expanduser().resolve())
        from comet import download_model

        try:
            return Path(download_model(self.model, local_files_only=True))  # already cached?
        except Exception:
            pass
        try:
            return Path(download_model(self.model))
        except Exception as e:
            raise RuntimeError(
                f"COMET model {self.model!r} is not available offline and could not be "
                f"downloaded ({type(e).__name__}: {e}); pass a local checkpoint path instead "
                "(a .ckpt file or a folder with checkpoints/model.ckpt and hparams.yaml)"
            ) from e

    @cached_property
    def _hparams(self) -> dict[str, Any]:
        import yaml

        file = self.checkpoint_path.parents[1] / "hparams.yaml"
        if not file.is_file():
            raise FileNotFoundError(
                f"COMET checkpoint {self.checkpoint_path}: {file} is missing (COMET reads the "
                "model class from it)"
            )
        with open(file, encoding="utf-8") as f:
            return yaml.load(f, Loader=yaml.FullLoader) or {}

    @cached_property
    def _model_modes(self) -> tuple[bool, bool]:
        """(requires_reference, can_use_reference) of the model, checked against the config."""
        requires, can_use = _reference_modes(self._hparams)
        if self.use_reference is False and requires:
            raise ValueError(
                f"COMET model {self.model!r} needs a reference; use_reference=false is impossible"
            )
        if self.use_reference is True and not can_use:
            raise ValueError(
                f"COMET model {self.model!r} is reference-free; use_reference=true is impossible"
            )
        return requires, can_use

    @property
    def requires_reference(self) -> bool:  # type: ignore[override]
        # An explicit use_reference answers without resolving (downloading) the model; it is
        # checked against the model when the model is loaded.
        if self.use_reference is not None:
            return self.use_reference
        return self._model_modes[0]

    @property
    def uses_reference(self) -> bool:  # type: ignore[override]
        if self.use_reference is not None:
            return self.use_reference
        return self._model_modes[1]

    @cached_property
    def identity(self) -> str:
        """``comet<version>:<model>:<ref|noref>``; local checkpoints by content fingerprint.

        The comet version is part of it because library fixes have changed scores of the same
        checkpoint before (the 2.2.4 sparsemax change).
        """
        if self._local:
            ref_mode = "ref" if self.uses_reference else "noref"
            where = f"local:{self.name}#{_fingerprint(self.checkpoint_path)}"
        else:
            # Known without downloading, so a fully cached run needs no network.
            ref_mode = {True: "ref", False: "noref", None: "auto"}[self.use_reference]
            where = self.model
        return f"comet{_comet_version()}:{where}:{ref_mode}"

    @property
    def gpus(self) -> int:
        if self._gpus is not None:
            return int(self._gpus)
        import torch

        return 1 if torch.cuda.is_available() else 0

    # -- scoring ------------------------------------------------------------------------
    def _load(self):
        if self._model is None:
            from comet import load_from_checkpoint

            self._model_modes  # noqa: B018 - refuse a use_reference the model cannot honour
            log.info("loading COMET model %s from %s", self.model, self.checkpoint_path)
            self._model = load_from_checkpoint(str(self.checkpoint_path))
        return self._model

    def _score(self, sources, hypotheses, references, tgt_lang):
        model = self._load()
        if references is None:
            samples = [{"src": s, "mt": h} for s, h in zip(sources, hypotheses)]
        else:
            samples = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hypotheses, references)]
        self.n_model_calls += 1
        out = model.predict(samples, batch_size=self.batch_size, gpus=self.gpus, progress_bar=self.progress)
        return list(out.scores)


# --------------------------------------------------------------------------------------
# sacrebleu sentence scores
# --------------------------------------------------------------------------------------
def _sacrebleu_version() -> str:
    import sacrebleu

    return sacrebleu.__version__


class SentenceBleuScorer(Scorer):
    """sacrebleu sentence BLEU (exp smoothing, effective order, as ``sacrebleu.sentence_bleu``).

    With ``tokenize=None`` the tokenizer follows the target language (``zh`` for Chinese,
    ``ja-mecab`` for Japanese, ``13a`` otherwise), so ``tgt_lang`` is then required.
    """

    name = "sentence_bleu"
    requires_reference = True
    uses_reference = True

    def __init__(self, tokenize: str | None = None, name: str = "sentence_bleu") -> None:
        self.tokenize = tokenize
        self.name = name
        self.uses_tgt_lang = tokenize is None
        self._metrics: dict[str, Any] = {}

    @property
    def identity(self) -> str:
        return f"sacrebleu{_sacrebleu_version()}:sentence_bleu:tok={self.tokenize or 'by-tgt-lang'}"

    def _metric(self, tokenize: str):
        if tokenize not in self._metrics:  # building a tokenizer (mecab) is not free
            from sacrebleu.metrics import BLEU

            self._metrics[tokenize] = BLEU(tokenize=tokenize, effective_order=True)
        return self._metrics[tokenize]

    def _score(self, sources, hypotheses, references, tgt_lang):
        if self.tokenize is None and not tgt_lang:
            raise ValueError(
                f"scorer {self.name!r}: tgt_lang is needed to choose the BLEU tokenizer "
                "(or configure tokenize: 13a|zh|ja-mecab|...)"
            )
        bleu = self._metric(self.tokenize or sacrebleu_tokenizer(tgt_lang))
        return [bleu.sentence_score(h, [r]).score for h, r in zip(hypotheses, references)]


class SentenceChrfScorer(Scorer):
    """sacrebleu sentence chrF (character 6-grams, beta 2, as ``sacrebleu.sentence_chrf``)."""

    requires_reference = True
    uses_reference = True

    def __init__(self, name: str = "sentence_chrf") -> None:
        self.name = name
        self._metric = None

    @property
    def identity(self) -> str:
        return f"sacrebleu{_sacrebleu_version()}:sentence_chrf"

    def _score(self, sources, hypotheses, references, tgt_lang):
        if self._metric is None:
            from sacrebleu.metrics import CHRF

            self._metric = CHRF()
        return [self._metric.sentence_score(h, [r]).score for h, r in zip(hypotheses, references)]


# --------------------------------------------------------------------------------------
# Demo estimator
# --------------------------------------------------------------------------------------
class DemoQEScorer(Scorer):
    """The embedded demo's reference-free quality estimator (``cpo.demo.quality``).

    Imported lazily so that the scoring module does not depend on the demo package.
    """

    requires_reference = False
    uses_reference = False

    def __init__(self, name: str = "demo_qe") -> None:
        self.name = name
        self._estimator = None

    @property
    def estimator(self):
        if self._estimator is None:
            from cpo.demo.quality import DemoQualityEstimator

            self._estimator = DemoQualityEstimator()
        return self._estimator

    @property
    def identity(self) -> str:
        return str(getattr(self.estimator, "identity", "demo_qe"))

    def _score(self, sources, hypotheses, references, tgt_lang):
        return list(self.estimator.score(sources, hypotheses))


# --------------------------------------------------------------------------------------
# Composite and cache
# --------------------------------------------------------------------------------------
class MeanScorer(Scorer):
    """Weighted mean of several scorers: the paper's KIWI-XXL + XCOMET average (SPEC section 2).

    Each member receives references only if it uses them, so a reference-free mean stays
    reference-free. ``weights`` default to equal; they are normalised to sum to 1.
    """

    def __init__(
        self, scorers: Sequence[Scorer], weights: Sequence[float] | None = None, name: str = "mean"
    ) -> None:
        self.scorers = list(scorers)
        if not self.scorers:
            raise ValueError(f"MeanScorer {name!r}: needs at least one scorer")
        for i, s in enumerate(self.scorers):
            if not isinstance(s, Scorer):
                raise TypeError(f"MeanScorer {name!r}: member {i} is {type(s).__name__}, not a Scorer")
        names = [s.name for s in self.scorers]
        if len(set(names)) != len(names) or name in names:
            raise ValueError(f"MeanScorer {name!r}: member names must be unique and differ from it, got {names}")
        w = [1.0] * len(self.scorers) if weights is None else [float(x) for x in weights]
        if len(w) != len(self.scorers):
            raise ValueError(f"MeanScorer {name!r}: {len(w)} weights for {len(self.scorers)} scorers")
        if any(x < 0 or not math.isfinite(x) for x in w) or sum(w) <= 0:
            raise ValueError(f"MeanScorer {name!r}: weights must be finite, non-negative, not all zero: {w}")
        self.weights = [x / sum(w) for x in w]
        self.name = name

    @property
    def requires_reference(self) -> bool:  # type: ignore[override]
        return any(s.requires_reference for s in self.scorers)

    @property
    def uses_reference(self) -> bool:  # type: ignore[override]
        return any(s.uses_reference for s in self.scorers)

    @property
    def uses_tgt_lang(self) -> bool:  # type: ignore[override]
        return any(s.uses_tgt_lang for s in self.scorers)

    @property
    def identity(self) -> str:
        parts = ",".join(f"{w:.6g}*{s.identity}" for w, s in zip(self.weights, self.scorers))
        return f"mean({parts})"

    def _combine(self, member_scores: list[list[float]]) -> list[float]:
        return [sum(w * x for w, x in zip(self.weights, col)) for col in zip(*member_scores)]

    def _score(self, sources, hypotheses, references, tgt_lang):
        return self._combine([s.score(sources, hypotheses, references, tgt_lang) for s in self.scorers])

    def score_components(self, sources, hypotheses, references=None, tgt_lang=None):
        """Each member's scores by name, plus the mean under ``self.name``."""
        sources, hypotheses, references = self.check_inputs(sources, hypotheses, references)
        out = {s.name: s.score(sources, hypotheses, references, tgt_lang) for s in self.scorers}
        out[self.name] = self._combine(list(out.values())) if hypotheses else []
        return out


def _safe_filename(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60] or "scorer"


class CachedScorer(Scorer):
    """On-disk cache around a scorer: only texts never scored before reach the model.

    One append-only JSONL file per scorer identity (``<name>-<sha256(identity)[:16]>.jsonl``),
    a header line naming the identity, then ``{"k": key, "s": score}`` lines. The key is the
    sha256 of the exact source, hypothesis, reference (only if the scorer uses references)
    and target language (only if the scorer depends on it). Misses are scored in chunks of
    ``chunk_size`` and each chunk is appended and fsync'ed before the next, so a killed build
    loses at most one chunk; a truncated last line is ignored on load and cut off before the
    next append. Appends hold an exclusive ``flock`` so concurrent writers do not interleave.
    """

    def __init__(self, scorer: Scorer, cache_dir: str | os.PathLike, chunk_size: int = 512, progress: bool = True) -> None:
        if isinstance(scorer, CachedScorer):
            raise TypeError("CachedScorer: the scorer is already cached")
        if chunk_size < 1:
            raise ValueError(f"CachedScorer: chunk_size must be >= 1, got {chunk_size}")
        self.scorer = scorer
        self.cache_dir = Path(cache_dir)
        self.chunk_size = int(chunk_size)
        self.progress = progress
        self._table: dict[str, float] | None = None
        self.hits = 0
        self.misses = 0

    # The wrapped scorer's nature, unchanged.
    @property
    def name(self) -> str:  # type: ignore[override]
        return self.scorer.name

    @property
    def identity(self) -> str:
        return self.scorer.identity

    @property
    def requires_reference(self) -> bool:  # type: ignore[override]
        return self.scorer.requires_reference

    @property
    def uses_reference(self) -> bool:  # type: ignore[override]
        return self.scorer.uses_reference

    @property
    def uses_tgt_lang(self) -> bool:  # type: ignore[override]
        return self.scorer.uses_tgt_lang

    @property
    def path(self) -> Path:
        digest = hashlib.sha256(self.identity.encode("utf-8")).hexdigest()[:16]
        return self.cache_dir / f"{_safe_filename(self.name)}-{digest}.jsonl"

    def key(self, source: str, hypothesis: str, reference: str | None, tgt_lang: str | None) -> str:
        """sha256 of the texts that can change the score (JSON-encoded, so no separator clashes)."""
        ref = reference if self.uses_reference else None
        lang = tgt_lang if self.uses_tgt_lang else None
        payload = json.dumps([source, hypothesis, ref, lang], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    # -- file ---------------------------------------------------------------------------
    def _load(self) -> dict[str, float]:
        if self._table is not None:
            return self._table
        table: dict[str, float] = {}
        path = self.path
        if path.is_file():
            data = path.read_bytes()
            lines = data.split(b"\n")
            # The last element is b"" after a final newline, else a line cut by a kill: ignore it.
            for i, raw in enumerate(lines[:-1], 1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    log.warning("%s:%d: unreadable cache line skipped", path, i)
                    continue
                if "identity" in row:
                    if row["identity"] != self.identity:
                        raise ValueError(
                            f"{path}:{i}: cache belongs to {row['identity']!r}, not {self.identity!r}"
                        )
                    continue
                try:
                    table[str(row["k"])] = float(row["s"])
                except (KeyError, TypeError, ValueError):
                    log.warning("%s:%d: malformed cache entry skipped", path, i)
        self._table = table
        return table

    @staticmethod
    def _cut_partial_line(f) -> None:
        """Drop a last line without newline (a write cut by a kill) so appends start clean."""
        size = f.seek(0, os.SEEK_END)
        if not size:
            return
        window = min(size, 1 << 16)
        f.seek(size - window)
        tail = f.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        if cut >= 0:
            f.truncate(size - window + cut + 1)
        elif window == size:
            f.truncate(0)  # the whole file is one partial line
        else:
            f.write(b"\n")  # a partial line longer than the window: end it; load skips it

    def _append(self, rows: list[tuple[str, float]]) -> None:
        """Append one chunk durably; cut a partial last line left by an earlier kill first."""
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                self._cut_partial_line(f)
                if f.seek(0, os.SEEK_END) == 0:
                    f.write((json.dumps({"identity": self.identity}, ensure_ascii=False) + "\n").encode())
                f.write("".join(json.dumps({"k": k, "s": s}) + "\n" for k, s in rows).encode())
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # -- scoring ------------------------------------------------------------------------
    def _score(self, sources, hypotheses, references, tgt_lang):
        table = self._load()
        refs = references if references is not None else [None] * len(hypotheses)
        keys = [self.key(s, h, r, tgt_lang) for s, h, r in zip(sources, hypotheses, refs)]
        todo: dict[str, int] = {}  # key -> first index needing it (duplicates scored once)
        for i, k in enumerate(keys):
            if k not in table and k not in todo:
                todo[k] = i
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        if todo:
            self._fill(table, list(todo.items()), sources, hypotheses, references, tgt_lang)
        return [table[k] for k in keys]

    def _fill(self, table, todo, sources, hypotheses, references, tgt_lang) -> None:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"scoring {self.name}", unit="seg", disable=not self.progress)
        try:
            for start in range(0, len(todo), self.chunk_size):
                chunk = todo[start : start + self.chunk_size]
                idx = [i for _, i in chunk]
                scores = self.scorer.score(
                    [sources[i] for i in idx],
                    [hypotheses[i] for i in idx],
                    None if references is None else [references[i] for i in idx],
                    tgt_lang,
                )
                rows = [(k, s) for (k, _), s in zip(chunk, scores)]
                self._append(rows)
                table.update(rows)
                bar.update(len(chunk))
        finally:
            bar.close()


# --------------------------------------------------------------------------------------
# Construction from configuration
# --------------------------------------------------------------------------------------
def load_scorer_preset(name: str) -> dict[str, Any]:
    """The config of a named preset (``conf/scorer/<name>.yaml``) or of a YAML file path."""
    from omegaconf import OmegaConf

    path = Path(name).expanduser()
    if path.suffix not in (".yaml", ".yml"):
        path = SCORER_PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SCORER_PRESET_DIR.glob("*.yaml"))
        raise ValueError(f"unknown scorer {name!r}: no file {path} (known presets: {', '.join(known)})")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a scorer config must be a mapping, got {type(cfg).__name__}")
    return cfg


def _resolve_presets(cfg: Any, where: str) -> dict[str, Any]:
    """Replace preset names (top level and inside ``scorers`` lists) by their configs."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, str):
        cfg = load_scorer_preset(cfg)
    if not isinstance(cfg, dict):
        raise ValueError(f"{where}: a scorer config must be a mapping or a preset name, got {cfg!r}")
    cfg = dict(cfg)
    if "_target_" not in cfg:
        raise ValueError(f"{where}: scorer config has no _target_ (keys: {sorted(cfg)})")
    if isinstance(cfg.get("scorers"), list):
        cfg["scorers"] = [_resolve_presets(c, f"{where}.scorers[{i}]") for i, c in enumerate(cfg["scorers"])]
    return cfg


def _instantiate(cfg: dict[str, Any], where: str) -> Scorer:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = cfg["_target_"]
    try:
        scorer = instantiate(cfg, _convert_="all")
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, (OSError, ValueError, RuntimeError, TypeError)):
            raise cause from None  # the constructor's own message names the file or field
        raise ValueError(f"{where}: cannot build scorer _target_={target!r}: {e}") from e
    if not isinstance(scorer, Scorer):
        raise TypeError(f"{where}: _target_={target!r} built a {type(scorer).__name__}, not a cpo.scoring.Scorer")
    return scorer


def build_scorer(cfg: Any, cache_dir: str | os.PathLike | None = None, where: str = "scorer") -> Scorer:
    """Build a scorer from a config (dict/DictConfig with ``_target_``) or a preset name.

    ``cache_dir`` (argument, or a ``cache_dir`` key of the config) wraps the result in a
    ``CachedScorer``; for a ``MeanScorer`` each member is cached instead, so a member's scores
    are shared with every other mean or run that uses the same model.
    """
    cfg = _resolve_presets(cfg, where)
    cfg_cache_dir = cfg.pop("cache_dir", None)
    cache_dir = cache_dir if cache_dir is not None else cfg_cache_dir
    scorer = _instantiate(cfg, where)
    if cache_dir is None:
        return scorer
    if isinstance(scorer, MeanScorer):
        scorer.scorers = [s if isinstance(s, CachedScorer) else CachedScorer(s, cache_dir) for s in scorer.scorers]
        return scorer
    return CachedScorer(scorer, cache_dir)
