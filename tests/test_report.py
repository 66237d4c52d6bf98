"""cpo.report and scripts/compare.py on a hand-made sweep, and notebooks/ablations.ipynb run headless."""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from cpo import report

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# (config overrides, seed) -> hand-written final metrics. Two configurations x two seeds.
VALUES = {
    ("cpo", 1): dict(acc=0.80, lacc=0.70, margin=1.0, lmargin=10.0, nll=0.30, bleu=30.0, chrf=55.0, qe=0.80, b_bleu=28.0, b_chrf=54.0, b_qe=0.75, b_acc=0.6),
    ("cpo", 2): dict(acc=0.90, lacc=0.80, margin=1.4, lmargin=14.0, nll=0.34, bleu=32.0, chrf=57.0, qe=0.84, b_bleu=28.0, b_chrf=54.0, b_qe=0.75, b_acc=0.6),
    ("sft", 1): dict(acc=0.60, lacc=0.60, margin=0.5, lmargin=5.0, nll=0.20, bleu=31.0, chrf=54.0, qe=0.76, b_bleu=28.0, b_chrf=54.0, b_qe=0.75, b_acc=0.6),
    ("sft", 2): dict(acc=0.70, lacc=0.62, margin=0.7, lmargin=7.0, nll=0.22, bleu=33.0, chrf=55.0, qe=0.78, b_bleu=28.0, b_chrf=54.0, b_qe=0.75, b_acc=0.6),
}


def _results(loss: str, seed: int, beta: float, v: dict) -> dict:
    return {
        "config": {"seed": seed, "beta": beta, "loss": {"name": loss, "beta": beta}},
        "loss": loss, "beta": beta, "seed": seed, "trainable_parameters": 1000, "global_steps": 30,
        "fit_seconds": 1.0, "total_seconds": 2.0,
        "val": {
            "val/loss": v["nll"] + 0.4, "val/nll_loss": v["nll"], "val/rewards/accuracies": v["acc"],
            "val/logps/accuracies": v["lacc"], "val/rewards/margins": v["margin"], "val/logps/margins": v["lmargin"],
            "val/bleu": v["bleu"], "val/chrf": v["chrf"], "val/demo_qe": v["qe"],
        },
        "train": {"train/loss": 0.5, "train/rewards/margins": 1.0, "train/rewards/accuracies": 0.8},
        "before": {"pref_accuracy": v["b_acc"], "logp_margin": 5.0, "pairs": 10, "bleu": v["b_bleu"], "chrf": v["b_chrf"],
                   "demo_qe": v["b_qe"], "bleu_signature": "nrefs:1"},
        "after": {"pref_accuracy": v["lacc"], "logp_margin": v["lmargin"], "pairs": 10, "bleu": v["bleu"], "chrf": v["chrf"],
                  "demo_qe": v["qe"], "bleu_signature": "nrefs:1"},
    }


def _csv(seed: int, with_rewards: bool) -> str:
    """A sparse Lightning CSVLogger file: train rows at ``steps``, val rows at 19 and 29."""
    cols = ["epoch", "step", "train/loss", "train/rewards/margins", "train/rewards/accuracies", "val/loss", "val/logps/accuracies", "val/nll_loss"]
    rows = [",".join(cols)]
    steps = [9, 19, 29] if seed == 1 else [9, 19, 24, 29]  # seeds log on different steps: interpolated
    for s in steps:
        loss = 1.0 - s / 50 + seed * 0.05
        rew = [f"{s / 20 + seed * 0.1:.4f}", f"{0.5 + s / 100:.4f}"] if with_rewards else ["", ""]
        rows.append(",".join(["0", str(s), f"{loss:.4f}", *rew, "", "", ""]))
        if s in (19, 29):
            rows.append(",".join(["0", str(s), "", "", "", f"{loss + 0.1:.4f}", f"{0.6 + s / 100:.4f}", f"{0.3 - s / 1000:.4f}"]))
    return "\n".join(rows) + "\n"


def _write_job(root: Path, num: int, overrides: list[str], results: dict | None, csv: str | None) -> Path:
    name = f"{num}_" + ",".join(o for o in overrides if not o.startswith("trainer.max_steps"))
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if results is not None:
        (d / "results.json").write_text(json.dumps(results))
    if csv is not None:
        (d / "csv").mkdir()
        (d / "csv" / "metrics.csv").write_text(csv)
    return d


