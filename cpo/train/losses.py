"""Preference losses as pure functions of per-sequence log-probs (SPEC section 3).

Every function takes policy (and, for DPO, reference) log-probs of the chosen and rejected
completions, one value per pair, and returns ``(losses, chosen_rewards, rejected_rewards)``:
per-pair losses (the caller reduces them, so gradient accumulation can normalise exactly) and
detached rewards for logging. ``PreferenceLoss`` ties a configuration (Hydra ``conf/loss/*``)
to these functions and adds the behaviour-cloning NLL term of CPO.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

Kind = Literal["sigmoid", "hinge", "ipo", "simpo", "dpo", "orpo", "arpo", "none"]
KINDS: tuple[str, ...] = ("sigmoid", "hinge", "ipo", "simpo", "dpo", "orpo", "arpo", "none")
# Mean token log-probs above this are taken as this: at P(y|x) = 1 ORPO's odds are infinite and
# log(1 - P) has an infinite (NaN after torch.where) gradient. A float32 log-softmax cannot tell
# log-probs this close to 0 apart anyway (its resolution for logits of order 10 is about 1e-6).
ORPO_MAX_AVG_LOGP = -1e-6


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


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0 without cancellation (Maechler 2012: switch at x = -ln 2)."""
    x = x.clamp(max=ORPO_MAX_AVG_LOGP)  # both branches stay finite, so torch.where's gradient does too
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """ORPO's odds-ratio term (Hong et al. 2024), weighted by lambda (= ``beta``, TRL's name).

    P(y|x) is the length-normalised probability exp(mean token log-prob). Computed in float32 with a
    stable log(1 - P): a confident policy (P near 1) made TRL's ORPO give NaN (trl issue 3237); TRL's
    fix (trl PR 4763) still gives NaN at P = 1 exactly, which the cap ORPO_MAX_AVG_LOGP prevents.
    """
    c, r = chosen_avg_logps.float(), rejected_avg_logps.float()
    log_odds = (c - log1mexp(c)) - (r - log1mexp(r))  # eq. 4: log odds(y|x) = log P - log(1 - P)
    losses = -beta * F.logsigmoid(log_odds)  # eq. 7 (L_OR), times lambda as in eq. 6
    return losses, beta * c.detach(), beta * r.detach()  # TRL's ORPO rewards: beta * mean log-prob


def arpo_tau(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor, c1: float, c2: float) -> Tensor:
    """ARPO's adaptive weight of the rejected side: tau = min(c1 * exp(c2 * d) - 1, 1).

    d = |mean token log-prob of y_w - that of y_l|: near-identical pairs (small d, tau < 1 and even
    negative for d < ln(1/c1)/c2) are rejected less hard than clearly different ones.
    """
    d = (chosen_avg_logps - rejected_avg_logps).abs()
    # tau reaches 1 at c2 * d = ln(2 / c1); capping the exponent there keeps exp from overflowing to inf, whose
    # gradient through the clamp would be 0 * inf = NaN.
    x, limit = c2 * d, math.log(2 / c1)
    tau = c1 * torch.exp(torch.clamp(x, max=limit)) - 1
    # Saturated, the min is exactly 1: c1 * exp(ln(2 / c1)) - 1 rounds to 0.99999988 on some CPUs (AMD EPYC).
    return torch.where(x >= limit, torch.ones_like(tau), tau.clamp(max=1.0))


