"""Reports that hold up in small sweeps: clipped intervals, few seeds said, curves that stay visible, every method's
training curve, a key a method ignores, readable names and PDF figures (cpo.report)."""
import json
from pathlib import Path

import pytest

from cpo import report
from cpo.report.figures import HEALTH_CURVES, TRAIN_CURVES, VAL_CURVES, curves_figure
from report_fixtures import PROTOCOL, make_protocol_sweep, make_test_rows, results, translations, write_job

FAST = 50


def _analyze(root: Path, **kw):
    return report.analyze(report.load_sweep(root), select_by="val/demo_qe", baseline="sft", bootstrap_samples=FAST,
                          **kw)


def _lines(fig, title: str):
    ax = next(ax for ax in fig.axes if ax.get_title().startswith(title))
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_figures_are_pdf_beside_png_and_tables_use_readable_names(tmp_path):
    root = make_protocol_sweep(tmp_path / "sw", failed=False)
    m = report.write_report(_analyze(root), root, samples=FAST)
    assert m["plots"] and set(m["plots"]) == set(m["plots_pdf"])
    for png, pdf in zip(m["plots"].values(), m["plots_pdf"].values()):
        assert (root / png).read_bytes()[:4] == b"\x89PNG" and (root / pdf).read_bytes()[:5] == b"%PDF-"
    md = (root / "report.md").read_text()
    assert "| SFT (preferred) (baseline) | learning rate 0.001 |" in md
    assert "optim.lr=" not in md.split("## Every grid point")[0]


def _set_after(root: Path, values: dict[int, float], key: str, loss: str) -> None:
    for d in root.iterdir():
        f = d / "results.json"
        if f.is_file() and d.name.split("_", 1)[1].startswith(f"loss={loss},"):
            r = json.loads(f.read_text())
            r["after"][key] = values[r["seed"]]
            f.write_text(json.dumps(r))


def test_intervals_are_clipped_to_the_metrics_range(tmp_path):
    from cpo.report.stats import summarize

    root = make_protocol_sweep(tmp_path / "sw", failed=False, extra_after={"off_target": 0.0})
    _set_after(root, {1: 0.0, 2: 0.0, 3: 0.03}, "off_target", "cpo")
    raw = summarize([0.0, 0.0, 0.03])
    assert raw.lo < 0  # the t-interval of a rate near 0 reaches below 0 ...
    a = _analyze(root)
    row = a.grid[a.grid["config"] == "loss=cpo,optim.lr=0.0001,beta=0.1"].iloc[0]
    assert row["test/off_target_lo"] == 0.0 and row["test/off_target_hi"] == pytest.approx(raw.hi)  # ... not here
    assert (a.grid["test/bleu_hi"].dropna() <= 100).all()
    md = report.render_markdown(a, "s", {}, {}, root, FAST)
    assert "clipped to the metric's range" in md and "[0.000, " in md.split("## Health of the translations")[1]


@pytest.mark.slow
def test_fewer_than_three_seeds_say_the_interval_is_not_meaningful(tmp_path):
    root = make_protocol_sweep(tmp_path / "two", seeds=(1, 2), failed=False)
    m = report.write_report(_analyze(root), root, samples=FAST)
    md, tex = (root / "report.md").read_text(), (root / "report.tex").read_text()
    assert m["few_seeds"] == {"SFT (preferred)": 2, "CPO": 2, "DPO": 2}
    assert "**Fewer than 3 seeds: SFT (preferred) (2), CPO (2), DPO (2). Their t-interval is not meaningful" in md
    assert "Fewer than 3 seeds" in tex
    three = make_protocol_sweep(tmp_path / "three", failed=False)
    report.write_report(_analyze(three), three, samples=FAST)
    assert "Fewer than 3 seeds" not in (three / "report.md").read_text()


def _curve(rows: list[dict]) -> str:
    cols = sorted({k for r in rows for k in r} - {"step"})
    lines = [",".join(["epoch", "step", *cols])]
    lines += [",".join(["0", str(r["step"]), *(str(r.get(c, "")) for c in cols)]) for r in rows]
    return "\n".join(lines) + "\n"


