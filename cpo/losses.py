"""Preference losses as pure functions of per-sequence log-probs (SPEC section 3).

Every function takes policy (and, for DPO, reference) log-probs of the chosen and rejected
completions, one value per pair, and returns ``(losses, chosen_rewards, rejected_rewards)``:
per-pair losses (the caller reduces them, so gradient accumulation can normalise exactly) and
detached rewards for logging. ``PreferenceLoss`` ties a configuration (Hydra ``conf/loss/*``)
to these functions and adds the behaviour-cloning NLL term of CPO.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Kind = Literal["sigmoid", "hinge", "ipo", "simpo", "dpo", "none"]
KINDS: tuple[str, ...] = ("sigmoid", "hinge", "ipo", "simpo", "dpo", "none")


def _smoothed_sigmoid(logits: Tensor, label_smoothing: float) -> Tensor:
    # Conservative DPO/cDPO: with probability eps the preference label is flipped.
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def cpo_prefer_loss(
    chosen_logps: Tensor, rejected_logps: Tensor, beta: float, label_smoothing: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """L_prefer of CPO: DPO with a uniform reference model (paper eq. 3)."""
    logits = beta * (chosen_logps - rejected_logps)
    losses = _smoothed_sigmoid(logits, label_smoothing)  # eq. 3
    return losses, beta * chosen_logps.detach(), beta * rejected_logps.detach()


def hinge_loss(chosen_logps: Tensor, rejected_logps: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """SLiC-style hinge on the log-prob margin: relu(1 - beta * delta)."""
    losses = torch.relu(1 - beta * (chosen_logps - rejected_logps))
    return losses, beta * chosen_logps.detach(), beta * rejected_logps.detach()


def ipo_loss(chosen_logps: Tensor, rejected_logps: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """IPO (Azar et al.): squared distance of the margin from 1/(2 beta); expects average log-probs."""
    losses = (chosen_logps - rejected_logps - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_logps.detach(), beta * rejected_logps.detach()


def simpo_loss(
    chosen_logps: Tensor, rejected_logps: Tensor, beta: float, gamma: float, label_smoothing: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """SimPO (Meng et al.): -log sigmoid(beta * delta_avg - gamma) on length-averaged log-probs."""
    logits = beta * (chosen_logps - rejected_logps) - gamma
    losses = _smoothed_sigmoid(logits, label_smoothing)
    return losses, beta * chosen_logps.detach(), beta * rejected_logps.detach()


def dpo_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO (paper eq. 2); rewards are beta times the policy/reference log-ratio."""
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    losses = _smoothed_sigmoid(beta * (chosen_ratio - rejected_ratio), label_smoothing)  # eq. 2
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def nll_loss(token_nll_sum: Tensor, n_tokens: Tensor | float) -> Tensor:
    """Token-level mean NLL: the relaxed behaviour-cloning constraint of CPO (paper eq. 4).

    Summed NLL divided by the token count of the whole (accumulated) batch, so that long and
    short completions weigh by their tokens exactly as in one large batch.
    """
    return token_nll_sum / n_tokens


@dataclass(frozen=True)
class PreferenceLoss:
    """One configured objective: a preference term plus ``alpha`` times the NLL term.

    kind: the preference term ("sigmoid" = CPO's L_prefer, "dpo", "hinge", "ipo", "simpo",
          "none" = pure NLL, i.e. SFT).
    alpha: weight of the NLL term (CPO: 1; prefer-only: 0).
    nll_target: which completion the NLL term imitates: "chosen" (CPO, SFT on y_w) or
          "reference" (SFT on the human reference).
    average_logps: length-normalised log-probs for the preference term (IPO, SimPO).
    """

    name: str
    kind: str = "sigmoid"
    beta: float = 0.1
    alpha: float = 1.0
    label_smoothing: float = 0.0
    gamma: float = 0.0
    average_logps: bool = False
    nll_target: str = "chosen"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"loss.kind: unknown preference term {self.kind!r} (known: {', '.join(KINDS)})")
        if not self.beta > 0:
            raise ValueError(f"loss.beta must be > 0, got {self.beta}")
        if self.alpha < 0:
            raise ValueError(f"loss.alpha must be >= 0, got {self.alpha}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"loss.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.nll_target not in ("chosen", "reference"):
            raise ValueError(f"loss.nll_target must be 'chosen' or 'reference', got {self.nll_target!r}")
        if self.kind == "none" and self.alpha == 0:
            raise ValueError("loss: kind 'none' with alpha 0 has nothing to train")
        if self.label_smoothing and self.kind in ("hinge", "ipo"):
            raise ValueError(f"loss.label_smoothing is not defined for kind {self.kind!r}")

    @property
    def needs_reference_model(self) -> bool:
        return self.kind == "dpo"

    @property
    def needs_rejected(self) -> bool:
        return self.kind != "none"

    def preference_terms(
        self,
        chosen_logps: Tensor,
        rejected_logps: Tensor,
        ref_chosen_logps: Tensor | None = None,
        ref_rejected_logps: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-pair preference losses and rewards; log-probs are already averaged when configured."""
        b, eps = self.beta, self.label_smoothing
        if self.kind == "sigmoid":
            return cpo_prefer_loss(chosen_logps, rejected_logps, b, eps)
        if self.kind == "hinge":
            return hinge_loss(chosen_logps, rejected_logps, b)
        if self.kind == "ipo":
            return ipo_loss(chosen_logps, rejected_logps, b)
        if self.kind == "simpo":
            return simpo_loss(chosen_logps, rejected_logps, b, self.gamma, eps)
        if self.kind == "dpo":
            if ref_chosen_logps is None or ref_rejected_logps is None:
                raise ValueError("DPO needs reference log-probs (a reference model or a cache)")
            return dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, b, eps)
        # "none" (SFT): no preference term, rewards still reported for comparison across losses.
        zeros = torch.zeros_like(chosen_logps)
        return zeros, b * chosen_logps.detach(), b * rejected_logps.detach()
