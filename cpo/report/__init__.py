"""Compare the jobs of a sweep under a fair protocol and write a paper-ready report.

    from cpo import report
    jobs = report.load_sweep("multirun/loss_ablation")
    a = report.analyze(jobs, select_by="auto", baseline="sft", alpha=0.05)
    report.write_report(a, "multirun/loss_ablation")   # report.md/.tex/.csv/.json, significance.csv, plots/

Modules: loading (job folders), wandb_source (W&B online), metrics (names, directions, method
colours), selection (grid points, selection on validation), stats (seed statistics, paired
bootstrap), comparison (significance vs a baseline, per direction), analysis (all of it in one
call), tables (Markdown and LaTeX), figures, build (the files).
"""
from cpo.report.analysis import Analysis, analyze, find_baseline
from cpo.report.build import render_markdown, verdict_sentences, write_report
from cpo.report.comparison import Comparison, comparisons_frame
from cpo.report.loading import (IGNORED_KEYS, JobResult, assign_labels, common_overrides, load_job, load_sweep,
                                varying_keys)
from cpo.report.metrics import METHODS, direction, higher_is_better
from cpo.report.selection import TUNE_KEYS, SelectionError, aggregate, metric_names
from cpo.report.stats import paired_bootstrap, summarize, welch
from cpo.report.wandb_source import WandbUnavailable, load_wandb, split_run_name, wandb_run_to_job

__all__ = [
    "IGNORED_KEYS", "METHODS", "TUNE_KEYS", "Analysis", "Comparison", "JobResult", "SelectionError", "WandbUnavailable",
    "aggregate", "analyze", "assign_labels", "common_overrides", "comparisons_frame", "direction", "find_baseline",
    "higher_is_better", "load_job", "load_sweep", "load_wandb", "metric_names", "paired_bootstrap", "render_markdown",
    "split_run_name", "summarize", "varying_keys", "verdict_sentences", "wandb_run_to_job", "welch", "write_report",
]
