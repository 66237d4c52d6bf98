"""What every app (train.py, scripts/*.py) does with an expected error: one sentence, exit 2.

Wrap a Hydra task function with :func:`one_sentence_errors`, and start the app with :func:`run_app`.
An expected error (bad input, a wrong setting, an unavailable model, a path that is not what it should
be, and Hydra's own refusals of the command line: an unknown config option or key, a malformed
override) prints ``error: <message>`` on stderr and exits with status 2, without a traceback;
``CPO_DEBUG=1`` (or Hydra's ``HYDRA_FULL_ERROR=1``) shows the traceback as well. The environment's refusals
are expected errors too: a full disk, a read-only file system, a run folder that cannot be created. Anything
else is a bug and keeps its traceback.

The launch's record in its folder (Hydra's ``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml`` and the
log file ``<app>.log``) is written by :func:`accept_launch` once the app owns the folder, never by a launch
that is refused: every app's config sets ``hydra.output_subdir: null`` so that Hydra writes nothing before the
app runs. An app accepts a fresh (empty) folder at once and any other folder when it succeeds; ``train.py``
accepts its run folder when it has decided to train there (cpo.train.run), so a second writer, a run of
another configuration or an already finished one leaves the folder as it was.
"""
from __future__ import annotations

import errno
import functools
import os
import re
import sys
import traceback
from typing import Iterable
from pathlib import Path

from cpo.errors import ConfigError, ModelError
from cpo.io import DataError, Unavailable


class UsageError(ValueError):
    """A missing or wrong setting of an app; the message names the key and what to do."""


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataError, Unavailable, UsageError, ModelError, FileNotFoundError, FileExistsError,
    IsADirectoryError, NotADirectoryError, PermissionError,
)
# OS errors that are the machine's, not the program's: one sentence with what to do, not a traceback.
_AGAIN = "run the same command again (a training run resumes from its last checkpoint)"
_ENVIRONMENT = {
    errno.ENOSPC: f"free some space (or write elsewhere), then {_AGAIN}",
    errno.EDQUOT: f"free some of your quota (or write elsewhere), then {_AGAIN}",
    errno.EFBIG: f"the file system (or a ulimit -f) refuses files this large: write elsewhere, then {_AGAIN}",
    errno.EROFS: "write somewhere else (hydra.run.dir=..., output=...)",
    errno.EACCES: "write somewhere else, or fix the folder's permissions",
    errno.EPERM: "write somewhere else, or fix the folder's permissions",
    errno.EIO: f"the storage failed: check the disk (or write elsewhere), then {_AGAIN}",
}
# How the libraries report a failed write without an OSError: torch.save, safetensors' Rust writer.
_WRITE_FAILURES = ("PytorchStreamWriter failed", "file write failed", "IoError", "No space left on device",
                   "File too large", "Disk quota exceeded")


