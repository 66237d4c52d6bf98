"""What the report's metrics and methods are: direction, comparability, display names and colours.

One table (:data:`METHODS`) names and colours every method in every figure and table, so a loss
is "CPO" in blue everywhere, never the raw override ``loss=cpo``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from cpo.mt.evaluation import CORPUS_METRICS
from cpo.mt.health import HEALTH_KEYS

# loss name -> (display name, colour). Colours are fixed per method so that figures of different
# reports agree; methods not listed get colours from OTHER_COLORS in order of appearance.
METHODS: dict[str, tuple[str, str]] = {
    "sft_ref": ("SFT (reference)", "#7f7f7f"),
    "sft": ("SFT (preferred)", "#2ca02c"),
    "dpo": ("DPO", "#ff7f0e"),
    "cpo": ("CPO", "#1f77b4"),
    "cpo_prefer_only": ("CPO (prefer only)", "#9467bd"),
    "simpo": ("SimPO", "#8c564b"),
    "cpo_simpo": ("CPO-SimPO", "#e377c2"),
    "ipo": ("IPO", "#bcbd22"),
    "hinge": ("Hinge", "#17becf"),
    "orpo": ("ORPO", "#d62728"),
    "arpo": ("ARPO", "#393b79"),
}
OTHER_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39")

# Test-set metric names (keys of results["after"]) and their display names.
METRIC_NAMES = {"bleu": "BLEU", "chrf": "chrF", "chrfpp": "chrF++", "ter": "TER", "demo_qe": "demo QE",
                "comet22": "COMET-22", "kiwi": "CometKiwi", "kiwi_xxl": "CometKiwi-XXL", "xcomet_xxl": "XCOMET-XXL",
                "kiwi_xcomet": "KIWI+XCOMET", "off_target": "off-target", "off_target_src": "off-target (source)",
                "copy_rate": "copy rate", "repetition": "repetition", "length_ratio": "length ratio", "empty": "empty"}
# Corpus metrics recomputed from test translations with sacrebleu (BLEU, chrF, chrF++, TER), as cpo.mt.evaluation.
SACREBLEU_METRICS = CORPUS_METRICS
# Health checks of a degenerating translator (cpo.mt.health; the other keys are translation-quality scores).
HEALTH = HEALTH_KEYS
# Keys of results["after"] that are neither test-set quality nor health figures.
NOT_TEST_METRICS = {"pairs", "n", "sentences", "pref_accuracy", "logp_margin"}
# Validation metrics shown besides the selection metric, in table order (when present).
VAL_TABLE = ("val/bleu", "val/chrf", "val/logps/accuracies", "val/logps/margins")
# Validation keys that are not translation-quality scorers (used to find val/<scorer> for select_by=auto).
_VAL_NOT_SCORERS = {*CORPUS_METRICS, "loss", "nll_loss", *HEALTH}


def base_name(metric: str) -> str:
    """"val/logps/accuracies" -> "logps/accuracies"; "test/bleu" -> "bleu"; "bleu" -> "bleu"."""
    head, _, rest = metric.partition("/")
    return rest if head in ("val", "train", "test", "delta") and rest else metric


def direction(metric: str) -> str:
    """"higher", "lower" or "one" (closer to 1 is better: the hypothesis/reference length ratio)."""
    name = base_name(metric).lower()
    leaf = name.split("/")[-1]
    if leaf == "length_ratio":
        return "one"
    if leaf in ("ter", *HEALTH) or "nll" in leaf or leaf == "loss" or leaf.endswith("_loss"):
        return "lower"
    return "higher"


def higher_is_better(metric: str) -> bool:
    return direction(metric) == "higher"


def arrow(metric: str) -> str:
    return {"higher": "↑", "lower": "↓", "one": "→1"}[direction(metric)]


def is_better(diff: float, metric: str, a: float | None = None, b: float | None = None) -> bool:
    """Whether ``a - b = diff`` favours ``a`` (for "one": whether ``a`` is closer to 1 than ``b``)."""
    d = direction(metric)
    if d == "one":
        return a is not None and b is not None and abs(a - 1) < abs(b - 1)
    return diff > 0 if d == "higher" else diff < 0


def comparable_across_losses(metric: str) -> bool:
    """Rewards are beta-scaled (and reference-relative for DPO), losses are different objectives and
    nll_loss is taken on the reference under sft_ref: their values mean nothing across losses.
    Log-probs of the chosen and rejected translations and translation scores do."""
    name = base_name(metric)
    return not (name.startswith("rewards/") or name in ("loss", "nll_loss"))


def metric_label(metric: str) -> str:
    """"test/bleu" -> "BLEU"; "val/demo_qe" -> "val demo QE"; others as they are."""
    head, _, rest = metric.partition("/")
    if head == "test" and rest in METRIC_NAMES:
        return METRIC_NAMES[rest]
    if head == "val" and rest in METRIC_NAMES:
        return f"val {METRIC_NAMES[rest]}"
    if head == "delta" and rest in METRIC_NAMES:
        return f"Δ {METRIC_NAMES[rest]}"
    return metric


# Readable names of configuration keys in tables and figures (report.csv keeps the keys themselves).
KEY_NAMES = {"optim.lr": "learning rate", "beta": "beta", "loss.beta": "beta", "loss.gamma": "gamma",
             "loss.alpha": "alpha", "loss.label_smoothing": "label smoothing", "optim.weight_decay": "weight decay",
             "optim.warmup_ratio": "warm-up ratio", "optim.schedule": "schedule", "data.negatives": "negatives",
             "data.candidates": "candidates", "data.strong_habits": "strong system's habits", "loss.reference":
             "reference", "trainer.max_steps": "steps", "trainer.max_epochs": "epochs", "data.batch_size": "batch size",
             "global_batch_size": "global batch", "model.lora.r": "LoRA rank"}


def key_label(key: str) -> str:
    """"optim.lr" -> "learning rate"; a key without a readable name as it is."""
    return KEY_NAMES.get(key.lstrip("+~"), key)


def setting_label(key: str, value: Any) -> str:
    """"optim.lr", "0.001" -> "learning rate 0.001"."""
    return f"{key_label(key)} {value}"


_UNIT = (0.0, 1.0)
_RANGES = {"bleu": (0.0, 100.0), "chrf": (0.0, 100.0), "chrfpp": (0.0, 100.0), "ter": (0.0, math.inf),
           "demo_qe": _UNIT, "xcomet_xxl": _UNIT, "pref_accuracy": _UNIT, "length_ratio": (0.0, math.inf),
           "empty": (0.0, math.inf), "nll_loss": (0.0, math.inf), "off_target": _UNIT, "off_target_src": _UNIT,
           "copy_rate": _UNIT, "repetition": _UNIT}


def metric_range(metric: str) -> tuple[float, float]:
    """The values a metric can take: BLEU and chrF in [0, 100], rates and accuracies in [0, 1], log-probs <= 0,
    TER and the length ratio >= 0; (-inf, inf) for what is not known (COMET-style scorers, margins, deltas)."""
    if metric.startswith("delta/"):
        return -math.inf, math.inf
    name = base_name(metric)
    leaf = name.split("/")[-1]
    if name in _RANGES:
        return _RANGES[name]
    if leaf == "accuracies":
        return _UNIT
    if name.startswith("logps/") and not leaf.startswith("margins"):
        return -math.inf, 0.0
    return -math.inf, math.inf


def clip_interval(metric: str, lo: float, hi: float) -> tuple[float, float]:
    """A confidence interval clipped to the metric's range (a t-interval of a rate near 0 reaches below 0)."""
    a, b = metric_range(metric)
    clip = (lambda x: x if x != x else min(max(x, a), b))  # NaN (no interval) stays NaN
    return clip(lo), clip(hi)


