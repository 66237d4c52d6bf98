"""A diverged run is a failed run: stop at the first non-finite loss or gradient, or at a runaway NLL.

Checked cheaply on what a step computes anyway: the loss the step returns, the norm of the gradients
before clipping, and the NLL it logs. The guard raises :class:`Diverged` from inside the step, before
the optimizer applies a non-finite gradient and before any checkpoint of that step is written;
``cpo.train.run.run`` turns it into one sentence, exit status 3, and no ``results.json`` or ``policy/``.
"""
from __future__ import annotations

from collections import deque

import lightning as L
import torch


class Diverged(RuntimeError):
    """Training diverged; the message names the step and the quantity."""


def grad_norm(parameters) -> torch.Tensor:
    """L2 norm of all gradients (what clipping computes): non-finite as soon as one gradient is."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]))


class DivergenceGuard(L.Callback):
    """Stops training when it diverges.

    Always: a non-finite training loss (checked every micro-batch) or gradient norm (checked before each
    optimizer step, on the gradients this rank holds; ranks agree before stopping). Under fp16 loss scaling
    the gradient check is left to the GradScaler, which skips an overflowing step and lowers its scale by
    design. With ``max_nll_ratio`` (a divergence that stays finite): the mean NLL of the preferred side over
    the last ``window`` optimizer steps exceeding ``max_nll_ratio`` times its mean over the first ``window``
    steps *and* rising by more than ``min_nll_rise`` nats, e.g. a half-precision run whose loss stays finite
    while it forgets how to translate. ``None`` switches that check off. Its state travels in checkpoints,
    so a resumed run stops where the uninterrupted one would.
    """

    def __init__(self, max_nll_ratio: float | None = 3.0, window: int = 10, min_nll_rise: float = 1.0):
        self.max_nll_ratio, self.window, self.min_nll_rise = max_nll_ratio, max(1, window), min_nll_rise
        self._first: list[float] = []
        self._recent: deque[float] = deque(maxlen=self.window)
        self._step = -1

    def state_dict(self) -> dict:
        return {"first": list(self._first), "recent": list(self._recent), "step": self._step}

    def load_state_dict(self, state: dict) -> None:
        self._first, self._step = list(state.get("first", [])), int(state.get("step", -1))
        self._recent = deque(state.get("recent", []), maxlen=self.window)

    def _stop(self, trainer: L.Trainer, bad: bool, message: str) -> None:
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            raise Diverged(message)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            value = float(loss.detach())
            step = trainer.global_step
            self._stop(trainer, not torch.isfinite(torch.tensor(value)),
                       f"training diverged at step {step}: the training loss is {value}")
        if self.max_nll_ratio is None or trainer.global_step == self._step:
            return  # once per optimizer step: a micro-batch's NLL is too noisy to judge
        self._step = trainer.global_step
        m = trainer.callback_metrics
        # The NLL term when the loss has one, else the preferred side's mean token NLL (logged for every pair loss).
        nll = m.get("train/nll_loss")
        if nll is None and m.get("train/logps/chosen_avg") is not None:
            nll = -m["train/logps/chosen_avg"]
        if nll is None:
            return
        nll = float(nll)
        if len(self._first) < self.window:
            self._first.append(nll)
            return
        self._recent.append(nll)
        start, now = sum(self._first) / len(self._first), sum(self._recent) / len(self._recent)
        runaway = now > self.max_nll_ratio * max(start, 1e-6) and now - start > self.min_nll_rise
        self._stop(trainer, len(self._recent) == self.window and runaway,
                   f"training diverged at step {trainer.global_step}: the NLL of the preferred translations rose "
                   f"from {start:.3f} to {now:.3f} (more than {self.max_nll_ratio}x and {self.min_nll_rise} nats; "
                   f"guard.max_nll_ratio, guard.min_nll_rise)")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16 loss scaling: an overflowing step is skipped by the GradScaler, not a divergence
        norm = grad_norm(p for group in optimizer.param_groups for p in group["params"])
        self._stop(trainer, not bool(torch.isfinite(norm)),
                   f"training diverged at step {trainer.global_step}: the gradient norm is {float(norm)}")


def check_finite_weights(model: torch.nn.Module) -> None:
    """Refuse to save a policy with a non-finite trainable weight (one pass over the trained parameters)."""
    for name, p in model.named_parameters():
        if p.requires_grad and not bool(torch.isfinite(p.detach()).all()):
            raise Diverged(f"the trained weight {name} holds non-finite values; the policy is not saved")
