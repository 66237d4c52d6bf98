"""What a rounds run (``scripts/rounds.py``, ``cpo.rounds``) draws its data from: ``conf/inputs/*``.

Each round samples candidates from the current policy on *training sources*, builds pairs on them and on
the *validation sources*, trains, and evaluates on a *test* set; the validation translations are scored
against a *dev* set. *Offline systems* (fixed candidate outputs aligned with the training and validation
sources, the paper's triple) can join the samples or replace them (the offline baseline). A source of
these is a class with ``load(cache_dir) -> RoundInputs`` named by ``_target_``: files (``FileRoundInputs``)
or the embedded demo (``cpo.demo.rounds.DemoRoundInputs``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cpo.errors import ConfigError
from cpo.io import check_readable_file


@dataclass
class RoundInputs:
    train: str                     # parallel JSONL (source, reference?, src_lang, tgt_lang): the rounds' sources
    val: str                       # parallel JSONL: the validation sources (validation pairs of every round)
    test: str | None = None        # test JSONL (source, reference, src_lang, tgt_lang): the before/after table
    dev: str | None = None         # test-format JSONL translated at every validation (None: val's references)
    systems: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {"train": file, "val": file}
    start_model: str | None = None  # the model round 1 starts from (None: the config's start_model)
    label: str = "files"

    def files(self) -> dict[str, str]:
        """Every input file by a dotted name (fingerprinted by the stages that read them)."""
        out = {k: v for k, v in (("train", self.train), ("val", self.val), ("test", self.test), ("dev", self.dev))
               if v}
        for name, parts in self.systems.items():
            out.update({f"systems.{name}.{split}": path for split, path in parts.items()})
        return out


class RoundInputSource:
    """Base class: ``load`` returns the inputs (files it may build in ``cache_dir`` first)."""

    def load(self, cache_dir: str) -> RoundInputs:  # pragma: no cover - interface
        raise NotImplementedError


def _file(path: str | None, key: str, required: bool = True) -> str | None:
    if path in (None, "", "???"):
        if required:
            raise ConfigError(f"{key} is not set: give the file (see conf/inputs/files.yaml)")
        return None
    return str(check_readable_file(Path(str(path)).expanduser(), key).resolve())


class FileRoundInputs(RoundInputSource):
    """Inputs named by path (``inputs=files``); relative paths are taken from the launch directory."""

    def __init__(self, train: str, val: str, test: str | None = None, dev: str | None = None,
                 systems: dict | None = None, start_model: str | None = None):
        self.inputs = RoundInputs(
            _file(train, "inputs.train"), _file(val, "inputs.val"), _file(test, "inputs.test", False),
            _file(dev, "inputs.dev", False),
            {str(n): {split: _file(p, f"inputs.systems.{n}.{split}") for split, p in (parts or {}).items()}
             for n, parts in (systems or {}).items()},
            start_model, "files")
        for name, parts in self.inputs.systems.items():
            if set(parts) != {"train", "val"}:
                raise ConfigError(f"inputs.systems.{name}: give train and val (files aligned with inputs.train and "
                                  f"inputs.val), got {sorted(parts)}")

    def load(self, cache_dir: str) -> RoundInputs:
        return self.inputs