def environment_error(e: BaseException) -> bool:
    """A full disk, an exhausted quota, a file too large, a read-only file system, a permission refused by the
    system, or a library's report of a failed write (torch.save, safetensors), here or in what caused it."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in _ENVIRONMENT:
            return True
        if (isinstance(e, RuntimeError) or type(e).__name__ == "SafetensorError") and any(
                w in str(e) for w in _WRITE_FAILURES):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def describe(e: BaseException) -> str:
    """The sentence for an error; OS errors raised by the system read '<path>: <reason>[; what to do]'."""
    if isinstance(e, OSError) and e.strerror and str(e).startswith("[Errno"):
        where = f"{e.filename}: " if e.filename else ""
        text = f"{where}{e.strerror[0].lower()}{e.strerror[1:]}"
        return f"{text}; {_ENVIRONMENT[e.errno]}" if e.errno in _ENVIRONMENT else text
    if not isinstance(e, OSError) and environment_error(e):  # a library's report of a failed write
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        return (f"writing failed ({first}): the disk is full, a quota or file-size limit is reached, or the storage "
                f"failed; free some space (or write elsewhere), then {_AGAIN}")
    return str(e)


def fail(message: str, code: int = 2) -> None:
    from cpo.console import note_in_log_file

    print(f"error: {message}", file=sys.stderr, flush=True)
    note_in_log_file(f"error: {message}")
    sys.exit(code)


def duplicate_override_keys(overrides: Iterable[str]) -> str | None:
    """A sentence naming a key given twice inside a ``{...}`` map of a Hydra command-line override, else None.

    Hydra keeps the last value of ``'systems={gpt4: a.en, gpt4: b.en}'`` without a word; a system (or
    a direction) would silently vanish from the run.
    """
    from hydra.core.override_parser.overrides_parser import create_functions
    from hydra.core.override_parser.overrides_visitor import HydraErrorListener, HydraOverrideVisitor
    from hydra.grammar.gen.OverrideLexer import CommonTokenStream, InputStream, OverrideLexer
    from hydra.grammar.gen.OverrideParser import OverrideParser

    found: list[str] = []

    class _Visitor(HydraOverrideVisitor):
        """Hydra's own visitor, except that a ``{...}`` map notes a repeated key before building its dict."""

        def visitDictContainer(self, ctx):  # noqa: N802 - ANTLR's naming
            pairs = [self.visitDictKeyValuePair(ctx.getChild(i)) for i in range(1, ctx.getChildCount() - 1, 2)]
            keys = [k for k, _ in pairs]
            found.extend(str(k) for k in keys if keys.count(k) > 1)
            return dict(pairs)

    functions = create_functions()
    for text in overrides:
        lexer = OverrideLexer(InputStream(text))
        grammar = OverrideParser(CommonTokenStream(lexer))
        for part in (lexer, grammar):
            part.removeErrorListeners()
            part.addErrorListener(HydraErrorListener())
        try:
            _Visitor(functions).visit(grammar.override())
        except Exception:  # noqa: BLE001 - Hydra has parsed (and accepted) it already; only maps matter here
            continue
        if found:
            key = text.split("=", 1)[0].lstrip("+~")
            return f"{key}: the key {found[0]!r} is given twice in {{...}} on the command line; give each key once"
    return None


def _refuse_repeated_map_keys() -> None:
    """Hydra keeps the last value of a key given twice in a ``{...}`` override map; here it is an error."""
    problem = duplicate_override_keys(task_overrides() or [])
    if problem:
        raise UsageError(problem)


class _Launch:
    """This process's launch of an app (one per job of a sequential sweep): its config, and whether it owns its
    folder."""

    cfg = None
    accepted = False


def _hydra_config():
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except (ImportError, ValueError):  # not under Hydra (library use, tests)
        return None


def _folder_is_fresh(folder: Path) -> bool:
    """Nothing in it yet: Hydra has just created it (or it was empty), so nobody else's record can be there."""
    try:
        return not any(folder.iterdir())
    except OSError:
        return False


def write_launch_record(folder: Path, cfg, hc) -> Path:
    """Hydra's record of a launch (config.yaml, hydra.yaml, overrides.yaml), written atomically into ``.hydra/``,
    or into ``.hydra-<app>/`` when ``.hydra/`` holds another app's record (evaluate.py in a training run's folder)."""
    from omegaconf import OmegaConf

    from cpo.io import atomic_write_text

    name = str(hc.job.name)
    record = folder / ".hydra"
    try:
        other = OmegaConf.load(record / "hydra.yaml").hydra.job.name if (record / "hydra.yaml").is_file() else name
    except Exception:  # noqa: BLE001 - an unreadable record of someone else: leave it alone
        other = None
    if other != name:
        record = folder / f".hydra-{name}"
    atomic_write_text(record / "config.yaml", OmegaConf.to_yaml(cfg))
    atomic_write_text(record / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hc})))
    atomic_write_text(record / "overrides.yaml", OmegaConf.to_yaml(hc.overrides.task))
    return record


def task_overrides() -> list[str] | None:
    """The launch's command-line overrides of the app's config (Hydra's ``overrides.task``), None outside Hydra."""
    hc = _hydra_config()
    return None if hc is None else [str(o) for o in hc.overrides.task]


