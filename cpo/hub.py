"""The Hugging Face hub, asked once: may this process download, and what to say when it may not.

A model, adapter, data set or COMET checkpoint named by a hub name (not a local path) is loaded through
huggingface_hub, which retries an unreachable hub for about a minute per file and prints a multi-line
connection error at each try. The hub is asked once per process, briefly, before the first such load:
unreachable (or HF_HUB_OFFLINE set), a name in the local cache loads from it, any other is one sentence.
"""
from __future__ import annotations

import os
from pathlib import Path

from cpo.io import Unavailable

HUB_PROBE_SECONDS = 5.0
_TRUE = ("1", "on", "yes", "true")
_hub_state: dict[str, str | None] = {}


def hub_offline_setting() -> str | None:
    """The environment variable that declares this machine offline (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE), set."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]}"
    return None


def hub_problem() -> str | None:
    """Why the hub cannot be used from this process (a clause), or None; the network is asked at most once."""
    declared = hub_offline_setting()
    if declared:
        return f"{declared} is set, which forbids downloading"
    if "answer" not in _hub_state:
        import urllib.error
        import urllib.request

        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=HUB_PROBE_SECONDS).close()
            _hub_state["answer"] = None
        except urllib.error.HTTPError:  # it answered (with an error status): reachable
            _hub_state["answer"] = None
        except (OSError, ValueError) as e:  # DNS failure, refused, timed out, no route, a bad HF_ENDPOINT
            reason = getattr(e, "reason", None) or e
            reason = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
            _hub_state["answer"] = (f"the hub ({endpoint}) cannot be reached ({reason}; asked once, "
                                    f"{HUB_PROBE_SECONDS:.0f} s at most)")
    return _hub_state["answer"]


def in_hub_cache(repo_id: str, repo_type: str = "model") -> bool:
    """Whether the local Hugging Face cache holds a snapshot of ``repo_id`` (no network)."""
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id, repo_type=repo_type, local_files_only=True)
        return True
    except Exception:  # noqa: BLE001 - not cached, not a valid repo id, or no huggingface_hub: not there
        return False


def hub_files_only(key: str, name: str, repo_type: str = "model") -> bool:
    """For a setting ``key`` that names ``name``: True to load it from local files only (a local path, or a hub
    name the cache holds while the hub cannot be used), False to let the library download it; raises
    :class:`Unavailable` in one sentence when the hub cannot be used and the cache does not hold it."""
    if Path(name).expanduser().exists():
        return True
    problem = hub_problem()
    if problem is None:
        return False
    if in_hub_cache(name, repo_type):
        return True
    fetch = f"hf download {name}{' --repo-type dataset' if repo_type == 'dataset' else ''}"
    way = "unset it on a machine with hub access" if hub_offline_setting() else "set HF_ENDPOINT to a reachable mirror"
    raise Unavailable(f"{key}={name!r} is neither a local path nor in the local Hugging Face cache, and {problem}: "
                      f"download it where the hub is reachable ({fetch}) and give its local path (or copy the cache, "
                      f"HF_HOME), or {way}")
