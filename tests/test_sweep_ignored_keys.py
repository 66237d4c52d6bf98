"""A key a method ignores (beta under SFT) is not swept: the grid sweeper runs such jobs once and says so."""
import logging
from types import SimpleNamespace

from conftest import compose


def _sweeper(calls):
    from hydra_plugins.cpo_grid_sweeper.grid_sweeper import GridSweeper

    cfg = compose([])
    sw = GridSweeper(ignored_keys="cpo.train.sweeps.ignored_keys", ignorable=["beta", "loss.beta"])

    def load_sweep_config(master, overrides):
        calls.append(list(overrides))
        return compose(overrides)

    sw.config = cfg
    sw.hydra_context = SimpleNamespace(config_loader=SimpleNamespace(load_sweep_config=load_sweep_config))
    return sw


def test_sft_runs_once_whatever_beta_and_the_sweep_says_so(caplog):
    from hydra_plugins.cpo_grid_sweeper.grid import expand_jobs

    calls = []
    sw = _sweeper(calls)
    jobs = expand_jobs(None, {}, ["loss=cpo,sft,sft_ref,dpo", "beta=0.05,0.1", "seed=1,2"])
    with caplog.at_level(logging.INFO):
        kept = sw.drop_ignored(jobs)
    assert len(jobs) == 16 and len(kept) == 4 + 2 + 2 + 4
    assert ["loss=sft", "seed=1"] in kept and ["loss=sft", "seed=2"] in kept and not any(
        "beta" in o for j in kept if j[0].startswith("loss=sft") for o in j)
    assert ["loss=cpo", "beta=0.05", "seed=1"] in kept and ["loss=dpo", "beta=0.1", "seed=2"] in kept
    assert "loss=sft,sft_ref ignores beta: 8 jobs run as 4 (beta=0.05,0.1 left out)" in caplog.text
    assert len(calls) == 8  # one composition per job without its beta (the answer cannot depend on beta)


def test_a_grid_without_the_keys_composes_nothing_and_changes_nothing():
    from hydra_plugins.cpo_grid_sweeper.grid import expand_jobs

    calls = []
    sw = _sweeper(calls)
    jobs = expand_jobs([{"loss": ["sft_ref", "sft", "dpo", "cpo"], "optim.lr": [1e-4, 1e-3]}], {"seed": "1,2"})
    assert sw.drop_ignored(jobs) == jobs and calls == []
    assert sw.drop_ignored(expand_jobs(None, {}, ["loss=cpo,dpo", "beta=0.1,0.5"])) == expand_jobs(
        None, {}, ["loss=cpo,dpo", "beta=0.1,0.5"])


def test_the_train_config_names_the_function():
    from test_protocol import compose_with_hydra

    sw = compose_with_hydra(["experiment=loss_ablation"]).hydra.sweeper
    assert sw.ignored_keys == "cpo.train.sweeps.ignored_keys" and list(sw.ignorable) == ["beta", "loss.beta"]
    from cpo.train.sweeps import ignored_keys

    assert ignored_keys(compose(["loss=sft"])) == ["beta", "loss.beta"] and ignored_keys(compose(["loss=cpo"])) == []
