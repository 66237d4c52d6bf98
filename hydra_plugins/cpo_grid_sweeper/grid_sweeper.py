"""A Hydra sweeper over a union of grids (``hydra/sweeper=cpo_grid``); see :mod:`.grid` for the job list.

Everything else is the basic sweeper's: ``multirun.yaml`` in ``hydra.sweep.dir``, job numbers
counted across batches, ``max_batch_size``, any launcher (basic, joblib, submitit), and a failed
job (an exception) failing the sweep after its batch.

A job whose training diverged (train.py's exit status 3) is a result of the grid, not a reason to stop:
the sweep goes on, and at its end one line lists the diverged jobs and the sweep exits with status 3.

Otherwise, a job that exits with a non-zero ``SystemExit`` (``cpo.runs.RunInterrupted``, e.g.
on a SLURM time limit, or an app's ``sys.exit(2)``) stops the sweep: at once with the basic
(in-process) launcher and with joblib (which aborts its batch); with launchers that run jobs
elsewhere (submitit) after the batch already submitted. One line on stderr names that job and
the jobs that did not run, and the sweep exits with the job's code. Jobs are numbered as before
on a re-launch, so the same command continues where it stopped (train.py skips finished jobs); a sweep whose
folder is named by the clock (Hydra's default) is continued by naming that folder (the line says how).
"""
# No `from __future__ import annotations`: Hydra's plugin scan executes this module before it is in
# sys.modules, where dataclasses cannot resolve string annotations.
import functools
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from .grid import GridError, expand_jobs

log = logging.getLogger(__name__)


