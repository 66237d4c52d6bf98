"""The job list of a sweep over a *union* of grids, as plain override strings (no Hydra state needed).

A grid is a list of blocks, each a mapping ``key -> values`` (like scikit-learn's list-of-dicts
parameter grid); ``params`` (the basic sweeper's mapping) is crossed with every block, and so are
the command-line overrides. Without a grid the result is exactly the basic sweeper's Cartesian
product of ``params`` and the command line, in the same order.

A value is written as in Hydra: a YAML list sweeps over its elements (``[1e-4, 3e-4]``; a list
value is a list inside the list, ``[[ref, strong]]``), a string is Hydra's override syntax
(``"1,2,3"``, ``"range(1,6)"``, ``"choice(a,b)"``), anything else is one value.

Command-line overrides: a key of ``params`` is replaced, as the basic sweeper does; a key that
some grid block sweeps *selects* among that block's values (``loss=cpo`` keeps the CPO part of
the grid), and a value that no block holds is an error, so a run never silently leaves the grid.
A job that an earlier block already produced (same overrides) is dropped.

This module is imported by Hydra's plugin scan at every start of an app: keep it light.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["GridError", "expand_jobs", "varying_keys", "job_keys"]


class GridError(ValueError):
    """The grid, params or command line do not describe a sweep (the message names the entry)."""


def _parser(config_loader: Any = None):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create(config_loader=config_loader)


def _as_plain(value: Any) -> Any:
    """OmegaConf containers -> Python lists/dicts (values only: interpolations resolved)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _override_text(key: str, value: Any, where: str) -> str:
    """One grid or params entry as a Hydra override string ``key=<value or sweep>``."""
    from hydra.core.override_parser.types import Override

    value = _as_plain(value)
    if isinstance(value, (list, tuple)):
        if not value:
            raise GridError(f"{where}: {key} is an empty list; give at least one value")
        # Each element is one value: a string element is escaped, so "a,b" stays one value.
        return f"{key}=" + ",".join(Override._get_value_element_as_str(v) for v in value)
    if isinstance(value, str):
        return f"{key}={value}"  # Hydra's own sweep syntax, as in the basic sweeper's params
    return f"{key}={Override._get_value_element_as_str(value)}"


def _values(override: Any, where: str) -> list[str]:
    """The value strings an override sweeps over (one for a plain override), as the basic sweeper makes them."""
    if override.is_sweep_override():
        if not override.is_discrete_sweep():
            raise GridError(f"{where}: {override.input_line!r}: the grid sweeper cannot enumerate "
                            f"a {override.value_type.name} sweep; list the values")
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def _parse(texts: Sequence[tuple[str, str]], parser: Any) -> OrderedDict[str, list[str]]:
    """[(where, "k=v,w"), ...] -> {key element: [value strings]}; a later key replaces an earlier one in place."""
    out: OrderedDict[str, list[str]] = OrderedDict()
    for where, text in texts:
        try:
            o = parser.parse_override(text)
        except Exception as e:  # the parser's own exception types vary (grammar, Hydra)
            raise GridError(f"{where}: cannot parse {text!r}: {e}") from None
        out[o.get_key_element()] = _values(o, where)
    return out


def _canonical(key: str, value: str, parser: Any) -> Any:
    """The Python value of ``key=value`` (so 1e-4 == 0.0001 and 1 == 1.0 when filtering)."""
    import json

    v = parser.parse_override(f"{key}={value}").value()
    return json.dumps(v, sort_keys=True, default=str) if isinstance(v, (list, dict)) else v


def _product(keys: OrderedDict[str, list[str]]) -> list[list[str]]:
    lists = [[f"{k}={v}" for v in vals] for k, vals in keys.items()]
    return [list(job) for job in itertools.product(*lists)]