def make_sweep(root: Path, configs=(("cpo", None, "cpo"), ("sft", None, "sft")), failed: bool = True) -> Path:
    """One job per (loss, beta or None, VALUES key) x seed=1,2, plus a crashed cpo seed=3 job if ``failed``."""
    root.mkdir(parents=True, exist_ok=True)
    num = 0
    for loss, beta, key in configs:
        for seed in (1, 2):
            ov = [f"loss={loss}"] + ([f"beta={beta}"] if beta is not None else []) + [f"seed={seed}", "trainer.max_steps=30", "trainer.val_check_interval=15"]
            _write_job(root, num, ov, _results(loss, seed, beta or 0.1, VALUES[(key, seed)]), _csv(seed, with_rewards=loss == "cpo"))
            num += 1
    if failed:
        d = _write_job(root, num, ["loss=cpo", "seed=3", "trainer.max_steps=30", "trainer.val_check_interval=15"], None, None)
        (d / "train.log").write_text("starting\nRuntimeError: CUDA out of memory\n")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


@pytest.fixture
def sweep(tmp_path) -> Path:
    return make_sweep(tmp_path / "sweep")


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 5000


# --------------------------------------------------------------------------- loading and aggregation


def test_load_sweep_labels_and_failed_job(sweep):
    jobs = report.load_sweep(sweep)
    assert [j.label for j in jobs] == ["loss=cpo"] * 2 + ["loss=sft"] * 2 + ["loss=cpo"]
    assert [j.seed for j in jobs] == [1, 2, 1, 2, 3]
    assert [j.ok for j in jobs] == [True] * 4 + [False]
    bad = jobs[-1]
    assert "no results.json" in bad.error and "CUDA out of memory" in bad.error
    assert report.common_overrides(jobs) == {"trainer.max_steps": "30"}
    assert "trainer.val_check_interval" not in jobs[0].config_overrides
    curve = jobs[0].curve
    assert list(curve["step"]) == [9, 19, 19, 29, 29] and curve["train/loss"].notna().sum() == 3


def test_aggregate_matches_hand_computation(sweep):
    df = report.aggregate(report.load_sweep(sweep)).set_index("config")
    assert list(df.index) == ["loss=cpo", "loss=sft"]
    assert df.loc["loss=cpo", "runs"] == 2 and df.loc["loss=cpo", "failed"] == 1 and df.loc["loss=sft", "failed"] == 0
    assert df.loc["loss=cpo", "seeds"] == "1,2"
    checks = {
        "val/rewards/accuracies": "acc", "val/logps/accuracies": "lacc", "val/rewards/margins": "margin",
        "val/logps/margins": "lmargin", "val/nll_loss": "nll", "test/bleu": "bleu", "test/chrf": "chrf", "test/demo_qe": "qe",
    }
    for loss in ("cpo", "sft"):
        vals = [VALUES[(loss, s)] for s in (1, 2)]
        row = df.loc[f"loss={loss}"]
        for metric, key in checks.items():
            xs = [v[key] for v in vals]
            assert row[f"{metric}_mean"] == pytest.approx(statistics.mean(xs)), metric
            assert row[f"{metric}_std"] == pytest.approx(statistics.stdev(xs)), metric
            assert row[f"{metric}_n"] == 2
        for metric, (a, b) in {"delta/bleu": ("bleu", "b_bleu"), "delta/chrf": ("chrf", "b_chrf"),
                               "delta/demo_qe": ("qe", "b_qe"), "delta/pref_accuracy": ("lacc", "b_acc")}.items():
            xs = [v[a] - v[b] for v in vals]
            assert row[f"{metric}_mean"] == pytest.approx(statistics.mean(xs)), metric
            assert row[f"{metric}_std"] == pytest.approx(statistics.stdev(xs)), metric
    # No QE/COMET scorer beyond demo_qe, no test/pref_accuracy (it is on the validation pairs).
    assert [m for m in report.metric_names(df) if m.startswith("test/")] == ["test/bleu", "test/chrf", "test/demo_qe"]


def test_best_marking(sweep):
    df = report.aggregate(report.load_sweep(sweep)).set_index("config")
    best = {m: list(df.index[df[f"{m}_best"]]) for m in report.metric_names(df)}
    assert best["val/rewards/accuracies"] == ["loss=cpo"]       # 0.85 vs 0.65
    assert best["val/nll_loss"] == ["loss=sft"]                  # lower is better: 0.21 vs 0.32
    assert best["test/bleu"] == ["loss=sft"]                     # 32 vs 31
    assert best["test/chrf"] == ["loss=cpo"]                     # 56 vs 54.5
    assert best["delta/pref_accuracy"] == ["loss=cpo"]
    assert not report.higher_is_better("val/nll_loss") and not report.higher_is_better("val/loss")
    assert report.higher_is_better("test/demo_qe") and report.higher_is_better("val/logps/margins")
    assert report.clearly_best(df.reset_index(), "val/logps/margins")  # 12 ± 2.83 vs 6 ± 1.41
    assert not report.clearly_best(df.reset_index(), "test/bleu")     # 32 ± 1.41 vs 31 ± 1.41
    # a tie marks both; a single configuration marks nothing
    assert list(report.best_mask(pd.Series([1.0, 1.0, 0.5]), True)) == [True, True, False]
    assert not report.best_mask(pd.Series([1.0, math.nan]), True).any()