@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.cpo_grid_sweeper.grid_sweeper.GridSweeper"
    max_batch_size: Optional[int] = None
    # Crossed with every grid block (and used alone without a grid), as the basic sweeper's params.
    params: Optional[Dict[str, Any]] = None
    # A list of blocks {key: values}; the sweep is the union of their Cartesian products.
    grid: Optional[List[Dict[str, Any]]] = None
    # Keys a job's configuration ignores (beta under SFT) are left out of that job, and the jobs that then are the
    # same run once: `ignored_keys` names a function (a job's composed config -> the keys it ignores), `ignorable`
    # the keys it may name (only jobs that set one of them are composed to ask).
    ignored_keys: Optional[str] = None
    ignorable: Optional[List[str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="cpo_grid", node=GridSweeperConf, provider="cpo")


DIVERGED = 3  # train.py's exit status for a run that diverged (cpo.train.guards)


def _is_failure_exit(e: SystemExit) -> bool:
    return e.code not in (None, 0)


def _exit_text(e: SystemExit) -> str:
    code = f"code {e.code}" if isinstance(e.code, int) else f"message {e.code!r}"
    interrupted = any(c.__name__ == "RunInterrupted" for c in type(e).__mro__)  # cpo.runs, without importing cpo
    return f"was interrupted (exit {code})" if interrupted else f"exited with {code}"


@dataclass
class JobExit:
    """What a job's non-zero exit becomes under a launcher whose jobs run elsewhere (submitit, SLURM):
    a result the launcher brings back, where an exit would only read "the job produced no output"."""

    num: int
    overrides: List[str]
    code: Any
    text: str               # "was interrupted (exit code 143)" or "exited with code 2"


class _TaggedTask:
    """The task function, unchanged, except for a job's non-zero ``SystemExit``: it carries the job's number
    and overrides back to the sweeper (an attribute, which pickles with it through joblib), or, with
    ``exit_as_result``, is returned as a :class:`JobExit`."""

    def __init__(self, task_function: TaskFunction) -> None:
        self.task_function = task_function
        self.exit_as_result = False
        functools.update_wrapper(self, task_function)

    def __call__(self, cfg: DictConfig) -> Any:
        try:
            return self.task_function(cfg)
        except SystemExit as e:
            if not _is_failure_exit(e):
                raise
            try:
                from hydra.core.hydra_config import HydraConfig

                hc = HydraConfig.get()
                e.sweep_job = (int(hc.job.num), [str(o) for o in hc.overrides.task])  # type: ignore[attr-defined]
            except Exception:  # no Hydra state (a launcher that calls the task otherwise): untagged
                raise e from None
            if e.code == DIVERGED:  # a failed grid point: recorded, and the sweep goes on
                return JobExit(e.sweep_job[0], e.sweep_job[1], e.code, "diverged")  # type: ignore[attr-defined]
            if self.exit_as_result:
                return JobExit(e.sweep_job[0], e.sweep_job[1], e.code, _exit_text(e))  # type: ignore[attr-defined]
            raise


def _ranges(nums: Sequence[int]) -> str:
    """[4, 5, 6, 9] -> "#4-#6, #9"."""
    parts: List[List[int]] = []
    for n in sorted(nums):
        if parts and parts[-1][1] == n - 1:
            parts[-1][1] = n
        else:
            parts.append([n, n])
    return ", ".join(f"#{a}" if a == b else f"#{a}-#{b}" for a, b in parts)


SAME_COMMAND = "re-launch the same command to continue"


def relaunch_clause(sweep: DictConfig) -> str:
    """How to continue a stopped sweep: the same command, unless its folder is named by the clock (the default
    ``multirun/<date>/<time>``), where the same command would start a new sweep elsewhere."""
    raw = OmegaConf.to_container(sweep, resolve=False).get("dir")
    if "${now:" in str(raw):
        return f"re-launch it with hydra.sweep.dir={sweep.dir} added to continue"
    return SAME_COMMAND


def stopped_line(exc: SystemExit, n_jobs: int, batch_start: int, batch_len: int, sequential: bool,
                 relaunch: str = SAME_COMMAND) -> str:
    """The one line printed when a job's non-zero exit (raised through the launcher) stops the sweep."""
    job = getattr(exc, "sweep_job", None)
    how = _exit_text(exc)
    after = list(range(batch_start + batch_len, n_jobs))
    not_run = f"did not run: {_ranges(after)} ({len(after)} jobs)" if after else ""
    if job is not None and sequential:
        num, overrides = job
        head = f"job #{num} ({' '.join(overrides)}) {how}"
        later = list(range(num + 1, batch_start + batch_len)) + after
        tail = f"did not run: {_ranges(later)} ({len(later)} jobs)" if later else "it was the last job"
    else:
        head = (f"job #{job[0]} ({' '.join(job[1])})" if job is not None else "a job") + f" {how}"
        others = [n for n in range(batch_start, batch_start + batch_len) if job is None or n != job[0]]
        tail = "; ".join(t for t in (f"the other jobs of its parallel batch ({_ranges(others)}) may not have finished"
                                     if others else "", not_run) if t) or "it was the last job"
    return f"sweep stopped: {head}; {tail}; {relaunch}"


def exits_line(exits: List[JobExit], n_jobs: int, batch_end: int, relaunch: str = SAME_COMMAND) -> str:
    """The one line for jobs that came back as :class:`JobExit`: the rest of their batch ran."""
    heads = "; ".join(f"job #{x.num} ({' '.join(x.overrides)}) {x.text}" for x in exits)
    after = list(range(batch_end, n_jobs))
    tail = f"did not run: {_ranges(after)} ({len(after)} jobs)" if after else "no job was left to run"
    return f"sweep stopped: {heads}; {tail}; {relaunch}"


def _ignored_line(gone: Sequence[str], originals: List[List[str]], jobs: List[List[str]], n_after: int) -> str:
    """``loss=sft ignores beta: 4 jobs run as 2 (beta=0.05,0.1 left out)``: the jobs are named by the overrides
    whose values only they have (what makes them ignore the keys), the values left out are listed."""
    def values(group: List[List[str]]) -> Dict[str, List[str]]:
        out: Dict[str, List[str]] = {}
        for job in group:
            for o in job:
                key, _, value = o.partition("=")
                out.setdefault(key.lstrip("+~"), [])
                if value not in out[key.lstrip("+~")]:
                    out[key.lstrip("+~")].append(value)
        return out

    mine = values(originals)
    others = values([j for j in jobs if j not in originals])
    who = " ".join(f"{k}={','.join(v)}" for k, v in mine.items()
                   if k not in gone and others.get(k) is not None and not set(v) & set(others[k]))
    left = " ".join(f"{k}={','.join(mine[k])}" for k in gone if k in mine)
    return (f"{who or 'some jobs'} ignore{'s' if who else ''} {', '.join(gone)}: {len(originals)} jobs run as "
            f"{n_after} ({left} left out)")


class GridSweeper(Sweeper):
    """The basic sweeper's behaviour over :func:`expand_jobs`' job list."""

    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, Any]] = None,
                 grid: Optional[List[Dict[str, Any]]] = None, ignored_keys: Optional[str] = None,
                 ignorable: Optional[List[str]] = None) -> None:
        super().__init__()
        self.max_batch_size = max_batch_size
        self.params = params or {}
        self.grid = grid or []
        self.ignored_keys, self.ignorable = ignored_keys, list(ignorable or [])
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher: Optional[Launcher] = None
        self.jobs: List[List[str]] = []

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        task = _TaggedTask(task_function)
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context, task_function=task,
                                                                config=config)
        # In-process jobs stop the sweep by raising, and joblib brings the exit back to this process; other
        # launchers (submitit) run jobs elsewhere and would only report "no output": there the exit is a result.
        task.exit_as_result = type(self.launcher).__name__ not in ("BasicLauncher", "JoblibLauncher")

    def batches(self, jobs: List[List[str]]) -> List[List[List[str]]]:
        n = self.max_batch_size
        if n is None or n == -1:
            return [jobs]
        if n <= 0:
            raise GridError(f"hydra.sweeper.max_batch_size={n}: give a positive number, or null for one batch")
        return [jobs[i : i + n] for i in range(0, len(jobs), n)]

    def _varying(self, overrides: List[str]) -> List[str]:
        """The overrides of a job that differ between the jobs of this sweep (what names a grid point)."""
        seen: Dict[str, set] = {}
        for job in self.jobs:
            for o in job:
                key, _, value = o.partition("=")
                seen.setdefault(key, set()).add(value)
        return [o for o in overrides if len(seen.get(o.partition("=")[0], ())) > 1] or overrides

    def drop_ignored(self, jobs: List[List[str]]) -> List[List[str]]:
        """Each job without the keys its configuration ignores (``ignored_keys``); the jobs that then coincide run
        once, and one line per group says so (``loss=sft ignores beta: 4 jobs run as 2 ...``)."""
        if not self.ignored_keys or not self.ignorable:
            return jobs
        from hydra.utils import get_method

        assert self.hydra_context is not None and self.config is not None
        ask, ignorable = get_method(self.ignored_keys), set(self.ignorable)
        answers: Dict[tuple, set] = {}
        out: List[List[str]] = []
        seen: Dict[tuple, int] = {}
        dropped: Dict[tuple, List[List[str]]] = {}  # ignored keys -> the original jobs that lost them
        for job in jobs:
            keys = [o.partition("=")[0].lstrip("+~") for o in job]
            if ignorable.isdisjoint(keys):
                reduced = job
            else:
                base = tuple(o for o, k in zip(job, keys) if k not in ignorable)  # the answer cannot depend on them
                if base not in answers:
                    cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(base))
                    answers[base] = set(ask(cfg)) & ignorable
                reduced = [o for o, k in zip(job, keys) if k not in answers[base]]
                if len(reduced) < len(job):
                    dropped.setdefault(tuple(sorted(set(keys) & answers[base])), []).append(job)
            if tuple(reduced) not in seen:
                seen[tuple(reduced)] = len(out)
                out.append(reduced)
        for gone, originals in dropped.items():
            log.info(_ignored_line(gone, originals, jobs, len({tuple(o for o in j if o.partition("=")[0].lstrip("+~")
                                                                      not in gone) for j in originals})))
        return out

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        try:
            self.jobs = self.drop_ignored(expand_jobs(self.grid, self.params, arguments,
                                                      self.hydra_context.config_loader))
            batches = self.batches(self.jobs)
        except GridError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        if self.grid:
            log.info(f"Grid sweep: {len(self.grid)} blocks -> {len(self.jobs)} jobs")

        sweep_dir = Path(self.config.hydra.sweep.dir)
        relaunch = relaunch_clause(self.config.hydra.sweep)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        from hydra._internal.core_plugins.basic_launcher import BasicLauncher

        sequential = isinstance(self.launcher, BasicLauncher)  # in process, one job after the other
        returns: List[Sequence[JobReturn]] = []
        diverged: List[JobExit] = []
        start = 0
        for batch in batches:
            tic = time.perf_counter()
            self.validate_batch_is_legal(batch)
            log.debug(f"Validated configs of {len(batch)} jobs in {time.perf_counter() - tic:0.2f} seconds")
            try:
                results = self.launcher.launch(batch, initial_job_idx=start)
            except SystemExit as e:
                if _is_failure_exit(e):
                    print(stopped_line(e, len(self.jobs), start, len(batch), sequential, relaunch), file=sys.stderr,
                          flush=True)
                raise
            for r in results:
                _ = r.return_value  # raises the job's exception if it failed, as the basic sweeper does
            diverged += [r.return_value for r in results
                         if isinstance(r.return_value, JobExit) and r.return_value.code == DIVERGED]
            exits = [r.return_value for r in results
                     if isinstance(r.return_value, JobExit) and r.return_value.code != DIVERGED]
            if exits:
                print(exits_line(exits, len(self.jobs), start + len(batch), relaunch), file=sys.stderr, flush=True)
                code = exits[0].code
                sys.exit(code if isinstance(code, int) else 1)
            start += len(batch)
            returns.append(results)
        if diverged:
            jobs = "; ".join(f"#{x.num} ({' '.join(self._varying(x.overrides))})" for x in diverged)
            print(f"sweep finished, but {len(diverged)} of {len(self.jobs)} jobs diverged and have no results: {jobs}; "
                  f"their reasons are in their train.log", file=sys.stderr, flush=True)
            sys.exit(DIVERGED)
        return returns
