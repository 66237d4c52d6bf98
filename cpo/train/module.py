"""The LightningModule: a policy, a configured loss and optimiser settings, all built elsewhere."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import lightning as L
import torch
from torch import Tensor, nn

from cpo.train.chunked_logps import LogpsSettings
from cpo.train.logprobs import (CompletionLogps, completion_logps, completion_logps_packed,
                               completion_logps_shared_prompt)
from cpo.train.losses import PreferenceLoss
from cpo.train.models import Reference

SCHEDULES = ("inverse_sqrt", "cosine", "linear", "constant")
# How chosen and rejected are run (all give the same log-probs and gradients; see scripts/bench.py):
# concat: [prompt; side] rows stacked along the batch; kv_cache: the prompt once, both sides
# continued from its KV cache; packed: one row [prompt; chosen; rejected] per pair with a mask that
# keeps the sides apart (fastest measured; falls back to kv_cache for attention kernels without 4D masks).
FORWARDS = {"concat": completion_logps, "kv_cache": completion_logps_shared_prompt, "packed": completion_logps_packed}


@dataclass
class OptimSettings:
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: Sequence[float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "inverse_sqrt"
    warmup_ratio: float = 0.01
    fused: bool = True  # torch's fused AdamW where the device supports it (measured 1.09x per step on CPU)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule: unknown schedule {self.schedule!r} (known: {', '.join(SCHEDULES)})")
        if not 0 < self.lr < float("inf"):
            raise ValueError(f"optim.lr must be a positive number, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


# Sums accumulated over a validation epoch, reduced across ranks once at its end.
_VAL_KEYS = (
    "pairs", "pref_loss", "nll_sum", "nll_tokens", "rewards_chosen", "rewards_rejected", "reward_acc",
    "logps_chosen", "logps_rejected", "logps_acc", "logps_chosen_avg", "logps_rejected_avg",
)
# ... and over an optimizer step's micro-batches (its accumulation window), reduced across ranks before the step:
# these, and any other statistic a training step returns (the same on every rank: they follow the config).
_TRAIN_KEYS = _VAL_KEYS + ("logps_reference", "logps_reference_avg", "loss_share")


class PreferenceModule(L.LightningModule):
    """``policy`` is a built model, or a zero-argument factory that ``configure_model`` calls: sharded
    strategies (FSDP, DeepSpeed ZeRO-3) then wrap the model as it is created, on the right device."""

    def __init__(
        self,
        policy: nn.Module | Callable[[], nn.Module],
        loss: PreferenceLoss,
        optim: OptimSettings,
        pad_id: int,
        reference: Reference | None = None,
        forward: str = "concat",
        logps: LogpsSettings | None = None,
    ):
        super().__init__()
        if isinstance(policy, nn.Module):
            self.policy = policy
        else:
            self.policy = None
            self._policy_factory = policy
        self.loss = loss
        self.optim = optim
        self.pad_id = pad_id
        self.reference = reference
        if forward not in FORWARDS:
            raise ValueError(f"forward={forward!r} is not one of {', '.join(FORWARDS)}")
        self.forward_mode = forward
        # Full logits, or the output projection a chunk of tokens at a time (cpo/train/chunked_logps.py): for
        # every log-prob this module computes (training, validation, the live DPO reference).
        self.logps = logps or LogpsSettings()
        self._val: dict[str, Tensor] = {}
        self._window: dict[str, Tensor] = {}  # this optimizer step's micro-batch sums so far

    def configure_model(self) -> None:
        if self.policy is None:
            self.policy = self._policy_factory()

    # ------------------------------------------------------------------ forward pieces
    def _logps(self, model: nn.Module, batch: dict, sides: Sequence[str]) -> dict[str, CompletionLogps]:
        fn = FORWARDS[self.forward_mode] if len(sides) > 1 else completion_logps
        outs = fn(model, batch["prompt_ids"], batch["prompt_mask"],
                  [(batch[f"{s}_ids"], batch[f"{s}_mask"]) for s in sides], self.pad_id, self.logps.chunk_for(model))
        return dict(zip(sides, outs))

    def _reference_logps(self, batch: dict) -> tuple[Tensor, Tensor]:
        if "ref_chosen_logps" in batch:
            return batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        if self.reference is None:
            raise RuntimeError(
                "DPO needs a reference: set loss.reference to auto, adapter_disabled, frozen_copy or cached"
            )
        with torch.no_grad(), self.reference.model_for(self.policy) as ref_model:
            out = self._logps(ref_model, batch, ("chosen", "rejected"))
        return out["chosen"].sum, out["rejected"].sum

    def _sides(self, batch: dict, train: bool) -> list[str]:
        nll_side = "reference" if self.loss.nll_target == "reference" else "chosen"
        if train and not self.loss.needs_rejected:
            return [nll_side]  # SFT trains on one side only; no second forward to pay for
        sides = ["chosen", "rejected"]
        if nll_side == "reference" and "reference_ids" in batch:
            sides.append("reference")
        return sides

    def compute(self, batch: dict, train: bool) -> tuple[Tensor, dict[str, Tensor]]:
        """(loss to backpropagate, batch statistics). The loss is normalised by the window totals."""
        lf = self.loss
        out = self._logps(self.policy, batch, self._sides(batch, train))
        nll_side = "reference" if lf.nll_target == "reference" and "reference" in out else "chosen"
        nll = out[nll_side]
        nll_sum = -nll.sum.sum()
        stats: dict[str, Tensor] = {"pairs": torch.tensor(float(nll.sum.shape[0]), device=nll_sum.device)}
        stats["nll_sum"], stats["nll_tokens"] = nll_sum.detach(), nll.n_tokens.sum().float()

        pref_sum = torch.zeros((), device=nll_sum.device)
        if "rejected" in out:
            c, r = out["chosen"], out["rejected"]
            pc, pr = (c.mean, r.mean) if lf.average_logps else (c.sum, r.sum)
            refs = self._reference_logps(batch) if lf.needs_reference_model else (None, None)
            if lf.needs_reference_model and lf.average_logps:
                refs = (refs[0] / c.n_tokens.clamp(min=1), refs[1] / r.n_tokens.clamp(min=1))
            losses, rc, rr = lf.preference_terms(pc, pr, *refs, chosen_avg_logps=c.mean, rejected_avg_logps=r.mean)
            pref_sum = losses.sum()
            stats.update(
                pref_loss=pref_sum.detach(),
                rewards_chosen=rc.sum(), rewards_rejected=rr.sum(), reward_acc=(rc > rr).float().sum(),
                # Summed log-probs whatever the loss, so runs of different losses compare on them; the
                # mean token log-probs are what TRL logs as logps/* for IPO, SimPO and ORPO.
                logps_chosen=c.sum.detach().sum(), logps_rejected=r.sum.detach().sum(),
                logps_acc=(c.sum > r.sum).float().sum(),
                logps_chosen_avg=c.mean.detach().sum(), logps_rejected_avg=r.mean.detach().sum(),
            )
        else:  # SFT trains one side: its log-probs are logged too, so its training curves sit beside the others'
            stats[f"logps_{nll_side}"], stats[f"logps_{nll_side}_avg"] = nll.sum.detach().sum(), nll.mean.detach().sum()

        # Lightning divides by accumulate_grad_batches and DDP averages over ranks; multiplying by
        # both and dividing by the window totals makes the gradient that of one large batch:
        # mean preference loss over its pairs + alpha * token-mean NLL over its tokens (eq. 3 + eq. 4).
        scale = ((self.trainer.accumulate_grad_batches if train and self._trainer else 1)
                 * (self.trainer.world_size if self._trainer else 1))
        window_pairs, window_tokens = batch["window_pairs"].clamp(min=1), batch["window_tokens"].clamp(min=1)
        share = pref_sum / window_pairs  # this micro-batch's share of the window's loss
        if lf.alpha:
            share = share + lf.alpha * nll_sum / window_tokens
        stats["loss_share"] = share.detach()
        return scale * share, stats

    @staticmethod
    def summarize(s: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
        """Per-pair / per-token means with TRL's metric names from summed statistics.

        ``nll_loss`` is the NLL term of the loss, so it is absent when ``alpha`` is 0 (TRL logs a
        constant 0 there). ``logps/chosen|rejected|margins|accuracies`` are summed log-probs for
        every loss; ``logps/*_avg`` are the mean token log-probs, TRL's ``logps/*`` for IPO, SimPO, ORPO.
        SFT's training step sees one side: it logs that side's ``logps/chosen`` (``logps/reference`` for
        SFT on the reference) and its ``_avg``.
        """
        n = s["pairs"].clamp(min=1)
        nll = s["nll_sum"] / s["nll_tokens"].clamp(min=1)
        pref = s.get("pref_loss")
        m = {"loss": (pref / n if pref is not None else 0.0) + alpha * nll}
        if alpha:
            m["nll_loss"] = nll
        if pref is not None:
            m.update({
                "rewards/chosen": s["rewards_chosen"] / n,
                "rewards/rejected": s["rewards_rejected"] / n,
                "rewards/margins": (s["rewards_chosen"] - s["rewards_rejected"]) / n,
                "rewards/accuracies": s["reward_acc"] / n,
                "logps/chosen": s["logps_chosen"] / n,
                "logps/rejected": s["logps_rejected"] / n,
                "logps/margins": (s["logps_chosen"] - s["logps_rejected"]) / n,
                "logps/accuracies": s["logps_acc"] / n,
                "logps/chosen_avg": s["logps_chosen_avg"] / n,
                "logps/rejected_avg": s["logps_rejected_avg"] / n,
                "logps/margins_avg": (s["logps_chosen_avg"] - s["logps_rejected_avg"]) / n,
            })
        else:  # SFT's one side: logps/chosen, or logps/reference for SFT on the human reference
            m.update({f"logps/{k[len('logps_'):]}": v / n for k, v in s.items() if k.startswith("logps_")})
        return m

    # ------------------------------------------------------------------ Lightning hooks
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, stats = self.compute(batch, train=True)
        for k, v in stats.items():  # logged once the window is complete (on_before_optimizer_step)
            self._window[k] = self._window.get(k, 0) + v.detach().float()
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        # The metrics of the whole global batch this step trains on: its micro-batches summed, then its ranks.
        # Logged per micro-batch, train/loss was the last micro-batch's loss and train/loss_global its share
        # (1/16 of the loss on one GPU under the ALMA preset), so curves of different device counts differed.
        if not self._window_complete():
            return
        totals = self._sum_over_ranks(self._window, _TRAIN_KEYS + tuple(sorted(set(self._window) - set(_TRAIN_KEYS))))
        self._window = {}
        if not totals:
            return
        n = int(totals["pairs"])
        metrics = self.summarize(totals, self.loss.alpha)
        self.log("train/loss", metrics.pop("loss"), prog_bar=True, batch_size=n)
        # The sum of every micro-batch's share of the window's loss (what is backpropagated): equal to
        # train/loss up to rounding, kept under its older name for the curves that use it.
        self.log("train/loss_global", totals["loss_share"], on_step=True, on_epoch=False, batch_size=n)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=n)

    def _window_complete(self) -> bool:
        """Whether this optimizer step ends an accumulation window. Lightning calls the hook once per window,
        except under a strategy that accumulates by itself (DeepSpeed: every micro-batch is an optimizer step
        to Lightning, and the engine applies the update at its accumulation boundary)."""
        if not self.trainer.strategy.handles_gradient_accumulation:
            return True
        boundary = getattr(self.trainer.model, "is_gradient_accumulation_boundary", None)
        return not callable(boundary) or bool(boundary())

    def on_validation_epoch_start(self) -> None:
        self._val = {}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        with torch.no_grad():
            _, stats = self.compute(batch, train=False)
        for k, v in stats.items():
            if k in _VAL_KEYS:
                self._val[k] = self._val.get(k, 0) + v.detach().float()

    def _sum_over_ranks(self, sums: dict[str, Tensor], keys: Sequence[str]) -> dict[str, Tensor]:
        """``sums`` added up over the ranks. Every rank joins, also one that got no batch (fewer validation pairs
        than ranks): a rank that left it out would break the others' collective. Which keys exist is summed
        alongside their values."""
        n = len(keys)
        packed = torch.zeros(2 * n, dtype=torch.float32, device=self.device)
        for i, k in enumerate(keys):
            if k in sums:
                packed[i], packed[n + i] = torch.as_tensor(sums[k], dtype=torch.float32), 1.0
        packed = self.trainer.strategy.reduce(packed, reduce_op="sum")
        return {k: packed[i] for i, k in enumerate(keys) if packed[n + i] > 0}

    def on_validation_epoch_end(self) -> None:
        totals = self._sum_over_ranks(self._val, _VAL_KEYS)
        self._val = {}
        if not totals:
            return
        metrics = self.summarize(totals, self.loss.alpha)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, sync_dist=False, rank_zero_only=False)

    def _stepping_batches(self) -> float:
        """Lightning's ``estimated_stepping_batches``, computed from the data module when it can say its length.

        Lightning's own estimate builds the train loader before a checkpoint is restored, and then never
        restores the loader's position (its states load only when the loader is first set up), so a run
        resumed in the middle of an epoch would start the epoch over.
        """
        t = self.trainer
        count = getattr(t.datamodule, "micro_batches_per_epoch", None)
        if count is None or t.max_epochs == -1:
            return t.estimated_stepping_batches
        batches, limit = count(t.world_size), t.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        total = math.ceil(batches / t.accumulate_grad_batches) * max(t.max_epochs or 1, 1)
        return min(total, t.max_steps) if t.max_steps != -1 else total

    def configure_optimizers(self):
        from transformers import get_scheduler

        decay, no_decay = [], []
        for name, p in self.policy.named_parameters():
            if not p.requires_grad:
                continue
            # Norm gains and biases are not weights to shrink.
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        o = self.optim
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # Lightning's mixed precision (16-mixed, bf16-mixed) refuses to clip the gradients of a fused optimizer,
        # which unscales them itself: under it, torch's default (foreach) AdamW is used.
        from lightning.pytorch.plugins.precision import MixedPrecision

        amp = self._trainer is not None and isinstance(self.trainer.precision_plugin, MixedPrecision)
        fused = o.fused and not amp
        try:
            opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused or None)
        except RuntimeError:  # fused needs floating-point parameters on a supported device: fall back
            opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        total = max(1, int(self._stepping_batches()))
        warmup = math.ceil(o.warmup_ratio * total)  # rounded up, as the HF Trainer that ALMA-R used does
        name = "constant_with_warmup" if o.schedule == "constant" else o.schedule
        kwargs = {"num_warmup_steps": warmup}
        if name in ("cosine", "linear"):
            kwargs["num_training_steps"] = total
        sched = get_scheduler(name, opt, **kwargs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
