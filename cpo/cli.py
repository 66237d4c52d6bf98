"""What every app (train.py, scripts/*.py) does with an expected error: one sentence, exit 2.

Wrap a Hydra task function with :func:`one_sentence_errors`, and start the app with :func:`run_app`.
An expected error (bad input, a wrong setting, an unavailable model, a path that is not what it should
be, and Hydra's own refusals of the command line: an unknown config option or key, a malformed
override) prints ``error: <message>`` on stderr and exits with status 2, without a traceback;
``CPO_DEBUG=1`` (or Hydra's ``HYDRA_FULL_ERROR=1``) shows the traceback as well. Anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

import functools
import os
import re
import sys
import traceback

from cpo.errors import ConfigError
from cpo.io import DataError, Unavailable


class UsageError(ValueError):
    """A missing or wrong setting of an app; the message names the key and what to do."""


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataError, Unavailable, UsageError, FileNotFoundError, FileExistsError, IsADirectoryError,
    NotADirectoryError, PermissionError,
)


def describe(e: BaseException) -> str:
    """The sentence for an error; OS errors raised by the system read '<path>: <reason>'."""
    if isinstance(e, OSError) and e.filename and e.strerror and str(e).startswith("[Errno"):
        return f"{e.filename}: {e.strerror[0].lower()}{e.strerror[1:]}"
    return str(e)


def fail(message: str, code: int = 2) -> None:
    from cpo.console import note_in_log_file

    print(f"error: {message}", file=sys.stderr, flush=True)
    note_in_log_file(f"error: {message}")
    sys.exit(code)


def _refuse_repeated_map_keys() -> None:
    """Hydra keeps the last value of a key given twice in a ``{...}`` override map; here it is an error."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):  # not under Hydra
        return
    from cpo.io import duplicate_override_keys

    problem = duplicate_override_keys(overrides)
    if problem:
        raise UsageError(problem)


def one_sentence_errors(fn):
    """Decorator for an app's main function (inside ``@hydra.main``, so Hydra never sees the error)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            _refuse_repeated_map_keys()
            return fn(*args, **kwargs)
        except EXPECTED_ERRORS as e:
            if os.environ.get("CPO_DEBUG"):
                traceback.print_exc()
            fail(describe(e))
        except Exception as e:
            e._cpo_raised_in_app = True  # a bug of the app, not a refusal of the command line (run_app)
            raise

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