def _sweep(root: Path, curves: dict[str, callable], losses=("sft", "cpo", "dpo")) -> Path:
    """One grid point per method, seeds 1-3, each job's csv/metrics.csv from ``curves[loss](seed)``."""
    base = make_test_rows()
    num = 0
    for loss in losses:
        _, val_qe, rate, stream = PROTOCOL.get(loss, PROTOCOL["sft"])[-1]
        for seed in (1, 2, 3):
            rows = translations(base, rate, seed, stream)
            write_job(root, num, [f"loss={loss}", f"seed={seed}"], results(loss, seed, val_qe, rows), rows,
                      _curve(curves[loss](seed)))
            num += 1
    return root


def test_every_method_has_a_training_curve_sft_on_references_included(tmp_path):
    pair = lambda s: [{"step": t, "train/logps/chosen": -9 + t / 10 + s / 100, "train/logps/margins": t / 5}
                      for t in (5, 10, 15)]
    ref = lambda s: [{"step": t, "train/logps/reference": -8 + t / 10 + s / 100} for t in (5, 10, 15)]
    chosen = lambda s: [{"step": t, "train/logps/chosen": -8.5 + t / 10 + s / 100} for t in (5, 10, 15)]
    a = _analyze(_sweep(tmp_path / "sw", {"cpo": pair, "dpo": pair, "sft": chosen, "sft_ref": ref},
                        losses=("sft", "sft_ref", "cpo", "dpo")))
    fig = curves_figure(a, TRAIN_CURVES, "Training curves")
    drawn = {label.split(" (n=")[0] for ax in fig.axes for label in ax.get_legend_handles_labels()[1]}
    assert drawn == {"SFT (preferred)", "SFT (reference)", "CPO", "DPO"}
    assert set(_lines(fig, "train/logps/chosen")) == {"SFT (preferred) (n=3)", "CPO (n=3)", "DPO (n=3)"}
    assert set(_lines(fig, "train/logps/reference")) == {"SFT (reference) (n=3)"}


def test_a_curve_on_the_baselines_stays_visible_and_one_point_is_no_curve(tmp_path):
    same = lambda s: [{"step": t, "val/logps/accuracies": 0.5 + t / 100, "val/copy_rate": 0.0} for t in (10, 20, 30)]
    one = lambda s: [{"step": 30, "val/logps/accuracies": 0.7, "val/copy_rate": 0.0}]
    a = _analyze(_sweep(tmp_path / "sw", {"sft": same, "cpo": same, "dpo": one}))
    fig = curves_figure(a, VAL_CURVES, "Validation curves")
    lines = _lines(fig, "val/logps/accuracies")
    base, cpo, dpo = lines["SFT (preferred) (n=3)"], lines["CPO (n=3)"], lines["DPO (n=3, one point)"]
    assert list(base.get_ydata()) == list(cpo.get_ydata())  # CPO lies exactly on the baseline ...
    assert base.get_zorder() < cpo.get_zorder() and base.get_linewidth() > cpo.get_linewidth()  # ... drawn over it
    assert base.get_marker() != cpo.get_marker()
    assert dpo.get_linestyle() == "None" and dpo.get_marker() not in (None, "None", "")  # a point, not a curve
    health = curves_figure(a, HEALTH_CURVES, "Health")
    assert health is None  # the one health curve logged is 0 for every method at every step: nothing to see
    fig = curves_figure(a, ("val/logps/accuracies", "val/copy_rate"), "Validation curves")
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["val/logps/accuracies ↑"]
    assert "val/copy_rate = 0 for every method at every step (not drawn)" in fig._suptitle.get_text()


