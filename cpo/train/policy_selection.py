"""Callbacks that watch one validation metric (``conf/callbacks/``): early stopping, and the best policy kept.

Off by default, as ALMA-R trained (one epoch; ``policy/`` is the last weights). ``callbacks=early_stopping`` stops
when the metric has not improved for ``patience`` validations (Lightning's EarlyStopping);
``callbacks=best_policy`` keeps the trainable weights of the best validation so far, and at the end ``policy/``
is that policy, the last one is saved beside it in ``policy_last/``, and the held-out table is the best policy's.

``monitor: auto`` is the metric ``scripts/compare.py`` selects on by default: the first QE/COMET scorer
translated at validation (``val/demo_qe`` on the demo), else ``val/chrf``, else ``val/bleu``; without
translations at validation, ``val/loss`` (the run's own objective on the validation pairs). ``mode: auto``
follows the metric: lower is better for TER, losses, NLL and the health rates.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from omegaconf import DictConfig, OmegaConf

from cpo.console import say
from cpo.errors import ConfigError

_LOWER = ("ter", "loss", "nll", "off_target", "copy_rate", "repetition", "empty")


def metric_mode(metric: str, key: str) -> str:
    """"min" or "max" for a validation metric; the length ratio (best at 1) cannot be monitored."""
    leaf = metric.split("/")[-1]
    if leaf == "length_ratio":
        raise ConfigError(f"{key}={metric}: the length ratio is best at 1, neither high nor low; monitor a score")
    return "min" if any(leaf == w or leaf.endswith("_" + w) or leaf.startswith(w) for w in _LOWER) else "max"


def validation_metrics(cfg: DictConfig, data, scorers: Sequence, val_pairs: int) -> tuple[list[str], list[str]]:
    """(translation metrics this run logs at validation in the order ``auto`` prefers, preference metrics)."""
    from cpo.mt.health import HEALTH_KEYS

    pref = []
    if val_pairs:
        pref = ["val/loss", "val/rewards/accuracies", "val/rewards/margins", "val/logps/accuracies",
                "val/logps/margins", "val/logps/chosen", "val/logps/rejected"]
        pref += ["val/nll_loss"] if cfg.loss.alpha else []
    t = cfg.evaluate.get("during_training") or {}
    translated = t.get("enabled", False) and data.dev is not None and not cfg.get("build_in_configure_model", False)
    if not translated:
        return [], pref
    metrics = list(t.get("metrics") or ("bleu", "chrf", "chrfpp"))
    ordered = [s.name for s in scorers] + [m for m in ("chrf", "bleu") if m in metrics]
    ordered += [m for m in metrics if m not in ordered] + list(HEALTH_KEYS)
    return [f"val/{m}" for m in ordered], pref


def resolve_monitor(monitor: str, key: str, translation: Sequence[str], preference: Sequence[str]) -> str:
    """``monitor`` as a metric this run logs (``auto``: see the module docstring); ConfigError otherwise."""
    logged = list(translation) + list(preference)
    if not logged:
        raise ConfigError(f"{key} needs validation, and this run validates nothing: give the data a validation split "
                          "(e.g. data.val_size=200) or a dev set")
    if monitor == "auto":
        return translation[0] if translation else "val/loss"
    name = monitor if monitor.startswith("val/") else f"val/{monitor}"
    if name not in logged:
        raise ConfigError(f"{key}={monitor}: this run does not log {name} at validation; give one of "
                          + ", ".join(logged))
    return name


class EarlyStoppingOnMetric(EarlyStopping):
    """Lightning's EarlyStopping, checked after each validation (also mid-epoch), saying when it stops."""

    def __init__(self, monitor: str, mode: str, patience: int = 3, min_delta: float = 0.0):
        super().__init__(monitor=monitor, mode=mode, patience=patience, min_delta=min_delta,
                         check_on_train_epoch_end=False, strict=True, verbose=False)
        self.stopped_step: int | None = None

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        super()._run_early_stopping_check(trainer)
        if trainer.should_stop and self.stopped_step is None and self.wait_count >= self.patience:
            self.stopped_step = trainer.global_step
            say(f"early stopping at step {trainer.global_step}: {self.monitor} has not improved for {self.wait_count} "
                f"validations (best {float(self.best_score):.4g})")

    def summary(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "mode": self.mode, "patience": self.patience,
                "stopped_step": self.stopped_step, "best": float(self.best_score)}


