"""Compare the jobs of a sweep under a fair protocol: select on validation, test against a baseline (conf/compare.yaml).

    python scripts/compare.py sweep=multirun/loss_ablation                 # baseline=sft, select_by=auto
    python scripts/compare.py sweep=multirun/variants baseline=cpo select_by=val/chrf
    python scripts/compare.py source=wandb wandb.project=cpo wandb.group=loss_ablation

Per method (by default the loss), the grid point with the best mean validation score over its seeds
is selected; the selected points are compared on the test split against the baseline, per metric:
Welch's t-test over seeds and paired bootstrap resampling over test sentences (sacrebleu's, seeds
pooled per sentence). Writes report.md, report.tex, report.csv, significance.csv, report.json and
plots/*.png into the sweep folder (or out_dir). The logic is cpo.report.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from cpo.cli import fail, one_sentence_errors, run_app


def _given(key: str) -> bool:
    """Whether ``key=`` was on the command line (a default baseline may be absent from a sweep; a given one may not)."""
    return any(str(o).split("=", 1)[0].lstrip("+~") == key for o in HydraConfig.get().overrides.task)


@hydra.main(config_path="../conf", config_name="compare", version_base="1.3")
@one_sentence_errors
def main(cfg: DictConfig) -> None:
    from cpo import report

    ignored = tuple(cfg.ignore_keys)
    try:
        sweep = None
        if cfg.source == "local":
            if not cfg.sweep:
                raise ValueError("give the sweep folder: sweep=multirun/<experiment> (or multirun/<date>/<time>)")
            sweep = Path(to_absolute_path(str(cfg.sweep)))
            jobs = report.load_sweep(sweep, ignored)
            source = str(cfg.sweep)
            out_dir = Path(to_absolute_path(str(cfg.out_dir))) if cfg.out_dir else sweep
        elif cfg.source == "wandb":
            w = cfg.wandb
            jobs = report.load_wandb(w.project, w.group, w.entity, int(w.timeout), ignored)
            source = f"wandb:{w.entity + '/' if w.entity else ''}{w.project}" + (f" group={w.group}" if w.group else "")
            default = Path("outputs") / "compare" / str(w.project) / str(w.group or "all")
            out_dir = Path(to_absolute_path(str(cfg.out_dir or default)))
        else:
            raise ValueError(f"source={cfg.source!r}: expected local or wandb")
        analysis = report.analyze(
            jobs, select_by=str(cfg.select_by), baseline=str(cfg.baseline or ""), alpha=float(cfg.alpha),
            tune_keys=tuple(cfg.tune_keys), allow_test_selection=bool(cfg.allow_test_selection),
            bootstrap_samples=int(cfg.bootstrap.samples), bootstrap_seed=int(cfg.bootstrap.seed),
            baseline_required=_given("baseline"),
        )
    except (FileNotFoundError, ValueError, report.WandbUnavailable) as e:
        fail(str(e))

    manifest = report.write_report(analysis, out_dir, source=source, plots=bool(cfg.plots),
                                   samples=int(cfg.bootstrap.samples), sweep_dir=sweep)
    md = (out_dir / "report.md").read_text(encoding="utf-8")
    print(md.split("\n## Every grid point")[0].split("\n## Figures")[0].rstrip() + "\n")
    for line in manifest["verdict_sentences"]:
        print(line)
    print(f"wrote {out_dir / 'report.md'}, report.tex, report.csv, significance.csv, report.json"
          + (f" and {len(manifest['plots'])} figures in {out_dir / 'plots'}" if manifest["plots"] else ""))
    if manifest["failed"]:
        failed = ", ".join(f["job"] for f in manifest["failed"])
        print(f"{len(manifest['failed'])} failed job(s): {failed}", file=sys.stderr)
    if not manifest["completed"]:
        fail(f"no completed jobs in {source}: every job failed (report.md lists why)")
    # A job without results whose log does not end in a divergence is still running, crashed or was stopped:
    # the report is written, but it is not final.
    unfinished = [f["job"] for f in manifest["failed"] if "training diverged" not in str(f.get("error"))]
    if unfinished:
        fail(f"{len(unfinished)} job(s) have no results and did not diverge ({', '.join(unfinished[:5])}"
             f"{' ...' if len(unfinished) > 5 else ''}): the sweep is unfinished, so this report is not final; "
             "re-launch the sweep to complete it", code=1)


if __name__ == "__main__":
    run_app(main)