def test_a_key_a_method_ignores_is_no_grid_edge(tmp_path):
    """A sweep from before the sweeper ran SFT once: SFT at beta 0.05 and 0.1 is one training, twice."""
    base = make_test_rows()
    num = 0
    for loss, kind in (("sft", "none"), ("cpo", "sigmoid")):
        for beta in ("0.05", "0.1"):
            for lr, val_qe in (("0.0001", 0.80), ("0.001", 0.85 if loss == "sft" else 0.9)):
                for seed in (1, 2, 3):
                    rows = translations(base, 0.2, seed, f"{loss}-{lr}")
                    r = results(loss, seed, val_qe + (0.01 if beta == "0.1" and loss == "cpo" else 0), rows)
                    r["config"]["loss"]["kind"] = kind
                    write_job(tmp_path, num, [f"loss={loss}", f"optim.lr={lr}", f"beta={beta}", f"seed={seed}"], r,
                              rows)
                    num += 1
    a = _analyze(tmp_path)
    assert a.methods["loss=sft"].ignored == {"beta", "loss.beta"} and a.methods["loss=cpo"].ignored == set()
    sft, cpo = a.notes["loss=sft"], a.notes["loss=cpo"]
    assert "beta" not in sft.split(";")[0] and "learning rate 0.001 is the largest value tried" in sft
    assert "its grid points differ in beta, which its loss ignores: they repeat one training" in sft
    assert "beta 0.1 is the largest value tried" in cpo  # where beta matters, its edge is still noted


def test_curve_bands_stay_inside_the_metrics_range():
    import numpy as np
    import pandas as pd

    from cpo.report.figures import seed_band

    curves = [pd.DataFrame({"step": [1, 2], "val/off_target": [0.0, v]}) for v in (0.0, 0.0, 0.03)]
    x, mean, lo, hi, n = seed_band(curves, "val/off_target")
    assert n == 3 and lo[1] == 0.0 and hi[1] > mean[1] > 0 and np.all(lo <= mean)
    acc = [pd.DataFrame({"step": [1], "val/logps/margins": [v]}) for v in (-1.0, 0.0, 1.0)]
    _, mean, lo, hi, _ = seed_band(acc, "val/logps/margins")  # no range: the t-band as it is
    assert lo[0] < -1 and hi[0] > 1


@pytest.mark.slow
def test_the_notebook_command_works_as_the_readme_prints_it(tmp_path, monkeypatch):
    """`CPO_REPORT_DIR=multirun/<sweep> jupyter lab notebooks/ablations.ipynb`, typed at the project root: the kernel
    starts in notebooks/, and the relative folder is still found (here in a copy of the project's layout)."""
    import re
    import shutil
    import subprocess
    import sys
    import tomllib

    import nbformat
    from nbclient import NotebookClient

    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if "jupyter lab notebooks/ablations.ipynb" in ln)
    assert "CPO_REPORT_DIR=multirun/" in line
    extra = re.search(r"bash scripts/install\.sh (\w+)`? (?:once )?(?:installs|for) JupyterLab", readme)
    assert extra, "the README names the extra that installs JupyterLab"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("jupyterlab") for d in extras[extra.group(1)])

    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    shutil.copy(REPO / "notebooks" / "ablations.ipynb", project / "notebooks")
    sweep = make_protocol_sweep(project / "multirun" / "loss_ablation", failed=False)
    report.write_report(_analyze(sweep), sweep, samples=FAST, sweep_dir=sweep)
    prefix = tmp_path / "jupyter"
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", "python3"],
                   check=True, capture_output=True, timeout=120)
    for k, v in {"JUPYTER_PATH": str(prefix / "share" / "jupyter"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
                 "IPYTHONDIR": str(tmp_path / "ipy"), "MPLBACKEND": "Agg", "CPO_REPORT_DIR": "multirun/loss_ablation",
                 "CPO_BOOTSTRAP_SAMPLES": str(FAST), "PYTHONPATH": str(REPO)}.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(project / "notebooks" / "ablations.ipynb", as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(project / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert f"report: {sweep.resolve()}" in "".join(o.get("text", "") for o in outputs)
    # `jupyter` alone comes with nbclient; `jupyter-lab` only with the notebook extra: where it is, the command runs
    if shutil.which("jupyter-lab", path=str(Path(sys.executable).parent)):
        p = subprocess.run([str(Path(sys.executable).parent / "jupyter"), "lab", "--version"], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0 and p.stdout.strip()[0].isdigit()
