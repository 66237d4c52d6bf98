"""The callbacks group: early stopping on a validation metric, and policy/ = the best validation's policy."""
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from conftest import SMALL_DEMO, compose
from cpo.errors import ConfigError
from cpo.train.policy_selection import BestPolicy, metric_mode, resolve_monitor, validation_metrics

# Validation every 2 optimizer steps on the preference pairs only (no translations: fast).
WATCHED = SMALL_DEMO + ["logger=csv", "evaluate.before_after=false", "evaluate.during_training.enabled=false",
                        "trainer.val_check_interval=2", "trainer.log_every_n_steps=1", "optim.lr=1e-3"]


def test_off_by_default_and_several_can_be_chosen():
    assert dict(compose(SMALL_DEMO).callbacks) == {}
    assert dict(compose(["model=alma-13b-lora", "data=alma_r_preference"]).callbacks) == {}
    both = compose(["callbacks=[early_stopping,best_policy]"]).callbacks
    assert list(both) == ["early_stopping", "best_policy"]
    assert both.early_stopping._target_.endswith("EarlyStoppingOnMetric") and both.best_policy.monitor == "auto"


def test_monitor_auto_is_what_compare_selects_on_and_mode_follows_the_metric():
    cfg = compose(SMALL_DEMO)
    data = SimpleNamespace(dev=object())
    translation, preference = validation_metrics(cfg, data, [SimpleNamespace(name="demo_qe")], val_pairs=10)
    assert resolve_monitor("auto", "k", translation, preference) == "val/demo_qe"
    translation, _ = validation_metrics(cfg, data, [], val_pairs=10)
    assert resolve_monitor("auto", "k", translation, preference) == "val/chrf"
    off = compose(SMALL_DEMO + ["evaluate.during_training.enabled=false"])
    translation, preference = validation_metrics(off, data, [], val_pairs=10)
    assert translation == [] and resolve_monitor("auto", "k", translation, preference) == "val/loss"
    assert resolve_monitor("logps/accuracies", "k", translation, preference) == "val/logps/accuracies"
    with pytest.raises(ConfigError, match=r"callbacks.x.monitor=val/bleu: this run does not log val/bleu at "
                                          r"validation; give one of val/loss"):
        resolve_monitor("val/bleu", "callbacks.x.monitor", translation, preference)
    with pytest.raises(ConfigError, match="validates nothing: give the data a validation split"):
        resolve_monitor("auto", "k", [], [])
    assert [metric_mode(m, "k") for m in ("val/bleu", "val/demo_qe", "val/ter", "val/nll_loss", "val/loss",
                                           "val/off_target", "val/logps/accuracies")] == \
        ["max", "max", "min", "min", "min", "min", "max"]
    with pytest.raises(ConfigError, match="the length ratio is best at 1"):
        metric_mode("val/length_ratio", "k")


def test_early_stopping_stops_when_the_metric_stops_improving(tmp_path):
    from cpo.train.run import run

    # min_delta so large that only the first validation counts as an improvement: the second one stops the run.
    res = run(compose(WATCHED + ["callbacks=early_stopping", "callbacks.early_stopping.patience=1",
                                 "callbacks.early_stopping.min_delta=1e9", "trainer.max_steps=20"]), tmp_path / "a")
    assert res["global_steps"] == 4
    assert res["early_stopping"] == {**res["early_stopping"], "monitor": "val/loss", "mode": "min", "stopped_step": 4}
    plain = run(compose(WATCHED + ["trainer.max_steps=6", "save_policy=false"]), tmp_path / "b")
    assert plain["global_steps"] == 6 and "early_stopping" not in plain and "policy_selection" not in plain