def test_write_report_files_and_plots(sweep):
    jobs = report.load_sweep(sweep)
    manifest = report.write_report(jobs, report.aggregate(jobs), sweep)
    md = (sweep / "report.md").read_text()
    assert "| `loss=cpo` | 2 (+1 failed) |" in md
    assert "**0.850 ± 0.071 (2)**" in md              # cpo's val/rewards/accuracies: best, bold
    assert "0.650 ± 0.071 (2)" in md and "**0.650" not in md
    assert "val/nll_loss ↓" in md and "Higher is better" in md
    assert "## Failed jobs" in md and "4_loss=cpo,seed=3" in md and "CUDA out of memory" in md
    csv = pd.read_csv(sweep / "report.csv")
    assert {"config", "loss", "runs", "failed", "seeds", "test/chrf_mean", "test/chrf_std", "test/chrf_n", "test/chrf_best"} <= set(csv.columns)
    assert csv.loc[csv.config == "loss=sft", "test/chrf_mean"].item() == pytest.approx(54.5)
    assert manifest["failed"][0]["job"].startswith("4_") and manifest["completed"] == 4
    names = sorted(p.name for p in (sweep / "plots").glob("*.png"))
    assert names == ["curves_train.png", "curves_val.png", "test_deltas.png", "test_metrics.png"]
    assert all(_is_png(sweep / "plots" / n) for n in names)
    assert "metrics vs beta" in manifest["skipped_plots"] and "skipped: the sweep does not vary beta" in md
    assert not list(sweep.glob(".*.tmp")) and not list((sweep / "plots").glob(".*.tmp"))


def test_beta_plot_and_absent_data(tmp_path):
    configs = [("cpo", 0.1, "cpo"), ("cpo", 1.0, "sft"), ("simpo", 0.1, "sft"), ("simpo", 1.0, "cpo")]
    sweep = make_sweep(tmp_path / "beta", configs, failed=False)
    jobs = report.load_sweep(sweep)
    assert report.varying_keys(jobs) == ["loss", "beta"]
    assert [j.label for j in jobs[::2]] == ["loss=cpo,beta=0.1", "loss=cpo,beta=1.0", "loss=simpo,beta=0.1", "loss=simpo,beta=1.0"]
    m = report.write_report(jobs, None, sweep)
    assert m["plots"]["metrics vs beta"] == "plots/beta.png" and _is_png(sweep / "plots" / "beta.png")

    # No before/after and no curves: those plots are skipped (and a stale file from last time removed).
    for d in sweep.iterdir():
        if (d / "results.json").is_file():
            r = json.loads((d / "results.json").read_text())
            r.pop("before"), r.pop("after")
            (d / "results.json").write_text(json.dumps(r))
            (d / "csv" / "metrics.csv").unlink()
    m = report.write_report(report.load_sweep(sweep), None, sweep)
    assert set(m["skipped_plots"]) >= {"training curves", "test metrics", "test deltas"}
    assert not (sweep / "plots" / "test_metrics.png").exists()
    md = (sweep / "report.md").read_text()
    assert "test metrics: skipped" in md and "test/bleu" not in md


def test_all_jobs_failed(tmp_path):
    root = tmp_path / "dead"
    _write_job(root, 0, ["loss=cpo", "seed=1"], None, None)
    jobs = report.load_sweep(root)
    m = report.write_report(jobs, None, root)
    assert m["completed"] == 0 and "No completed jobs" in (root / "report.md").read_text()
    with pytest.raises(FileNotFoundError, match="no job folders"):
        report.load_sweep(tmp_path)


def test_contrast(sweep):
    df = report.aggregate(report.load_sweep(sweep))
    c = report.contrast(df, "loss=sft").set_index("metric")
    assert c.loc["test/chrf", "diff"] == pytest.approx(56.0 - 54.5)
    assert c.loc["val/logps/margins", "beyond_spread"] and not c.loc["test/bleu", "beyond_spread"]
    assert not c.loc["val/nll_loss", "better"]  # cpo 0.32 vs sft 0.21: lower is better


# --------------------------------------------------------------------------- W&B conversion (no network)


class FakeRun(SimpleNamespace):
    def scan_history(self, page_size=1000):
        return iter(self.rows)


