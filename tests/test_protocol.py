"""The fair protocol: the cpo_grid Hydra sweeper (hydra_plugins/cpo_grid_sweeper), the experiment files,
and one real sweep through train.py selected and compared by scripts/compare.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import REPO, SMALL_DEMO, compose

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


def compose_with_hydra(overrides: list[str]):
    from hydra import compose as hcompose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hcompose(config_name="train", overrides=overrides, return_hydra_config=True)


def expand(*args, **kwargs):
    from hydra_plugins.cpo_grid_sweeper.grid import expand_jobs

    return expand_jobs(*args, **kwargs)


def basic(params: dict, args: list[str]) -> list[list[str]]:
    """The job list of Hydra's basic sweeper for the same params and command line."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    texts = [f"{k}={v}" for k, v in params.items()] + args
    return BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(texts), None)[0]


# --------------------------------------------------------------------------- the job list


@pytest.mark.parametrize("params, args", [
    ({}, ["loss=cpo,sft", "beta=0.05,0.1"]),
    ({"seed": "1,2,3"}, ["loss=cpo,sft", "trainer.max_steps=3"]),
    ({"seed": "1,2,3", "loss": "cpo,dpo"}, ["seed=7", "beta=range(1,4)"]),         # the command line replaces params
    ({}, ["+x.y=1,2", "data.candidates=[a,b],[c]", "optim.lr=1e-4,3e-4", "name='a,b'"]),
])
def test_without_a_grid_the_jobs_are_the_basic_sweepers(params, args):
    assert expand(None, params, args) == basic(params, args)


def test_union_of_grids_in_order_with_params_crossed_and_duplicates_dropped():
    grid = [{"loss": ["sft_ref", "sft"], "optim.lr": [1e-4, 1e-3]},
            {"loss": ["dpo", "cpo"], "optim.lr": [1e-4, 1e-3], "beta": [0.1, 0.5]},
            {"loss": ["cpo"], "optim.lr": [1e-4], "beta": [0.1]}]            # already in block 2: dropped
    jobs = expand(grid, {"seed": "1,2"}, ["trainer.max_steps=3"])
    assert len(jobs) == (2 * 2 + 2 * 2 * 2) * 2
    assert jobs[0] == ["loss=sft_ref", "optim.lr=0.0001", "seed=1", "trainer.max_steps=3"]
    assert jobs[1] == ["loss=sft_ref", "optim.lr=0.0001", "seed=2", "trainer.max_steps=3"]   # seeds vary fastest
    assert jobs[8] == ["loss=dpo", "optim.lr=0.0001", "beta=0.1", "seed=1", "trainer.max_steps=3"]
    assert not any("beta" in o for j in jobs[:8] for o in j)                 # SFT is not run once per beta
    assert len({frozenset(j) for j in jobs}) == len(jobs)
    # A list value is one element of the sweep list; a string is Hydra's sweep syntax.
    assert expand([{"data.candidates": [["ref", "strong"], ["weak"]], "seed": "range(1,3)"}]) == [
        ["data.candidates=[ref,strong]", "seed=1"], ["data.candidates=[ref,strong]", "seed=2"],
        ["data.candidates=[weak]", "seed=1"], ["data.candidates=[weak]", "seed=2"]]


def test_command_line_selects_inside_the_grid():
    grid = [{"loss": ["sft"], "optim.lr": [1e-4, 1e-3]},
            {"loss": ["dpo", "cpo"], "optim.lr": [1e-4, 1e-3], "beta": [0.1, 0.5]}]
    assert expand(grid, {"seed": "1,2,3"}, ["loss=cpo", "optim.lr=1e-4", "seed=5"]) == [
        ["loss=cpo", "optim.lr=0.0001", "beta=0.1", "seed=5"], ["loss=cpo", "optim.lr=0.0001", "beta=0.5", "seed=5"]]
    # beta=0.1 keeps SFT (it has no beta) and 0.1 where beta is swept; 1e-3 == 0.001 as numbers
    jobs = expand(grid, None, ["beta=0.1", "optim.lr=0.001"])
    assert jobs == [["loss=sft", "optim.lr=0.001"], ["loss=dpo", "optim.lr=0.001", "beta=0.1"],
                    ["loss=cpo", "optim.lr=0.001", "beta=0.1"]]
    with pytest.raises(ValueError, match=r"optim.lr=0.002: not in the grid, where optim.lr takes 0.0001, 0.001"):
        expand(grid, None, ["optim.lr=0.002"])
    with pytest.raises(ValueError, match="seed: in both hydra.sweeper.grid and hydra.sweeper.params"):
        expand([{"seed": [1]}], {"seed": "1,2"})
    with pytest.raises(ValueError, match=r"hydra.sweeper.grid\[0\]: beta is an empty list"):
        expand([{"beta": []}])
    with pytest.raises(ValueError, match="cannot enumerate a INTERVAL_SWEEP"):
        expand([{"optim.lr": "interval(0,1)"}])


