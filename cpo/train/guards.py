"""A diverged run is a failed run: stop at the first non-finite loss or gradient, or at a runaway NLL.

Checked cheaply on what a step computes anyway: the loss the step returns, the norm of the gradients
before clipping, and the NLL it logs. The guard raises :class:`Diverged` from inside the step, before
the optimizer applies a non-finite gradient and before any checkpoint of that step is written;
``cpo.train.run.run`` turns it into one sentence, exit status 3, and no ``results.json`` or ``policy/``.

A run is also judged at its end by the held-out numbers it computes anyway (:func:`check_heldout_collapse`):
a policy whose translations collapsed against the starting policy's is a failed run, not a result, however
few steps it took to get there.
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
    while it forgets how to translate; before 2 x ``window`` steps, the second half of the steps so far
    against the first half, so that short runs are guarded too. ``None`` switches that check off. Its state
    travels in checkpoints, so a resumed run stops where the uninterrupted one would.
    """

    def __init__(self, max_nll_ratio: float | None = 3.0, window: int = 10, min_nll_rise: float = 1.0):
        self.max_nll_ratio, self.window, self.min_nll_rise = max_nll_ratio, max(1, window), min_nll_rise
        self._head: list[float] = []  # the first 2 x window NLLs (a short run is judged on these alone)
        self._recent: deque[float] = deque(maxlen=self.window)
        self._count = 0
        self._step = -1

    def state_dict(self) -> dict:
        return {"head": list(self._head), "recent": list(self._recent), "count": self._count, "step": self._step}

    def load_state_dict(self, state: dict) -> None:
        self._step = int(state.get("step", -1))
        self._recent = deque(state.get("recent", []), maxlen=self.window)
        if "head" in state:
            self._head, self._count = list(state["head"]), int(state.get("count", len(state["head"])))
        else:  # a checkpoint of the guard before short runs were judged: the first window, then the recent one
            self._head = (list(state.get("first", [])) + list(self._recent))[: 2 * self.window]
            self._count = len(self._head)

    def _windows(self) -> tuple[list[float], list[float]] | None:
        """(start, now): the first ``window`` NLLs and the last ``window``; in a run of fewer than 2 x ``window``
        steps so far, its first half and its second half, so that a short run that destroys its model is stopped
        too (from the second step on)."""
        n, w = self._count, self.window
        if n < 2:
            return None
        if n <= 2 * w:
            k = min(w, n // 2)
            return self._head[:k], self._head[k:n]
        return self._head[:w], list(self._recent)

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
        self._count += 1
        if len(self._head) < 2 * self.window:
            self._head.append(nll)
        self._recent.append(nll)
        windows = self._windows()
        if windows is None:
            return
        first, recent = windows
        start, now = sum(first) / len(first), sum(recent) / len(recent)
        runaway = now > self.max_nll_ratio * max(start, 1e-6) and now - start > self.min_nll_rise
        self._stop(trainer, runaway,
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


# Below this starting chrF the policy does not translate yet (an untrained model, a tiny test run): a drop says
# nothing about a collapse, so the run is not judged.
MIN_JUDGED_CHRF = 20.0


def check_heldout_collapse(before: dict | None, after: dict | None, min_chrf_ratio: float | None) -> None:
    """A run whose held-out translations collapsed against the starting policy's is a failed run.

    The criterion: the trained policy's corpus chrF on the held-out test sentences is below ``min_chrf_ratio``
    (default 0.5) times the starting policy's, when the starting policy translates at all (chrF >= 20). chrF,
    not BLEU, because preference training may trade a few BLEU points for quality (ALMA-R's BLEU fell while
    COMET rose) and chrF moves far less; a normal run moves it by a few points (the demo: 90 -> 93), a
    collapse by tens (a destroyed model: 89 -> 2). ``None`` (``guard.min_chrf_ratio=null``) switches it off.
    """
    if min_chrf_ratio is None or not before or not after:
        return
    start, end = before.get("chrf"), after.get("chrf")
    if not isinstance(start, (int, float)) or not isinstance(end, (int, float)) or start < MIN_JUDGED_CHRF:
        return
    if end < min_chrf_ratio * start:
        bleu = (f", BLEU {before['bleu']:.2f} -> {after['bleu']:.2f}"
                if isinstance(before.get("bleu"), (int, float)) and isinstance(after.get("bleu"), (int, float)) else "")
        raise Diverged(f"training collapsed the policy: held-out chrF fell from {start:.2f} to {end:.2f}{bleu} "
                       f"(below {min_chrf_ratio} x the starting policy's; guard.min_chrf_ratio)")
