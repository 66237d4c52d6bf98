"""Data sources: what ``conf/data/*`` builds and training consumes.

Each file of the ``data`` config group names a source class under ``data.source._target_``; the
training code calls :func:`build_source` and then ``source.load(...)``, never asking which file was
chosen. A source returns :class:`RunData`: training and validation preference examples, the
translation sets scored during and after training, and any local model it provides (the demo's
warm start). A new kind of data is a class here (or in its own package, as ``cpo.demo.source``)
and a YAML file.
"""
from __future__ import annotations

import hashlib
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from cpo.errors import ConfigError
from cpo.data.records import PreferenceExample, read_preference_jsonl
from cpo.io import DataError, iter_jsonl
from cpo.text import is_blank


@dataclass
class TestSet:
    """Sources and references of one direction. ``label`` says what the references are."""

    sources: list[str]
    references: list[str]
    src_lang: str
    tgt_lang: str
    label: str = "reference"

    def head(self, n: int) -> "TestSet":
        return TestSet(self.sources[:n], self.references[:n], self.src_lang, self.tgt_lang, self.label)


@dataclass
class RunData:
    train: list[PreferenceExample]
    val: list[PreferenceExample]
    test: TestSet | None = None  # translated before and after training (the before/after table)
    dev: TestSet | None = None  # translated at every validation (val/bleu, val/chrf, health, scorers)
    models: dict[str, str] = field(default_factory=dict)  # local models by name ("demo": the warm start)
    default_scorers: tuple[str, ...] = ()  # scorer presets when evaluate.scorers is null
    files: list[str] = field(default_factory=list)  # the files read, for the run's provenance
    # Decoding of the before/after translations when evaluate.num_beams / max_new_tokens are null: SPEC section 6.
    generation: dict = field(default_factory=lambda: {"num_beams": 5, "max_new_tokens": 256})


@dataclass
class LoadContext:
    cache_dir: str
    seed: int
    model: dict  # the model config (a source may build a model to match it, as the demo does)
    progress: Callable[[str], None] = print