def test_varying_keys_read_the_sweep_from_multirun_yaml(tmp_path):
    from hydra_plugins.cpo_grid_sweeper.grid import varying_keys

    grid = [{"loss": ["sft"], "optim.lr": [1e-4, 1e-3]},
            {"loss": ["cpo"], "optim.lr": [1e-4, 1e-3], "beta": [0.1, 0.5]}]
    task = ["experiment=x", "trainer.max_steps=3", "model=tiny,tiny_lora"]
    OmegaConf.save({"hydra": {"overrides": {"task": task}}}, tmp_path / "multirun.yaml")
    hc = OmegaConf.create({"sweep": {"dir": str(tmp_path)}, "sweeper": {"grid": grid, "params": {"seed": "1,2"}},
                           "overrides": {"task": ["loss=cpo", "optim.lr=0.0001", "beta=0.1", "seed=1", "model=tiny"]}})
    assert varying_keys(hc) == {"loss", "optim.lr", "beta", "seed", "model"}
    # what the command line fixed does not vary
    assert varying_keys(hc, arguments=["loss=cpo", "seed=1"]) == {"optim.lr", "beta"}


# --------------------------------------------------------------------------- the experiment files


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_is_a_grid_with_five_seeds_that_composes(name):
    cfg = compose_with_hydra([f"experiment={name}"])
    sw = cfg.hydra.sweeper
    assert sw._target_ == "hydra_plugins.cpo_grid_sweeper.grid_sweeper.GridSweeper"
    assert str(sw.params.seed) == "1,2,3,4,5" and sw.grid
    assert cfg.trainer.val_check_interval < 1.0 and cfg.hydra.sweep.dir == f"multirun/{name}"
    jobs = expand(sw.grid, sw.params)
    assert len(jobs) % 5 == 0
    losses = {o.split("=", 1)[1] for j in jobs for o in j if o.startswith("loss=")}
    assert losses <= {p.stem for p in (REPO / "conf" / "loss").glob("*.yaml")} | {"orpo", "arpo"}
    for job in (jobs[0], jobs[-1]):  # the first and last jobs of the grid compose and resolve
        OmegaConf.to_container(compose([f"experiment={name}", *job]), resolve=True)


def test_loss_ablation_grid_is_the_protocol_and_fits_the_demo_budget():
    cfg = compose_with_hydra(["experiment=loss_ablation"])
    jobs = expand(cfg.hydra.sweeper.grid, cfg.hydra.sweeper.params)
    by_loss = {}
    for j in jobs:
        keys = dict(o.split("=", 1) for o in j)
        by_loss.setdefault(keys["loss"], set()).add(tuple(sorted(k for k in keys if k != "seed")))
    assert set(by_loss) == {"sft_ref", "sft", "dpo", "cpo"}
    assert all(keys == {("loss", "optim.lr")} for keys in by_loss.values())   # each loss over the same lr grid
    lrs = {o for j in jobs for o in j if o.startswith("optim.lr=")}
    # 4 learning rates x 4 losses x 5 seeds; measured 7.4 minutes here with launcher=local_parallel (README).
    assert len(lrs) == 4 and len(jobs) == 80


# --------------------------------------------------------------------------- the sweeper in a Hydra app

