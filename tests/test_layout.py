"""The tree shows the pipeline, and its layering cannot decay silently (issue 15).

Every module under ``cpo/`` imports, and every ``cpo`` import in the package, the apps and the Hydra plugins
(at module level or inside a function) points down the stack of ``ALLOWED``. Where a rule of the layout issue
was adjusted: ``cpo.bench`` is the library of the benchmark apps (``scripts/bench.py``, ``scripts/gpu_check.py``)
and builds its synthetic workload from the demo's language, so it sits with the apps above ``demo``.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

from conftest import REPO

BASE = {"io", "hub", "text", "errors", "console", "cli", "languages"}
# Which layers each layer may import (itself and base always). An arrow only points down.
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "runs": set(),
    "scoring": set(),
    "mt": {"scoring"},
    "pairs": {"mt", "scoring"},
    "data": {"pairs", "mt", "runs"},
    "report": {"mt", "scoring", "runs"},
    "train": {"data", "pairs", "mt", "scoring", "runs"},
    "rounds": {"train", "data", "pairs", "mt", "scoring", "runs"},
    "demo": {"train", "data", "pairs", "mt", "scoring", "runs"},
    "bench": {"demo", "train", "data", "pairs", "mt", "scoring", "runs"},
    "apps": {"bench", "demo", "rounds", "train", "report", "data", "pairs", "mt", "scoring", "runs"},
}
PACKAGES = set(ALLOWED) - {"base", "apps"}


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "cpo":
        return "apps"
    if len(parts) == 1 or parts[1] in BASE:
        return "base"
    return parts[1]


def source_files() -> dict[str, Path]:
    """Dotted name -> file, for the package; the apps under their file names."""
    out = {}
    for path in sorted((REPO / "cpo").rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
        out[".".join(parts)] = path
    for path in [REPO / "train.py", *sorted((REPO / "scripts").glob("*.py")),
                 *sorted((REPO / "hydra_plugins").rglob("*.py"))]:
        out[f"app:{path.relative_to(REPO)}"] = path
    return out


def cpo_imports(path: Path) -> set[str]:
    """Every ``cpo`` module ``path`` imports, anywhere in the file; ``from cpo.x import y`` counts ``cpo.x.y``
    when ``y`` is a module, else ``cpo.x``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "cpo"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "cpo":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                is_module = (REPO / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                    (REPO / Path(*sub.split(".")) / "__init__.py").is_file()
                names.add(sub if is_module else node.module)
    return names


def test_top_level_holds_only_base_modules_and_stage_packages():
    top = {p.stem for p in (REPO / "cpo").glob("*.py")} - {"__init__"}
    assert top == BASE, f"modules at the top of cpo/ that are not base helpers: {sorted(top - BASE)}"
    packages = {p.name for p in (REPO / "cpo").iterdir() if (p / "__init__.py").is_file()}
    assert packages == PACKAGES, sorted(packages ^ PACKAGES)


def test_every_module_imports():
    import cpo

    for info in pkgutil.walk_packages(cpo.__path__, "cpo."):
        importlib.import_module(info.name)


def test_imports_point_down_the_layers():
    bad = []
    for name, path in source_files().items():
        mine = layer(name) if not name.startswith("app:") else "apps"
        for target in sorted(cpo_imports(path)):
            theirs = layer(target)
            if theirs not in ({mine, "base"} | ALLOWED[mine]):
                bad.append(f"{path.relative_to(REPO)} ({mine}) imports {target} ({theirs})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_only_apps_and_the_demo_import_the_demo():
    """Nothing but scripts/, train.py, the bench apps' library and the demo itself imports ``cpo.demo``."""
    bad = [f"{path.relative_to(REPO)} imports {t}" for name, path in source_files().items()
           if layer(name) not in ("apps", "bench", "demo") for t in cpo_imports(path) if layer(t) == "demo"]
    assert not bad, bad


def test_no_import_cycles():
    """No module reaches itself through ``cpo`` imports (function-level ones included); a package's
    ``__init__`` importing its own modules is not an edge back to it."""
    files = {n: p for n, p in source_files().items() if not n.startswith("app:")}
    graph = {}
    for name, path in files.items():
        edges = set()
        for t in cpo_imports(path):
            while t not in files and "." in t:
                t = t.rsplit(".", 1)[0]
            # A module importing its own package's __init__ (re-exports) is fine when the __init__ is a namespace.
            if t != name and not name.startswith(t + "."):
                edges.add(t)
        graph[name] = edges

    cycles, state = [], {}

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", ["cpo.mt", "cpo.scoring"])
def test_translation_and_scoring_load_without_training_data_or_demo(module):
    """Checked in a fresh interpreter, so nothing imported by another test hides an import."""
    import subprocess
    import sys

    code = (f"import importlib, pkgutil, sys; import {module} as m\n"
            "for i in pkgutil.walk_packages(m.__path__, m.__name__ + '.'): importlib.import_module(i.name)\n"
            "bad = sorted(k for k in sys.modules if k.split('.')[:2] in (['cpo','train'], ['cpo','data'], "
            "['cpo','demo']))\nprint(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------------- records of the old layout
OLD_LAYOUT = REPO / "tests" / "fixtures" / "layout_v1"
OLD_LAYOUT_COMMAND = ["trainer.max_steps=2", "checkpoint.every_n_steps=1", "logger=csv", "model=tiny_lora"]


def test_a_checkpoint_written_before_the_move_resumes(tmp_path, capsys):
    """Written by the flat layout (tests/fixtures/layout_v1): it loads (no class path pickled), its recorded
    configuration matches the same command today (keys added since are at their old behaviour, see
    ``cpo.runs.fingerprint.ADDED_KEYS``), and the run resumes from it to the end."""
    import torch

    from conftest import SMALL_DEMO, compose
    from cpo.runs import check_checkpoint
    from cpo.train.run import run

    ckpt = tmp_path / "old.ckpt"
    ckpt.write_bytes((OLD_LAYOUT / "last.ckpt").read_bytes())
    assert check_checkpoint(ckpt)["global_step"] == 2
    torch.load(ckpt, weights_only=True)  # tensors and plain containers only
    res = run(compose(SMALL_DEMO + OLD_LAYOUT_COMMAND + [f"ckpt_path={ckpt}"]), tmp_path / "run")
    assert f"resuming from {ckpt} (step 2)" in capsys.readouterr().out
    assert res["global_steps"] == 2 and res["val"] and (tmp_path / "run" / "policy").is_dir()


def test_a_record_naming_a_moved_callable_is_the_same_run():
    """An FSDP run recorded before the strategies moved (``cpo.strategies.fsdp``) is the run that names
    ``cpo.train.strategies.fsdp`` now; any other change is still another run, and a forged record is refused."""
    from cpo.runs.fingerprint import config_diff, fingerprint, same_configuration, upgraded

    def cfg(target, lr=1e-4, today=True):
        c = {"optim": {"lr": lr}, "trainer": {"strategy": {"_target_": target, "sharding_strategy": "FULL_SHARD"}}}
        return upgraded(c) if today else c  # today's config holds every key added since (ADDED_KEYS)

    old = cfg("cpo.strategies.fsdp", today=False)
    stored = fingerprint(old, rename=False)  # what the flat layout wrote
    now = fingerprint(cfg("cpo.train.strategies.fsdp"))
    assert stored != now and same_configuration(stored, old, now)
    assert config_diff(old, cfg("cpo.train.strategies.fsdp")) == []
    assert not same_configuration(stored, old, fingerprint(cfg("cpo.train.strategies.fsdp", lr=3e-4)))
    assert not same_configuration("0" * 64, old, now)  # the config does not hash to the stored fingerprint
    assert not same_configuration(stored, cfg("cpo.strategies.deepspeed", today=False), now)