class DataSource:
    """Base class; subclasses set ``name`` and implement :meth:`load`."""

    name = "data"

    def load(self, ctx: LoadContext) -> RunData:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        """The keys ``data.source`` may set: the constructor's named parameters (a source that takes
        ``**settings`` names its own), checked before anything loads (cpo.train.keys)."""
        params = inspect.signature(cls.__init__).parameters.values()
        return tuple(p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


def instantiate_node(node, key: str):
    """``node`` built by Hydra's ``instantiate``; a constructor's own error (a missing file, a bad value, naming its
    key) comes through as it is, not wrapped in Hydra's InstantiationException (a traceback in the apps)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as e:
        if isinstance(e.__cause__, (ConfigError, DataError, FileNotFoundError, ValueError)):
            raise e.__cause__ from None
        raise ConfigError(f"{key}: cannot build {node._target_}: {e}") from None


def build_source(data_cfg) -> DataSource:
    """Instantiate ``data.source``; a constructor's own error (naming its key) comes through as it is."""
    from omegaconf import OmegaConf

    node = data_cfg.get("source")
    if node is None or "_target_" not in node:
        raise ConfigError("data.source._target_ is not set: a data config must name its source class "
                          "(see conf/data/jsonl.yaml)")
    raw = OmegaConf.to_container(node, resolve=False)
    for key in node:
        if OmegaConf.is_missing(node, key) or (isinstance(raw[key], str) and _points_to_missing(data_cfg, raw[key])):
            where = raw[key][2:-1] if isinstance(raw[key], str) and raw[key].startswith("${") else f"data.source.{key}"
            raise ConfigError(f"{where} is not set: pass {where}=... (see the data config)")
    source = instantiate_node(node, "data.source")
    if not isinstance(source, DataSource):
        raise ConfigError(f"data.source._target_={node._target_} built a {type(source).__name__}, not a DataSource")
    return source


def _points_to_missing(data_cfg, value: str) -> bool:
    """``${data.x}`` where data.x is ``???``."""
    from omegaconf import OmegaConf

    if not (value.startswith("${data.") and value.endswith("}")):
        return False
    key = value[len("${data."):-1]
    return key in data_cfg.keys() and OmegaConf.is_missing(data_cfg, key)


def _existing_file(path: str | None, key: str) -> str | None:
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{key}: {path} is a directory, not a file")
    if not p.is_file():
        raise ConfigError(f"{key}: {path} does not exist")
    return str(p)


def split_examples(examples: list[PreferenceExample], val_size: int | float, seed: int) -> tuple[list, list]:
    """Deterministic held-out split by source sentence, so no source is in both sides."""
    import random

    sources = sorted({e.source for e in examples})
    random.Random(seed).shuffle(sources)
    n_val = int(round(val_size * len(sources))) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    if n_val >= len(sources):
        raise DataError(f"data.val_size={val_size} holds out {n_val} source sentence(s), but the data has only "
                        f"{len(sources)}: none would be left to train on; lower data.val_size (a fraction such as "
                        "0.05, or a count) or give data.val_file")
    val_sources = set(sources[:n_val])
    return [e for e in examples if e.source not in val_sources], [e for e in examples if e.source in val_sources]


def dev_set(val: Sequence[PreferenceExample], max_sentences: int | None = None) -> TestSet | None:
    """Translations to score at validation: the held-out sources of the first direction, against their
    human references when every one has one, else against the preferred translations (labelled so)."""
    # Rows with their own prompt text or chat messages are not translations of a source by the run's format.
    ex = [e for e in val if e.src_lang and e.tgt_lang and e.prompt is None and e.messages is None]
    if not ex:
        return None
    ex = [e for e in ex if (e.src_lang, e.tgt_lang) == (ex[0].src_lang, ex[0].tgt_lang)]
    seen: set[str] = set()
    ex = [e for e in ex if not (e.source in seen or seen.add(e.source))][:max_sentences]
    with_ref = all(e.reference for e in ex)
    refs = [e.reference if with_ref else e.chosen for e in ex]
    return TestSet([e.source for e in ex], refs, ex[0].src_lang, ex[0].tgt_lang,
                   "reference" if with_ref else "preferred")


def read_test_file(path: str) -> TestSet:
    """A JSONL test set of one direction: source, reference, src_lang, tgt_lang per line."""
    rows = [(f"{path}:{i}", r) for i, r in iter_jsonl(path)]
    if not rows:
        raise DataError(f"{path}: no rows")
    for where, r in rows:
        for key in ("source", "reference", "src_lang", "tgt_lang"):
            if not isinstance(r.get(key), str) or is_blank(r[key]):
                raise DataError(f"{where}: field {key!r} missing or empty")
    langs = {(r["src_lang"], r["tgt_lang"]) for _, r in rows}
    if len(langs) != 1:
        raise DataError(f"{path}: a test file must hold one direction, found {sorted(langs)}")
    (src, tgt) = langs.pop()
    return TestSet([r["source"] for _, r in rows], [r["reference"] for _, r in rows], src, tgt)


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (the data a run read, for its provenance)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class JsonlPreferences(DataSource):
    """The project's preference JSONL (``data=jsonl``), or TRL's prompt/chosen/rejected rows (standard or
    conversational)."""

    name = "jsonl"

    def __init__(self, train_file: str, val_file: str | None = None, val_size: float = 0.05,
                 test_file: str | None = None, dev_sentences: int | None = 200, dev_file: str | None = None):
        from omegaconf import MISSING

        if train_file in (None, MISSING, "???"):
            raise ConfigError("data=jsonl needs data.train_file=<path to preference JSONL>")
        self.train_file = _existing_file(train_file, "data.train_file")
        self.val_file = _existing_file(val_file, "data.val_file")
        self.test_file = _existing_file(test_file, "data.test_file")
        # The sources translated at every validation, with their references (test-file format); None: the
        # validation pairs' sources against their references (or preferred sides).
        self.dev_file = _existing_file(dev_file, "data.dev_file")
        self.val_size, self.dev_sentences = val_size, dev_sentences

    def load(self, ctx: LoadContext) -> RunData:
        train = read_preference_jsonl(self.train_file)
        if self.val_file:
            val = read_preference_jsonl(self.val_file)
        else:
            train, val = split_examples(train, self.val_size, ctx.seed)
        test = read_test_file(self.test_file) if self.test_file else None
        files = [f for f in (self.train_file, self.val_file, self.test_file, self.dev_file) if f]
        dev = read_test_file(self.dev_file).head(self.dev_sentences) if self.dev_file else dev_set(val,
                                                                                                   self.dev_sentences)
        return RunData(train, val, test, dev, files=files)


class AlmaRPreference(DataSource):
    """ALMA-R-Preference rows (``data=alma_r_preference``): a hub name or a local copy."""

    name = "alma_r_preference"

    def __init__(self, path: str, pairs: Sequence[str], scorer: str = "kiwi_xcomet", split: str = "train",
                 val_size: float = 0, test_file: str | None = None, dev_sentences: int | None = 200):
        if not pairs:
            raise ConfigError("data.pairs is empty")
        for p in pairs:
            if len(str(p).split("-")) != 2:
                raise ConfigError(f"data.pairs: {p!r} is not like 'de-en'")
        if scorer not in ("kiwi", "xcomet", "kiwi_xcomet"):
            raise ConfigError(f"data.scorer={scorer!r} is not one of kiwi, xcomet, kiwi_xcomet")
        self.path, self.pairs, self.scorer, self.split = path, list(pairs), scorer, split
        self.val_size, self.dev_sentences = val_size, dev_sentences
        self.test_file = _existing_file(test_file, "data.test_file")

    def load(self, ctx: LoadContext) -> RunData:
        from cpo.data.alma_r import read_alma_r_preference

        train = read_alma_r_preference(self.path, self.pairs, self.scorer, self.split)
        # ALMA-R trained on every pair; a held-out split is opt-in (data.val_size > 0).
        train, val = split_examples(train, self.val_size, ctx.seed) if self.val_size else (train, [])
        test = read_test_file(self.test_file) if self.test_file else None
        local = Path(self.path)
        files = (
            [str(f) for f in ([local] if local.is_file() else sorted(local.glob("*.json*")))] if local.exists() else []
        )
        return RunData(train, val, test, dev_set(val, self.dev_sentences),
                       files=files + ([self.test_file] if self.test_file else []))