def number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return None
    return float(v)


def after_metric_names(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Numeric keys of results["after"] that are test-set figures: BLEU, chrF, chrF++, TER first, then
    scorers, then health checks, in first-seen order."""
    names: list[str] = []
    for r in results:
        for k, v in ((r or {}).get("after") or {}).items():
            if k not in NOT_TEST_METRICS and number(v) is not None and k not in names:
                names.append(k)
    first = [n for n in SACREBLEU_METRICS if n in names]
    health = [n for n in HEALTH if n in names]
    return first + [n for n in names if n not in first and n not in health] + health


def val_scorers(val_keys: Sequence[str]) -> list[str]:
    """Validation metrics of QE/COMET scorers (val/<scorer>), in the order given."""
    out = []
    for k in val_keys:
        name = base_name(k)
        if k.startswith("val/") and "/" not in name and name not in _VAL_NOT_SCORERS:
            out.append(k)
    return out


def fmt(x: float | None, ref: float | None = None) -> str:
    """A number with decimals chosen by the magnitude of ``ref`` (default ``x``)."""
    if x is None or not math.isfinite(x):
        return "–"
    r = abs(ref if ref is not None and math.isfinite(ref) else x)
    if r >= 100:
        return f"{x:.1f}"
    if r >= 1:
        return f"{x:.2f}"
    if r >= 0.01 or r == 0:
        return f"{x:.3f}"
    return f"{x:.2e}"


def fmt_p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"
