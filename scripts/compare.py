"""Compare the jobs of a sweep: mean ± std over seeds per configuration, report and plots (conf/compare.yaml).

    python scripts/compare.py sweep=multirun/2026-11-25/10-00-00
    python scripts/compare.py source=wandb wandb.project=cpo wandb.group=sweep-10-00-00

Writes report.md (Markdown table, best per column in bold, failed jobs), report.csv
(<metric>_mean/_std/_n/_best columns), report.json and plots/*.png into the sweep folder
(or out_dir). The logic is cpo.report; notebooks/ablations.ipynb reads what this writes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig


@hydra.main(config_path="../conf", config_name="compare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from cpo import report

    ignored = tuple(cfg.ignore_keys)
    try:
        if cfg.source == "local":
            if not cfg.sweep:
                raise ValueError("give the sweep folder: sweep=multirun/<date>/<time>")
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
    except (FileNotFoundError, ValueError, report.WandbUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    table = report.aggregate(jobs)
    manifest = report.write_report(jobs, table, out_dir, source=source, plots=bool(cfg.plots))
    print(report.render_markdown(jobs, table, source, {}, {}, out_dir).split("\n## Plots")[0])
    print(f"wrote {out_dir / 'report.md'}, report.csv, report.json" + (f" and {len(manifest['plots'])} plots in {out_dir / 'plots'}" if manifest["plots"] else ""))
    for name, why in manifest["skipped_plots"].items():
        print(f"plot {name}: {why}")
    if manifest["failed"]:
        print(f"{len(manifest['failed'])} failed job(s): " + ", ".join(f["job"] for f in manifest["failed"]), file=sys.stderr)
    if not manifest["completed"]:
        print("error: no completed jobs to compare", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
