"""What the loggers receive: a flat W&B config, the before-training metrics, and logger=tensorboard."""
import pytest

from conftest import SMALL_DEMO, compose
from cpo.train.run import run

SHORT = SMALL_DEMO + ["trainer.max_steps=2", "save_policy=false", "evaluate.during_training.enabled=false"]


def test_wandb_config_is_flat_and_before_metrics_are_logged(tmp_path):
    from cpo.report import wandb_run_to_job
    from cpo.report.wandb_offline import read_finished_run

    res = run(compose(SHORT + ["logger=wandb", "optim.lr=3e-4"]), tmp_path)
    r = read_finished_run(next((tmp_path / "wandb_files" / "wandb").glob("offline-run-*")))
    c = r["config"]
    # W&B filters and groups runs on top-level keys: the resolved settings are there under their dotted names.
    assert (c["loss.name"], c["optim.lr"], c["beta"], c["model.name"], c["data.batch_size"]) == (
        "cpo", 3e-4, 0.1, "tiny", 8)
    assert "config" not in c and c["provenance"]["git"]["commit"] and c["trainable_parameters"] > 0
    history = set().union(*r["history"])
    before = {f"before/{k}" for k, v in res["before"].items()
              if isinstance(v, (int, float)) and k not in ("pairs", "sentences")}  # counts, not metrics
    assert before and before <= history and {"test/bleu", "test/demo_qe"} <= history
    first = next(row for row in r["history"] if "before/bleu" in row)
    assert first["before/bleu"] == pytest.approx(res["before"]["bleu"])
    # compare.py's W&B source reads the flat config back into the resolved config's shape.
    run_ = type("Run", (), {"name": "loss=cpo,seed=42", "id": "x", "state": "finished", "config": c,
                            "summary_metrics": {"val/loss": 1.0, "trainer/global_step": 2}, "path": []})()
    job = wandb_run_to_job(run_, history=[])
    assert job.results["config"]["optim"]["lr"] == 3e-4 and job.results["loss"] == "cpo"


def test_tensorboard_logger_writes_events_beside_the_csv(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = run(compose(SHORT + ["logger=tensorboard", "trainer.log_every_n_steps=1"]), tmp_path)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and (tmp_path / "csv" / "metrics.csv").is_file() and not (tmp_path / "wandb_files").exists()
    acc = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "val/loss", "before/bleu", "test/bleu"} <= tags
    assert acc.Scalars("before/bleu")[0].value == pytest.approx(res["before"]["bleu"], rel=1e-6)