TOY_APP = '''
import os, sys
import hydra
from hydra.core.hydra_config import HydraConfig

@hydra.main(config_path="conf", config_name="app", version_base="1.3")
def main(cfg):
    hc = HydraConfig.get()
    out = os.path.join(hc.runtime.output_dir, "done")
    if os.path.exists(out):
        print("skip", hc.job.num, flush=True)
        return
    if str(hc.job.num) == os.environ.get("STOP_AT"):
        if os.environ.get("STOP_KIND") == "interrupted":
            from cpo.runs import RunInterrupted
            raise RunInterrupted(15)
        sys.exit(int(os.environ.get("STOP_CODE", "2")))
    open(out, "w").write(" ".join(hc.overrides.task))


if __name__ == "__main__":
    main()
'''


@pytest.fixture
def toy_app(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.yaml").write_text(textwrap.dedent("""\
        defaults:
          - _self_
          - override hydra/sweeper: cpo_grid
        a: 0
        b: 0
        seed: 0
        hydra:
          sweep: {dir: out, subdir: "${hydra.job.num}_${hydra.job.override_dirname}"}
        """))
    (tmp_path / "app.py").write_text(TOY_APP)
    return tmp_path


def run_app(app: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))  # the plugin is found from the repository root
    return subprocess.run([sys.executable, "app.py", "-m", *args], cwd=app, env=e, capture_output=True, text=True,
                          timeout=120)


def _done(folder: Path) -> dict[str, str]:
    return {d.name: (d / "done").read_text() for d in sorted(folder.iterdir()) if (d / "done").is_file()}


def test_plain_command_line_sweep_runs_as_the_basic_sweeper(toy_app):
    args = ["a=1,2", "b=x,y", "seed=3"]
    mine = run_app(toy_app, *args)
    assert mine.returncode == 0, mine.stderr
    theirs = run_app(toy_app, *args, "hydra/sweeper=basic", "hydra.sweep.dir=basic_out")
    assert theirs.returncode == 0, theirs.stderr
    assert _done(toy_app / "out") == _done(toy_app / "basic_out") and len(_done(toy_app / "out")) == 4
    assert (toy_app / "out" / "multirun.yaml").is_file()
    assert OmegaConf.load(toy_app / "out" / "multirun.yaml").hydra.overrides.task == args


def test_interrupted_job_stops_the_sweep_and_a_relaunch_continues(toy_app):
    args = ["a=1,2,3", "b=x,y", "hydra.sweeper.max_batch_size=4"]   # two batches: #0-#3, #4-#5
    p = run_app(toy_app, *args, env={"STOP_AT": "2", "STOP_KIND": "interrupted"})
    assert p.returncode == 143, p.stderr
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("sweep stopped")]
    assert line == ["sweep stopped: job #2 (a=2 b=x) was interrupted (exit code 143); did not run: #3-#5 (3 jobs); "
                    "re-launch the same command to continue"]
    assert sorted(_done(toy_app / "out")) == ["0_a=1,b=x", "1_a=1,b=y"]
    p = run_app(toy_app, *args)
    assert p.returncode == 0, p.stderr
    assert "skip 0" in p.stdout and "skip 1" in p.stdout and "skip 2" not in p.stdout
    assert len(_done(toy_app / "out")) == 6
    # A plain non-zero exit (an app's error) stops the sweep the same way, with its own code.
    p = run_app(toy_app, "a=7,8", "hydra.sweep.dir=out2", env={"STOP_AT": "0"})
    assert p.returncode == 2 and "sweep stopped: job #0 (a=7) exited with code 2; did not run: #1 (1 jobs)" in p.stderr
    # A diverged job (exit 3) is a result of the grid: the sweep runs on and ends with 3, naming it.
    p = run_app(toy_app, "a=7,8", "hydra.sweep.dir=out3", env={"STOP_AT": "0", "STOP_CODE": "3"})
    assert p.returncode == 3 and "1 of 2 jobs diverged and have no results: #0 (a=7)" in p.stderr
    assert list(_done(toy_app / "out3")) == ["1_a=8"]


def test_grid_error_is_one_sentence(toy_app):
    p = run_app(toy_app, "hydra.sweeper.grid=[{a:[1,2]}]", "a=5")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == ("error: a=5: not in the grid, where a takes 1, 2; choose among those, or give another "
                                "grid (hydra.sweeper.grid=...)")


def test_parallel_launcher_passes_the_interruption_back(toy_app):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    p = run_app(toy_app, "a=1,2,3", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", env={"STOP_AT": "1"})
    assert p.returncode == 2, p.stderr
    assert ("sweep stopped: job #1 (a=2) exited with code 2; the other jobs of its parallel batch (#0, #2) may not "
            "have finished") in p.stderr


@pytest.mark.slow
def test_submitit_launcher_brings_the_exit_back_as_a_result(toy_app):
    """submitit runs jobs in other processes (SLURM): an exit there would read "no output"; here it is one line."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    p = run_app(toy_app, "a=1,2,3", "hydra/launcher=submitit_local", "hydra.sweeper.max_batch_size=2",
                env={"STOP_AT": "1", "STOP_KIND": "interrupted"})
    assert p.returncode == 143, p.stderr[-2000:]
    assert ("sweep stopped: job #1 (a=2) was interrupted (exit code 143); did not run: #2 (1 jobs); "
            "re-launch the same command to continue") in p.stderr
    assert sorted(_done(toy_app / "out")) == ["0_a=1"]