class BestPolicy(L.Callback):
    """Keeps the trainable weights (the adapter, or the whole model in full fine-tuning) of the validation with
    the best ``monitor`` in ``checkpoints/best_policy.pt``; :meth:`restore` puts them back into the policy.

    The file is written atomically on each improvement and names its step, which the callback's state (saved in
    Lightning checkpoints) names too, so a resumed run restores exactly the weights its history says are best.
    """

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0):
        self.monitor, self.mode, self.min_delta = monitor, mode, float(min_delta)
        self.best: float | None = None
        self.step: int | None = None
        self.path: Path | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.path = Path(trainer.default_root_dir) / "checkpoints" / "best_policy.pt"

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "mode": self.mode, "best": self.best, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("monitor") == self.monitor and state.get("mode") == self.mode:
            self.best, self.step = state.get("best"), state.get("step")

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return  # translations are scored on rank 0 only; rank 0 alone saves the policy
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise ConfigError(f"callbacks.best_policy.monitor={self.monitor} was not logged at the validation of step "
                              f"{trainer.global_step}; logged: {', '.join(sorted(trainer.callback_metrics))}")
        value = float(value)
        if value != value or not self._improves(value):  # NaN never improves
            return
        weights = {k: p.detach().to("cpu", copy=True) for k, p in pl_module.named_parameters() if p.requires_grad}
        self._write({"step": trainer.global_step, "value": value, "weights": weights})
        self.best, self.step = value, trainer.global_step

    def _write(self, payload: dict) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".best_policy.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def restore(self, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        """Load the best weights into ``pl_module``; returns them, keyed as in its state dict."""
        if self.step is None or self.path is None or not self.path.is_file():
            raise ConfigError(f"callbacks.best_policy: no best policy was recorded ({self.path} is missing); "
                              "rerun=true trains the run again")
        payload = torch.load(self.path, map_location="cpu", weights_only=True)
        if payload.get("step") != self.step:
            raise ConfigError(f"{self.path} holds the weights of step {payload.get('step')}, but this run's best "
                              f"validation was at step {self.step}; rerun=true trains the run again")
        params = dict(pl_module.named_parameters())
        with torch.no_grad():
            for k, v in payload["weights"].items():
                params[k].copy_(v.to(params[k].device, params[k].dtype))
        return payload["weights"]

    def summary(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "mode": self.mode, "best": self.best, "best_step": self.step}


def build_selection_callbacks(cfg: DictConfig, data, scorers: Sequence, val_pairs: int) -> list:
    """The callbacks of ``cfg.callbacks`` (one entry per chosen file of conf/callbacks), ``monitor``/``mode: auto``
    resolved; any other Lightning callback named by a ``_target_`` is instantiated as it is."""
    from hydra.utils import instantiate

    chosen = cfg.get("callbacks") or {}
    out = []
    translation, preference = validation_metrics(cfg, data, scorers, val_pairs)
    for name, node in chosen.items():
        spec = OmegaConf.to_container(node, resolve=True)
        if not isinstance(spec, dict) or "_target_" not in spec:
            raise ConfigError(f"callbacks.{name}: expected a mapping with a _target_ (see conf/callbacks/)")
        if "monitor" in spec:
            spec["monitor"] = resolve_monitor(str(spec["monitor"]), f"callbacks.{name}.monitor", translation,
                                              preference)
            if spec.get("mode", "auto") == "auto":
                spec["mode"] = metric_mode(spec["monitor"], f"callbacks.{name}.monitor")
        if spec["_target_"].endswith(".BestPolicy") and cfg.get("build_in_configure_model", False):
            raise ConfigError(f"callbacks.{name}: the best policy is not kept under a sharded strategy (FSDP, "
                              "DeepSpeed ZeRO-3); use strategy=deepspeed_zero2 or ddp, or leave it out")
        callback = instantiate(spec)
        if "monitor" in spec:
            say(f"callbacks.{name}: {type(callback).__name__} on {spec['monitor']} ({spec['mode']})")
        out.append(callback)
    t = cfg.trainer
    once = isinstance(t.get("val_check_interval"), float) and t.val_check_interval == 1.0  # (an int counts batches)
    if out and once and t.get("max_epochs") == 1 and t.get("max_steps", -1) == -1:
        say("note: the run validates once (trainer.val_check_interval=1.0, one epoch), so callbacks that watch a "
            "validation metric see one value; validate more often, e.g. trainer.val_check_interval=0.25")
    return out


def find(trainer: L.Trainer, kind: type) -> Any:
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


def select_policy(trainer: L.Trainer, module: L.LightningModule, state) -> tuple[Any, Any, dict | None]:
    """With ``callbacks=best_policy``, the best validation's weights go back into the policy, which the held-out
    table then evaluates and ``policy/`` saves; the last weights go to ``policy_last/``. Returns (state for
    policy/, state for policy_last/ or None, the selection for results.json or None)."""
    best = find(trainer, BestPolicy)
    if best is None:
        return state, None, None
    last = None
    if state is not None:  # a state dict shares storage with the parameters that restore() overwrites: copy first
        trained = {k for k, p in module.named_parameters() if p.requires_grad}
        last = {k: (v.detach().to("cpu", copy=True) if k in trained else v) for k, v in state.items()}
    weights = best.restore(module)
    say(f"policy/ is the best validation by {best.monitor} ({best.best:.4g} at step {best.step}); the last "
        f"(step {trainer.global_step}) is saved beside it in policy_last/")
    selection = {**best.summary(), "last_step": trainer.global_step}
    return ({**state, **weights} if state is not None else None), last, selection


def callback_summaries(trainer: L.Trainer, selection: dict | None) -> dict[str, Any]:
    """What results.json records of the callbacks: the policy selection and where early stopping stopped."""
    out: dict[str, Any] = {"policy_selection": selection} if selection else {}
    stopper = find(trainer, EarlyStoppingOnMetric)
    if stopper is not None:
        out["early_stopping"] = stopper.summary()
    return out