def expand_jobs(grid: Any = None, params: Mapping[str, Any] | None = None, arguments: Sequence[str] = (),
                config_loader: Any = None) -> list[list[str]]:
    """Every job of the sweep, in launch order, as lists of ``key=value`` override strings.

    Order: blocks in order; inside a block, the Cartesian product over the block's keys, then
    ``params``, then command-line keys (the last key varies fastest), as the basic sweeper orders
    ``params`` before the command line.
    """
    parser = _parser(config_loader)
    params = _as_plain(params) or {}
    grid = _as_plain(grid) or []
    if not isinstance(params, Mapping):
        raise GridError(f"hydra.sweeper.params must be a mapping key -> values, got {type(params).__name__}")
    if not isinstance(grid, list) or not all(isinstance(b, Mapping) for b in grid):
        raise GridError("hydra.sweeper.grid must be a list of mappings key -> values, "
                        "e.g. [{loss: [cpo, dpo], beta: [0.1, 0.5]}]")
    where = "hydra.sweeper.params"
    base = _parse([(where, _override_text(str(k), v, where)) for k, v in params.items()], parser)
    command_line = _parse([("command line", a) for a in arguments], parser)
    if not grid:  # the basic sweeper exactly: params, then the command line replacing or adding keys
        base.update(command_line)
        return _product(base)

    blocks = []
    for i, block in enumerate(grid):
        where = f"hydra.sweeper.grid[{i}]"
        if not block:
            raise GridError(f"{where} is empty; give each block at least one key")
        blocks.append(_parse([(where, _override_text(str(k), v, where)) for k, v in block.items()], parser))
    grid_keys = list(dict.fromkeys(k for b in blocks for k in b))
    both = [k for k in grid_keys if k in base]
    if both:
        raise GridError(f"{', '.join(both)}: in both hydra.sweeper.grid and hydra.sweeper.params; "
                        "give each key in one place")

    # Command-line keys that the grid sweeps select among the grid's values.
    chosen: dict[str, set] = {}
    for key, vals in command_line.items():
        if key not in grid_keys:
            continue
        offered = {_canonical(key, v, parser) for b in blocks for v in b.get(key, [])}
        wanted = {_canonical(key, v, parser): v for v in vals}
        outside = [v for c, v in wanted.items() if c not in offered]
        if outside:
            have = ", ".join(dict.fromkeys(v for b in blocks for v in b.get(key, [])))
            raise GridError(f"{key}={','.join(outside)}: not in the grid, where {key} takes {have}; choose among "
                            "those, or give another grid (hydra.sweeper.grid=...)")
        chosen[key] = set(wanted)
    rest = OrderedDict(base)
    rest.update((k, v) for k, v in command_line.items() if k not in grid_keys)

    jobs: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for block in blocks:
        keys: OrderedDict[str, list[str]] = OrderedDict()
        for key, vals in block.items():
            if key in chosen:
                vals = [v for v in vals if _canonical(key, v, parser) in chosen[key]]
            keys[key] = vals
        if any(not v for v in keys.values()):
            continue  # the command line chose none of this block's values
        keys.update(rest)
        block_jobs = _product(keys)
        jobs += [j for j in block_jobs if frozenset(j) not in seen]
        seen.update(frozenset(j) for j in block_jobs)
    return jobs


def job_keys(job: Iterable[str]) -> dict[str, str]:
    """["+a.b=1", "loss=cpo"] -> {"a.b": "1", "loss": "cpo"} (prefixes +, ++ and ~ dropped)."""
    out = {}
    for item in job:
        key, _, value = item.partition("=")
        out[key.lstrip("+~")] = value
    return out


def _sweep_arguments(hydra_cfg: Any) -> list[str]:
    """The command-line task overrides of the whole sweep (multirun.yaml in the sweep folder), else the job's."""
    from omegaconf import OmegaConf

    sweep_dir = (hydra_cfg.get("sweep") or {}).get("dir")
    saved = Path(str(sweep_dir)) / "multirun.yaml" if sweep_dir else None
    if saved is not None and saved.is_file():
        task = OmegaConf.select(OmegaConf.load(saved), "hydra.overrides.task")
        if task is not None:
            return [str(a) for a in task]
    return [str(a) for a in (OmegaConf.select(hydra_cfg, "overrides.task") or [])]


def varying_keys(hydra_cfg: Any, arguments: Sequence[str] | None = None) -> set[str]:
    """Keys (prefixes stripped) whose value, or presence, differs between the jobs of a sweep.

    ``hydra_cfg`` is the ``hydra`` node of a job's config (``HydraConfig.get()``); the sweep's own
    command line is read from ``<hydra.sweep.dir>/multirun.yaml`` (written before any job starts,
    for every launcher) unless ``arguments`` are given. ``seed=1,2,3`` makes ``seed`` vary; a key
    set to one value everywhere does not.
    """
    sweeper = hydra_cfg.get("sweeper") or {}
    args = list(arguments) if arguments is not None else _sweep_arguments(hydra_cfg)
    try:
        jobs = expand_jobs(sweeper.get("grid"), sweeper.get("params"), args)
    except Exception:  # e.g. a glob() sweep, which needs Hydra's config loader: every mentioned key may vary
        keys = [a.split("=", 1)[0] for a in args] + [str(k) for k in (sweeper.get("params") or {})]
        keys += [str(k) for b in (sweeper.get("grid") or []) for k in b]
        return {k.lstrip("+~") for k in keys}
    parsed = [job_keys(j) for j in jobs]
    all_keys = set().union(*parsed) if parsed else set()
    return {k for k in all_keys if len({p.get(k) for p in parsed}) > 1}