# --------------------------------------------------------------------------- one real sweep, then compare


@pytest.mark.slow
def test_real_grid_sweep_through_train_py_then_selection(tmp_path):
    """SFT at one learning rate and CPO at two (a union of two grids), one seed, through train.py and compare.py."""
    sweep = tmp_path / "sweep"
    grid = "[{loss:[sft],optim.lr:[1e-3]},{loss:[cpo],optim.lr:[1e-4,1e-3]}]"
    cmd = [sys.executable, "train.py", "-m", "hydra/sweeper=cpo_grid", f"hydra.sweeper.grid={grid}", "seed=1",
           "trainer.max_steps=3", "trainer.val_check_interval=2", "logger=csv", "save_policy=false",
           f"hydra.sweep.dir={sweep}",
           "hydra.sweep.subdir=${hydra.job.num}",  # the small-demo overrides make too long a folder name
           "evaluate.during_training.max_sentences=8", *SMALL_DEMO]
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    p = subprocess.run(cmd, cwd=REPO, env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    done = sorted((d for d in sweep.iterdir() if (d / "results.json").is_file()), key=lambda d: int(d.name))
    grid_overrides = [[o for o in OmegaConf.load(d / ".hydra" / "overrides.yaml")
                       if o.split("=")[0] in ("loss", "optim.lr", "seed")]
                      for d in done]
    assert grid_overrides == [["loss=sft", "optim.lr=0.001", "seed=1"], ["loss=cpo", "optim.lr=0.0001", "seed=1"],
                              ["loss=cpo", "optim.lr=0.001", "seed=1"]]
    c = subprocess.run([sys.executable, "scripts/compare.py", f"sweep={sweep}", "select_by=val/chrf",
                        "bootstrap.samples=200"],
                       cwd=REPO, env=dict(env, MPLBACKEND="Agg"), capture_output=True, text=True, timeout=300)
    assert c.returncode == 0, c.stderr[-3000:]
    manifest = json.loads((sweep / "report.json").read_text())
    grid_rows = {r["config"]: r for r in pd.read_csv(sweep / "report.csv").to_dict("records")}
    cpo = [grid_rows["loss=cpo,optim.lr=0.0001"], grid_rows["loss=cpo,optim.lr=0.001"]]
    best = max(cpo, key=lambda r: (r["val/chrf_mean"], r["runs"]))
    assert manifest["methods"]["loss=cpo"]["selected"] == best["config"] and best["selected"]
    assert manifest["methods"]["loss=sft"]["selected"] == "loss=sft,optim.lr=0.001"
    assert manifest["protocol"]["baseline"] == "loss=sft" and manifest["protocol"]["select_by"] == "val/chrf"
    assert {c["metric"] for c in manifest["comparisons"]} >= {"bleu", "chrf", "demo_qe"}
    md = (sweep / "report.md").read_text()
    assert "## Significance vs SFT (preferred)" in md and "CPO vs SFT (preferred) on BLEU:" in c.stdout
