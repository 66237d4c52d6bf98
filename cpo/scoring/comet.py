"""Any unbabel-comet model (COMET, CometKiwi, XCOMET) as a :class:`Scorer`, by hub name or local checkpoint.

A hub name resolves the way ``comet.download_model`` resolves it: ``huggingface_hub.snapshot_download``
into the Hugging Face cache, ``<cache>/models--<owner>--<name>/snapshots/<commit>/checkpoints/model.ckpt``.
The snapshot folder's name is the commit of the hub revision, and it is part of the scorer's
identity: a model updated on the hub gets new cache entries instead of reusing the old scores.
"""
from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from cpo.io import Unavailable
from cpo.scoring.base import Scorer

log = logging.getLogger(__name__)

_COMMIT = re.compile(r"[0-9a-f]{40}")


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

    A hub name (``owner/name``) is looked up in the local Hugging Face cache first and downloaded
    only when it is not there; a local path (a ``.ckpt`` file or a folder holding
    ``checkpoints/model.ckpt``) is used as is. From there on both are the same: ``hparams.yaml``
    says whether the model needs or can use a reference, and the weights are loaded only on the
    first ``score`` call (so a fully cached run never loads them).

    Identity: ``comet<version>:<model>@<commit>:<ref|noref>`` for a hub model (the commit of the
    snapshot in use, so a changed hub model never reuses old cached scores), and the checkpoint's
    content fingerprint for a local one. Knowing the commit needs the snapshot in the local cache,
    or ``revision`` given as a full 40-character commit hash.

    Args:
        model: hub name (``Unbabel/wmt22-cometkiwi-da``) or local checkpoint path.
        batch_size: inference batch size.
        gpus: number of GPUs; ``None`` means 1 if CUDA is available, else 0.
        use_reference: ``None`` = use references when given and the model can; ``False`` =
            never (the paper scores XCOMET reference-free); ``True`` = always, so references
            become required.
        progress: show COMET's progress bar (``predict(progress_bar=...)``).
        name: metric name; defaults to the model's last path component.
        revision: hub revision (branch, tag or commit); ``None`` = the cache's ``main``.
        hub_cache_dir: Hugging Face cache folder; ``None`` = the default (``HF_HUB_CACHE``).
    """

    def __init__(
        self,
        model: str,
        batch_size: int = 16,
        gpus: int | None = None,
        use_reference: bool | None = None,
        progress: bool = True,
        name: str | None = None,
        revision: str | None = None,
        hub_cache_dir: str | None = None,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"CometScorer: model must be a hub name or a checkpoint path, got {model!r}")
        self.model = model
        self.batch_size = int(batch_size)
        self._gpus = gpus
        self.use_reference = use_reference
        self.progress = progress
        self.name = name or _default_name(model)
        self.revision = revision
        self.hub_cache_dir = hub_cache_dir
        self._model = None  # loaded lazily
        self.n_model_calls = 0  # how many times the network ran (tests, cache accounting)
        local = Path(model).expanduser()
        self._local = local.exists() or _looks_like_path(model)
        if self._local and not local.exists():
            raise FileNotFoundError(f"COMET checkpoint not found: {local}")
        if self._local and revision is not None:
            raise ValueError(
                f"CometScorer {self.name!r}: revision= applies to hub names, not to the local path {model}"
            )

    # -- resolution ---------------------------------------------------------------------
    def _unavailable(self, e: Exception) -> Unavailable:
        rev = f" at revision {self.revision}" if self.revision else ""
        why = str(e).splitlines()[0] if str(e) else ""
        return Unavailable(
            f"COMET model {self.model!r}{rev} is not in the local Hugging Face cache and could not be downloaded "
            f"({why if isinstance(e, Unavailable) else f'{type(e).__name__}: {why}'}); download it where the hub is "
            "reachable, or pass a local checkpoint path instead (a .ckpt file or a folder with "
            "checkpoints/model.ckpt and hparams.yaml)"
        )

    @cached_property
    def _snapshot(self) -> Path | None:
        """The hub snapshot folder (named by its commit), or None for a local or legacy (owner-less) name."""
        if self._local or "/" not in self.model:
            return None
        from huggingface_hub import snapshot_download

        kwargs = dict(repo_id=self.model, revision=self.revision, cache_dir=self.hub_cache_dir)
        try:
            return Path(snapshot_download(**kwargs, local_files_only=True))  # already cached?
        except Exception:  # noqa: BLE001 - any failure here means "not cached": try the hub
            pass
        from cpo.hub import hub_problem

        if hub_problem():  # no minute of retries against a hub that cannot answer
            raise self._unavailable(Unavailable(hub_problem()))
        try:
            return Path(snapshot_download(**kwargs))
        except Exception as e:  # noqa: BLE001 - offline, unknown repo, ...: one sentence
            raise self._unavailable(e) from e

    @cached_property
    def checkpoint_path(self) -> Path:
        """Local ``.ckpt`` path, downloading a hub model first if needed."""
        if self._local:
            return _checkpoint_in(Path(self.model).expanduser().resolve())
        if self._snapshot is not None:
            ckpt = self._snapshot / "checkpoints" / "model.ckpt"
            if not ckpt.is_file():
                raise Unavailable(f"COMET model {self.model!r}: the snapshot {self._snapshot} has no "
                                  "checkpoints/model.ckpt; download the model again")
            return ckpt
        from comet import download_model  # an owner-less legacy name (e.g. wmt20-comet-da)

        try:
            return Path(download_model(self.model, saving_directory=self.hub_cache_dir))
        except Exception as e:  # noqa: BLE001
            raise self._unavailable(e) from e

    @property
    def hub_revision(self) -> str | None:
        """The commit of the hub snapshot this scorer uses; None for a local checkpoint."""
        if self._local or "/" not in self.model:
            return None
        if self.revision and _COMMIT.fullmatch(self.revision):
            return self.revision  # known without the snapshot
        return self._snapshot.name

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
        """``comet<version>:<where>:<ref|noref>`` (see the class docstring).

        The comet version is part of it because library fixes have changed scores of the same
        checkpoint before (the 2.2.4 sparsemax change).
        """
        ref_mode = "ref" if self.uses_reference else "noref"
        if self._local:
            where = f"local:{self.name}#{_fingerprint(self.checkpoint_path)}"
        elif "/" in self.model:
            where = f"{self.model}@{self.hub_revision}"
        else:
            where = f"{self.model}#{_fingerprint(self.checkpoint_path)}"
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
            try:
                self._model = load_from_checkpoint(str(self.checkpoint_path))
            except Exception as e:  # noqa: BLE001 - a truncated or foreign file: one sentence, not a traceback
                raise Unavailable(
                    f"COMET checkpoint {self.checkpoint_path} cannot be loaded ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); check the file, or download the model again"
                ) from e
        return self._model

    def _score(self, sources, hypotheses, references, tgt_lang):
        model = self._load()
        if references is None:
            samples = [{"src": s, "mt": h} for s, h in zip(sources, hypotheses)]
        else:
            samples = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hypotheses, references)]
        self.n_model_calls += 1
        from cpo.console import interactive

        # COMET's bar is a terminal's; in a log file it would be a line of carriage returns (the cache's
        # progress lines stand in for it there).
        out = model.predict(samples, batch_size=self.batch_size, gpus=self.gpus,
                            progress_bar=self.progress and interactive())
        return list(out.scores)