def _fake_run(name="beta=0.1,loss=cpo,seed=2", state="finished") -> FakeRun:
    return FakeRun(
        name=name, id="abc123", state=state, path=["me", "cpo", "abc123"],
        config={"config": {"seed": 2, "beta": 0.1, "loss": {"name": "cpo", "beta": 0.1}}, "trainable_parameters": 7},
        summary_metrics={"val/logps/accuracies": 0.8, "val/nll_loss": 0.3, "train/loss": 0.5, "test/bleu": 30.0,
                         "test/demo_qe": 0.8, "test/pref_accuracy": 0.8, "val/samples": {"_type": "table-file"},
                         "trainer/global_step": 29, "_step": 9},
        rows=[{"train/loss": 0.9, "trainer/global_step": 9, "_step": 0}, {"val/samples": {"_type": "table-file"}, "_step": 1},
              {"val/nll_loss": 0.3, "trainer/global_step": 14, "_step": 2}, {"train/loss": 0.5, "trainer/global_step": 19, "_step": 3}],
    )


def test_wandb_run_to_job():
    job = report.wandb_run_to_job(_fake_run())
    assert job.ok and job.seed == 2 and job.overrides == {"beta": "0.1", "loss": "cpo", "seed": "2"}
    assert job.results["val"] == {"val/logps/accuracies": 0.8, "val/nll_loss": 0.3}
    assert job.results["after"] == {"bleu": 30.0, "demo_qe": 0.8, "pref_accuracy": 0.8} and "before" not in job.results
    assert job.results["loss"] == "cpo" and job.path == "me/cpo/abc123"
    assert list(job.curve["step"]) == [9, 14, 19] and job.curve["train/loss"].dropna().tolist() == [0.9, 0.5]
    crashed = report.wandb_run_to_job(_fake_run(state="crashed"))
    assert not crashed.ok and "crashed" in crashed.error
    assert report.split_run_name("loss=cpo,optim.betas=[0.9,0.99],seed=1") == {"loss": "cpo", "optim.betas": "[0.9,0.99]", "seed": "1"}
    assert report.split_run_name("dazzling-sun-4") is None


def test_load_wandb_with_fake_api_and_offline_error():
    runs = [_fake_run("beta=0.1,loss=cpo,seed=1"), _fake_run("beta=0.1,loss=cpo,seed=2"), _fake_run("beta=0.1,loss=sft,seed=1")]
    calls = {}

    class Api:
        def runs(self, path, filters=None, lazy=True):
            calls.update(path=path, filters=filters)
            return runs

    jobs = report.load_wandb("cpo", "sweep-10-00-00", entity="me", api=Api())
    assert calls == {"path": "me/cpo", "filters": {"group": "sweep-10-00-00"}}
    assert [j.label for j in jobs] == ["loss=cpo", "loss=cpo", "loss=sft"]
    df = report.aggregate(jobs)
    assert "delta/bleu_mean" not in df.columns and df["test/bleu_n"].tolist() == [2, 1]

    class Offline:
        def runs(self, *a, **k):
            raise ConnectionError("Max retries exceeded with url: https://api.wandb.ai/graphql")

    with pytest.raises(report.WandbUnavailable, match="network access"):
        report.load_wandb("cpo", "g", api=Offline())


# --------------------------------------------------------------------------- the app and the notebook


def _run_compare(*args, cwd=REPO):
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_compare_app(sweep, tmp_path):
    p = _run_compare(f"sweep={sweep}")
    assert p.returncode == 0, p.stderr
    assert "| `loss=sft` |" in p.stdout and "4_loss=cpo,seed=3" in p.stderr
    assert (sweep / "report.md").is_file() and (sweep / "report.csv").is_file() and _is_png(sweep / "plots" / "curves_train.png")
    assert not (REPO / "compare.log").exists() and not (sweep / ".hydra").exists()
    # a relative sweep path and another output folder
    out = tmp_path / "elsewhere"
    p = _run_compare("sweep=sweep", f"out_dir={out}", "plots=false", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (out / "report.md").is_file() and not (out / "plots").exists()
    p = _run_compare(f"sweep={tmp_path / 'missing'}")
    assert p.returncode == 2 and "error:" in p.stderr and "no such sweep folder" in p.stderr


@pytest.fixture
def jupyter_env(tmp_path, monkeypatch):
    """A python3 kernelspec for this interpreter in a temp prefix (nothing under $HOME)."""
    prefix = tmp_path / "jupyter"
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", "python3"],
                   check=True, capture_output=True, timeout=120)
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] == sys.executable
    return prefix


def test_notebook_committed_without_outputs():
    import nbformat

    nb = nbformat.read(REPO / "notebooks" / "ablations.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert any(c.cell_type == "markdown" and "seed spread" in c.source for c in nb.cells)


def test_notebook_runs_on_fake_report(sweep, jupyter_env, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    jobs = report.load_sweep(sweep)
    report.write_report(jobs, None, sweep)
    monkeypatch.setenv("CPO_REPORT_DIR", str(sweep))
    monkeypatch.delenv("CPO_BASELINE", raising=False)
    nb = nbformat.read(REPO / "notebooks" / "ablations.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert str(sweep) in text and "difference from the baseline 'loss=sft'" in text