def accept_launch(record: bool = True) -> None:
    """The app owns its folder now: write the launch's record (``record``) and open its log file.

    Called once per launch, by the app (train.py, after deciding to train in the folder) or by
    :func:`one_sentence_errors` (a fresh folder at once, any other when the app succeeds). Apps without a log
    file of their own (compare.py) record nothing. Ranks other than 0 of a multi-process run open their log only.
    """
    from cpo.console import launch_logs, open_launch_logs

    if _Launch.accepted:
        return
    _Launch.accepted = True
    hc = _hydra_config()
    if hc is None or not launch_logs():
        return
    if record and _Launch.cfg is not None:
        write_launch_record(Path(hc.runtime.output_dir), _Launch.cfg, hc)
    open_launch_logs()


def one_sentence_errors(fn=None, *, accept: str = "auto"):
    """Decorator for an app's main function (inside ``@hydra.main``, so Hydra never sees the error).

    ``accept="auto"``: the launch owns a fresh folder at once and any other folder when ``fn`` succeeds;
    ``"app"``: ``fn`` calls :func:`accept_launch` itself (train.py).
    """
    if fn is None:
        return functools.partial(one_sentence_errors, accept=accept)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from cpo.console import quiet_libraries

        quiet_libraries()
        _Launch.cfg, _Launch.accepted = (args[0] if args else None), False
        hc = _hydra_config()
        if accept == "auto" and hc is not None and _folder_is_fresh(Path(hc.runtime.output_dir)):
            accept_launch()
        try:
            _refuse_repeated_map_keys()
            out = fn(*args, **kwargs)
        except EXPECTED_ERRORS as e:
            if os.environ.get("CPO_DEBUG"):
                traceback.print_exc()
            fail(describe(e))
        except Exception as e:
            if not environment_error(e):  # a full disk is the machine's, not a bug of the app
                e._cpo_raised_in_app = True  # a bug of the app, not a refusal of the command line (run_app)
                raise
            if os.environ.get("CPO_DEBUG"):
                traceback.print_exc()
            fail(describe(e))
        if accept == "auto":
            accept_launch()
        return out

    return wrapper


# Set by run_app for Hydra (its errors then propagate to run_app instead of ending the process with
# status 1) and inherited by the processes a run starts (DDP ranks), which must tell it from a user's own.
_OURS = "CPO_SET_HYDRA_FULL_ERROR"


def run_app(main) -> None:
    """Call a ``@hydra.main`` function; Hydra's refusals of the command line become one sentence, exit 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    users = os.environ.get("HYDRA_FULL_ERROR") and not os.environ.get(_OURS)
    if users or os.environ.get("CPO_DEBUG"):
        main()
        return
    os.environ.update({"HYDRA_FULL_ERROR": "1", _OURS: "1"})
    try:
        main()
    except (HydraException, OmegaConfBaseException) as e:
        if getattr(e, "_cpo_raised_in_app", False):
            raise
        fail(hydra_sentence(e))
    except OSError as e:  # Hydra could not create the run folder (or a full disk before the app ran)
        if getattr(e, "_cpo_raised_in_app", False):
            raise
        fail(f"cannot create or write the run folder: {describe(e)}; choose another one with hydra.run.dir=... "
             "(hydra.sweep.dir=... for a sweep)")


def hydra_sentence(e: BaseException) -> str:
    """Hydra's multi-line message as one line: its blocks joined, an options list inline, no search path."""
    text = str(e)
    override = getattr(e, "override", None)  # OverrideParseException: the override it could not read
    if override and override not in text:
        text = f"{override}: {text}"
    if e.__cause__ is not None and str(e.__cause__) not in text:
        text += "\n" + str(e.__cause__)
    text = text.split("Config search path:")[0]
    parts = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.splitlines() if ln.strip()]
        lines = [ln for ln in lines if not re.match(r"(full_key|object_type|reference_type)\s*[:=]", ln)]
        if not lines:
            continue
        if lines[0].endswith(":") and len(lines) > 1:  # "Available options in 'loss':" and one option a line
            parts.append(f"{lines[0]} {', '.join(lines[1:])}")
        else:
            parts.append("; ".join(ln.rstrip(".") for ln in lines))
    sentence = "; ".join(parts) or type(e).__name__
    return re.sub(r"; ([A-Z])(?=[a-z])", lambda m: "; " + m.group(1).lower(), sentence)
