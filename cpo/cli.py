"""What every app (train.py, scripts/*.py) does with an expected error: one sentence, exit 2.

Wrap a Hydra task function with :func:`one_sentence_errors`. An expected error (bad input, a wrong
setting, an unavailable model, a path that is not what it should be) prints ``error: <message>`` on
stderr and exits with status 2, without a traceback; ``CPO_DEBUG=1`` shows the traceback as well.
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import functools
import os
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

    return wrapper