def test_policy_is_the_best_validation_and_the_last_is_kept_beside_it(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from cpo.train.run import run

    # CPO pushes the rejected side's log-prob down, so its highest value is at an early validation, not the last.
    res = run(compose(WATCHED + ["model=tiny_lora", "trainer.max_steps=6", "evaluate.before_after=true",
                                 "callbacks=best_policy", "callbacks.best_policy.monitor=val/logps/rejected"]),
              tmp_path)
    sel = res["policy_selection"]
    assert (sel["monitor"], sel["mode"], sel["last_step"]) == ("val/logps/rejected", "max", 6)
    curve = pd.read_csv(tmp_path / "csv" / "metrics.csv").dropna(subset=["val/logps/rejected"])
    best = curve.loc[curve["val/logps/rejected"].idxmax()]
    assert sel["best_step"] == int(best["step"]) + 1  # the CSV row of a validation carries the step before it
    assert sel["best"] == pytest.approx(float(best["val/logps/rejected"]), rel=1e-5)
    assert sel["best_step"] < 6, "this setting was chosen so that the best validation is not the last"
    assert Path(res["policy_dir"]).name == "policy" and Path(res["policy_last_dir"]).name == "policy_last"
    assert f"best validation by `val/logps/rejected`" in (tmp_path / "policy" / "README.md").read_text()
    assert "These are the last weights (step 6)" in (tmp_path / "policy_last" / "README.md").read_text()

    def adapter(folder):
        base = AutoModelForCausalLM.from_pretrained(res["start_model"])
        model = PeftModel.from_pretrained(base, tmp_path / folder)
        return {k: v for k, v in model.state_dict().items() if "lora_" in k}

    best_w, last_w = adapter("policy"), adapter("policy_last")
    assert best_w.keys() == last_w.keys() and any(not torch.equal(best_w[k], last_w[k]) for k in best_w)
    saved = torch.load(tmp_path / "checkpoints" / "best_policy.pt", weights_only=True)
    assert saved["step"] == sel["best_step"]
    stored = {k.split("policy.", 1)[1].replace(".default", ""): v for k, v in saved["weights"].items()}
    loaded = {k.replace(".default", ""): v for k, v in best_w.items()}
    assert all(torch.equal(loaded[k], stored[k]) for k in loaded)  # policy/ holds exactly the best step's adapter


class _Module(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.policy = torch.nn.Linear(2, 2)
        self.frozen = torch.nn.Linear(2, 2).requires_grad_(False)


def _validate(cb, module, trainer, step, value):
    trainer.global_step, trainer.callback_metrics = step, {"val/demo_qe": torch.tensor(value)}
    with torch.no_grad():
        module.policy.weight.fill_(float(step))
    cb.on_validation_end(trainer, module)


def test_best_policy_keeps_the_best_weights_and_checks_its_file_on_restore(tmp_path):
    module = _Module()
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), sanity_checking=False, is_global_zero=True)
    cb = BestPolicy("val/demo_qe", "max")
    cb.setup(trainer, module, "fit")
    for step, value in [(2, 0.5), (4, 0.9), (6, 0.7), (8, float("nan"))]:
        _validate(cb, module, trainer, step, value)
    assert cb.step == 4 and cb.best == pytest.approx(0.9)
    weights = cb.restore(module)
    assert torch.equal(module.policy.weight, torch.full((2, 2), 4.0)) and set(weights) == {"policy.weight",
                                                                                             "policy.bias"}
    resumed = BestPolicy("val/demo_qe", "max")  # a resumed run: its state from the checkpoint, the file on disk
    resumed.setup(trainer, module, "fit")
    resumed.load_state_dict({**cb.state_dict(), "step": 2})
    with pytest.raises(ConfigError, match="holds the weights of step 4, but this run's best validation was at step 2"):
        resumed.restore(module)
    trainer.callback_metrics = {}
    with pytest.raises(ConfigError, match="monitor=val/demo_qe was not logged"):
        cb.on_validation_end(trainer, module)


def test_best_policy_is_refused_under_a_sharded_strategy():
    from cpo.train.policy_selection import build_selection_callbacks

    cfg = compose(SMALL_DEMO + ["callbacks=best_policy", "build_in_configure_model=true"])
    with pytest.raises(ConfigError, match="not kept under a sharded strategy"):
        build_selection_callbacks(cfg, SimpleNamespace(dev=None), [], val_pairs=10)


def test_both_on_the_demos_translation_metric_and_results_record_them(tmp_path):
    """monitor=auto on the demo is val/demo_qe, scored on translations at each validation; results.json (what
    compare.py and a colleague read) says which step policy/ is."""
    from cpo.train.run import run

    run(compose(WATCHED + ["callbacks=[early_stopping,best_policy]", "trainer.max_steps=4", "save_policy=false",
                           "evaluate.during_training.enabled=true"]), tmp_path)
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["policy_selection"]["monitor"] == r["early_stopping"]["monitor"] == "val/demo_qe"
    assert r["policy_selection"]["mode"] == "max" and r["policy_selection"]["best_step"] in (2, 4)
    assert r["config"]["callbacks"]["best_policy"]["_target_"].endswith("BestPolicy")
