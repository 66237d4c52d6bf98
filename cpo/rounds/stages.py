"""A stage of a rounds run (``round-k/candidates``, ``round-k/pairs``): reused, refused or restarted by its fingerprint.

The rule of ``train.py`` run folders (``cpo.runs``), for stages that are not training runs: a stage's
*settings* (what changes its outputs: decoding, the rule, the scorer's identity) and its *inputs* (sha256 of
every file it reads, the policy's weights) hash to a fingerprint (``cpo.runs.fingerprint``).

- ``stage.json`` (written last, atomically) means finished: with the same fingerprint the stage is reused,
  with another one it is refused, naming the keys that differ (``decoding.temperature: 1.0 -> 0.7``) and the
  way forward; nothing finished is ever silently reused or overwritten.
- ``stage.started.json`` (written first) records an attempt; a stage without ``stage.json`` was interrupted
  and starts over (its files are written atomically, so none is half-written; the pairs stage's scores are
  cached, so a restart scores nothing twice).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cpo.console import say
from cpo.io import atomic_write_json
from cpo.runs.errors import StaleRun
from cpo.runs.fingerprint import config_diff, describe_diff, fingerprint

DONE = "stage.json"
STARTED = "stage.started.json"
WAY_FORWARD = ("give the rounds run another folder (hydra.run.dir=...), or pass rerun=true to start it over "
               "(its old rounds are kept in replaced-<time>/)")


class StageFolder:
    def __init__(self, path: str | Path, stage: str, round_: int):
        self.path, self.stage, self.round = Path(path), stage, round_

    @property
    def name(self) -> str:
        return f"round-{self.round}/{self.stage}"

    def identity(self, settings: dict[str, Any]) -> dict[str, Any]:
        return {"stage": self.stage, "round": self.round, **settings}

    def finished(self, settings: dict[str, Any]) -> dict | None:
        """The stored record when the stage finished with these settings; None when it has not finished; StaleRun
        when it finished with others."""
        done = self.path / DONE
        if not done.is_file():
            return None
        try:
            record = json.loads(done.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise StaleRun(f"{done} cannot be read ({e}): {WAY_FORWARD}") from None
        mine = self.identity(settings)
        if record.get("fingerprint") == fingerprint(mine):
            return record
        diff = config_diff(record.get("settings") or {}, mine)
        raise StaleRun(f"{self.name} was made with other settings or inputs ({describe_diff(diff)}), so this rounds "
                       f"run cannot continue with these: {WAY_FORWARD}")

    def reuse_or_start(self, settings: dict[str, Any]) -> dict | None:
        """The stored record of a stage finished with these settings (said so), else None with the stage started."""
        record = self.finished(settings)
        if record is not None:
            say(f"{self.name}: finished with these settings, reused")
            return record
        self.start(settings)
        return None

    def start(self, settings: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / DONE).unlink(missing_ok=True)
        mine = self.identity(settings)
        atomic_write_json(self.path / STARTED, {"fingerprint": fingerprint(mine), "settings": mine,
                                                "started": time.strftime("%Y-%m-%d %H:%M:%S")})

    def finish(self, settings: dict[str, Any], outputs: dict[str, Any], seconds: float) -> dict:
        mine = self.identity(settings)
        record = {"fingerprint": fingerprint(mine), "settings": mine, "outputs": outputs,
                  "seconds": round(seconds, 3), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_json(self.path / DONE, record)
        return record