def arpo_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    chosen_avg_logps: Tensor,
    rejected_avg_logps: Tensor,
    beta: float,
    c1: float = 0.9,
    c2: float = 0.4,
    detach_tau: bool = False,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """ARPO (X-ALMA, Xu et al. 2025, section 5): CPO's L_prefer with y_l's log-prob weighted by tau.

    ``chosen_logps``/``rejected_logps`` enter the logits (summed, or averaged with
    ``average_logps``); tau always uses the true mean token log-probs. The ALMA repository's
    ``cpo_loss`` does not detach tau (the default here) and, on already averaged log-probs,
    divides by the length a second time (not reproduced).
    """
    tau = arpo_tau(chosen_avg_logps, rejected_avg_logps, c1, c2)
    if detach_tau:
        tau = tau.detach()
    logits = beta * (chosen_logps - tau * rejected_logps)  # log pi(y_w) - tau * log pi(y_l), as eq. 3 otherwise
    losses = _smoothed_sigmoid(logits, label_smoothing)
    return losses, beta * chosen_logps.detach(), beta * rejected_logps.detach()


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
          "orpo" = ORPO's odds ratio, "arpo" = X-ALMA's adaptive rejection, "none" = pure NLL, i.e. SFT).
    beta: the loss's scale (ORPO: its lambda, TRL's beta).
    alpha: weight of the NLL term (CPO, ORPO: 1; prefer-only: 0).
    nll_target: which completion the NLL term imitates: "chosen" (CPO, SFT on y_w) or
          "reference" (SFT on the human reference).
    average_logps: length-normalised log-probs for the preference term (IPO, SimPO, ORPO).
    tau_c1, tau_c2, tau_detach: ARPO's tau = min(c1 * exp(c2 * d) - 1, 1) and whether it is a constant.
    """

    name: str
    kind: str = "sigmoid"
    beta: float = 0.1
    alpha: float = 1.0
    label_smoothing: float = 0.0
    gamma: float = 0.0
    average_logps: bool = False
    nll_target: str = "chosen"
    tau_c1: float = 0.9
    tau_c2: float = 0.4
    tau_detach: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "PreferenceLoss":
        """From a resolved ``loss`` config: its keys that are fields (others, e.g. ``reference``, are the run's)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in names})

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
        if self.label_smoothing and self.kind in ("hinge", "ipo", "orpo"):
            raise ValueError(f"loss.label_smoothing is not defined for kind {self.kind!r}")
        if self.kind == "orpo" and not self.average_logps:
            raise ValueError("loss.kind 'orpo' is defined on length-averaged log-probs: set loss.average_logps=true")
        if self.kind == "arpo" and not (self.tau_c1 > 0 and self.tau_c2 >= 0):
            raise ValueError(f"loss.tau_c1 must be > 0 and loss.tau_c2 >= 0, got {self.tau_c1} and {self.tau_c2}")

    @property
    def needs_reference_model(self) -> bool:
        return self.kind == "dpo"

    @property
    def needs_rejected(self) -> bool:
        return self.kind != "none"

    @property
    def ignored_keys(self) -> tuple[str, ...]:
        """Config keys that cannot change what this loss trains: SFT's beta only scales the logged rewards, so a
        sweep runs SFT once, not once per beta (hydra.sweeper.ignored_keys, cpo.train.sweeps)."""
        return ("beta", "loss.beta") if self.kind == "none" else ()

    def preference_terms(
        self,
        chosen_logps: Tensor,
        rejected_logps: Tensor,
        ref_chosen_logps: Tensor | None = None,
        ref_rejected_logps: Tensor | None = None,
        chosen_avg_logps: Tensor | None = None,
        rejected_avg_logps: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-pair preference losses and rewards; log-probs are already averaged when configured.

        ``*_avg_logps`` are the mean token log-probs, which ARPO's tau needs whatever ``average_logps`` is.
        """
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
        if self.kind == "orpo":
            # ORPO's SFT term is this class's NLL term (alpha = 1): the token mean over the completion
            # tokens of the whole accumulation window. TRL's ORPOTrainer averages over every non-padding
            # token of the chosen rows, prompt included, per micro-batch: its NLL also trains the prompt
            # tokens, and its accumulated gradient weighs micro-batches, not tokens, equally.
            return orpo_loss(chosen_logps, rejected_logps, b)
        if self.kind == "arpo":
            if chosen_avg_logps is None or rejected_avg_logps is None:
                raise ValueError("ARPO needs the mean token log-probs of both sides for its tau")
            return arpo_loss(chosen_logps, rejected_logps, chosen_avg_logps, rejected_avg_logps, b,
                             self.tau_c1, self.tau_c2, self.tau_detach, eps)
        # "none" (SFT): no preference term, rewards still reported for comparison across losses.
        zeros = torch.zeros_like(chosen_logps)
        return zeros, b * chosen_logps.detach(), b * rejected_logps.detach()
