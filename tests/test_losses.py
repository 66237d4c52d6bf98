"""Each loss against values computed by hand from the formulas of SPEC section 3 (and TRL's ORPO)."""
import math
from pathlib import Path

import pytest
import torch
from conftest import approx32

from cpo.train.losses import (
    PreferenceLoss, arpo_loss, arpo_tau, cpo_prefer_loss, dpo_loss, hinge_loss, ipo_loss, log1mexp, orpo_loss,
    simpo_loss,
)

PC = torch.tensor([-10.0, -4.0])  # policy log pi(y_w|x)
PR = torch.tensor([-12.0, -3.0])  # policy log pi(y_l|x)
RC = torch.tensor([-11.0, -5.0])  # reference log pi_ref(y_w|x)
RR = torch.tensor([-11.5, -2.0])


def nls(x):  # -log sigmoid(x), by hand
    return math.log(1 + math.exp(-x))


def test_cpo_prefer_is_dpo_with_uniform_reference():
    losses, rc, rr = cpo_prefer_loss(PC, PR, beta=0.1)
    assert losses.tolist() == approx32([nls(0.1 * 2.0), nls(0.1 * -1.0)])
    assert rc.tolist() == approx32([-1.0, -0.4]) and rr.tolist() == approx32([-1.2, -0.3])


def test_label_smoothing():
    losses, _, _ = cpo_prefer_loss(PC, PR, beta=0.5, label_smoothing=0.1)
    want = [0.9 * nls(0.5 * d) + 0.1 * nls(-0.5 * d) for d in (2.0, -1.0)]
    assert losses.tolist() == approx32(want)


def test_dpo():
    losses, rc, rr = dpo_loss(PC, PR, RC, RR, beta=0.1)
    # row 0: (-10+11) - (-12+11.5) = 1.5; row 1: (-4+5) - (-3+2) = 2
    assert losses.tolist() == approx32([nls(0.15), nls(0.2)])
    assert rc.tolist() == approx32([0.1, 0.1]) and rr.tolist() == approx32([-0.05, -0.1])


def test_hinge_ipo_simpo():
    assert hinge_loss(PC, PR, beta=0.1)[0].tolist() == approx32([max(0, 1 - 0.2), max(0, 1 + 0.1)])
    assert hinge_loss(PC, PR, beta=1.0)[0].tolist() == approx32([0.0, 2.0])
    assert ipo_loss(PC, PR, beta=0.1)[0].tolist() == approx32([(2 - 5) ** 2, (-1 - 5) ** 2])
    assert simpo_loss(PC, PR, beta=2.0, gamma=1.0)[0].tolist() == approx32([nls(2 * 2 - 1), nls(2 * -1 - 1)])


def test_preference_loss_dispatch_and_validation():
    loss = PreferenceLoss("cpo")
    assert loss.preference_terms(PC, PR)[0].tolist() == approx32([nls(0.2), nls(-0.1)])
    sft = PreferenceLoss("sft", kind="none")
    assert sft.preference_terms(PC, PR)[0].tolist() == [0.0, 0.0] and not sft.needs_rejected
    assert PreferenceLoss("dpo", kind="dpo", alpha=0).needs_reference_model
    with pytest.raises(ValueError, match="beta must be > 0"):
        PreferenceLoss("x", beta=0)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        PreferenceLoss("x", alpha=-1)
    with pytest.raises(ValueError, match="unknown preference term"):
        PreferenceLoss("x", kind="nope")
    with pytest.raises(ValueError, match="reference log-probs"):
        PreferenceLoss("dpo", kind="dpo").preference_terms(PC, PR)


@pytest.mark.parametrize("forward", ["concat", "kv_cache", "packed"])
def test_cpo_total_loss_through_the_module_matches_hand_value(tiny_tok_model, forward):
    """L = mean L_prefer + alpha * token-mean NLL of y_w, computed by hand from per-token log-probs."""
    from cpo.data import Collator, PairEncoder, PreferenceExample
    from cpo.train.module import OptimSettings, PreferenceModule

    tok, model = tiny_tok_model
    enc = PairEncoder(tok, 64, 128)
    exs = [PreferenceExample("der hund", "the dog", "a cat sees", "de", "en"),
           PreferenceExample("die katze 3", "the cat 3 today", "cat", "de", "en")]
    batch = Collator(tok.pad_token_id)([{"pair": enc.encode(i, e)} for i, e in enumerate(exs)])
    mod = PreferenceModule(model, PreferenceLoss("cpo", beta=0.1, alpha=1.0), OptimSettings(), tok.pad_token_id,
                           forward=forward)
    loss, stats = mod.compute(batch, train=False)
    sums, lens = hand_logps(model, [enc.encode(i, e) for i, e in enumerate(exs)])
    prefer = sum(nls(0.1 * (c - r)) for c, r in sums) / 2
    nll = -sum(c for c, _ in sums) / sum(n for n, _ in lens)
    assert float(loss) == pytest.approx(prefer + nll, rel=1e-4)


def hand_logps(model, pairs):
    """Per pair: (sum log pi(y_w), sum log pi(y_l)) and (|y_w|, |y_l|) from unpadded one-row forwards, in float64."""
    sums, lens = [], []
    for p in pairs:
        per = []
        for comp in (p.chosen_ids, p.rejected_ids):
            ids = torch.tensor([p.prompt_ids + comp])
            with torch.no_grad():
                lp = torch.log_softmax(model(ids).logits[0].double(), -1)
            per.append(sum(float(lp[len(p.prompt_ids) - 1 + t, c]) for t, c in enumerate(comp)))
        sums.append(tuple(per))
        lens.append((len(p.chosen_ids), len(p.rejected_ids)))
    return sums, lens


# ---------------------------------------------------------------------------------------------- ORPO
AC = torch.tensor([-0.05, -1.2, -0.7])  # mean token log-probs of y_w (both sides of -ln 2 = -0.693)
AR = torch.tensor([-0.40, -0.9, -2.5])


def log_odds(a: float) -> float:  # log(P / (1 - P)) with P = exp(a), by hand in float64
    return a - math.log(1 - math.exp(a))


def test_log1mexp_is_accurate_on_both_branches_and_never_nan():
    x = torch.tensor([-1e-5, -0.01, -0.69, -0.70, -5.0, -40.0])
    want = [math.log(-math.expm1(v)) for v in x.tolist()]
    assert log1mexp(x).tolist() == approx32(want)
    # P = 1 exactly (every token certain): finite value and gradient, where log(1 - exp(0)) is -inf
    z = torch.zeros(2, requires_grad=True)
    log1mexp(z).sum().backward()
    assert torch.isfinite(log1mexp(z.detach())).all() and torch.isfinite(z.grad).all()


def test_orpo_matches_hand_computation():
    losses, rc, rr = orpo_loss(AC, AR, beta=0.25)
    want = [0.25 * nls(log_odds(c) - log_odds(r)) for c, r in zip(AC.tolist(), AR.tolist())]
    assert losses.tolist() == approx32(want)
    assert rc.tolist() == approx32((0.25 * AC).tolist()) and rr.tolist() == approx32((0.25 * AR).tolist())
    # float32 whatever the input dtype
    assert orpo_loss(AC.bfloat16(), AR.bfloat16(), 0.1)[0].dtype == torch.float32


def _trl_orpo(beta: float):
    """TRL's own ORPO odds-ratio loss, called on its trainer class without building a trainer."""
    from types import SimpleNamespace

    orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")
    fake = SimpleNamespace(beta=beta, accelerator=SimpleNamespace(device="cpu"))
    return orpo.ORPOTrainer, lambda c, r: orpo.ORPOTrainer.odds_ratio_loss(fake, c, r)


def test_orpo_matches_trl_odds_ratio_loss_on_identical_inputs():
    _, trl_loss = _trl_orpo(0.1)
    g = torch.Generator().manual_seed(0)
    c, r = -torch.rand(64, generator=g) * 3, -torch.rand(64, generator=g) * 3  # mean log-probs in (-3, 0)
    # and both sides of log1mexp's switch at -ln 2 and of the cap at P = 1 (equal to TRL down to -1e-6)
    c[:4], r[:4] = torch.tensor([-2e-6, -1e-5, -0.6931, -0.6932]), torch.tensor([-0.6932, -0.6931, -1e-5, -2e-6])
    ours, rc, rr = orpo_loss(c, r, beta=0.1)
    theirs, trc, trr, _, _ = trl_loss(c, r)
    # TRL's losses are beta * log sigmoid(log odds ratio), subtracted from its NLL: ours are their negation
    # (the rewards are the same product beta * mean log-prob in both, so equal to the bit on any CPU)
    assert torch.allclose(ours, -theirs, rtol=1e-5, atol=1e-6) and torch.equal(rc, trc) and torch.equal(rr, trr)


def test_orpo_on_a_certain_policy_is_finite():
    """P(y_w) = P(y_l) = 1 in float32: TRL's log1mexp gives -inf - -inf; here the loss is beta * log 2."""
    c = torch.zeros(3, requires_grad=True)
    r = torch.zeros(3, requires_grad=True)
    losses, _, _ = orpo_loss(c, r, beta=0.1)
    losses.sum().backward()
    assert losses.tolist() == approx32([0.1 * math.log(2)] * 3) and torch.isfinite(c.grad).all()


def test_orpo_through_the_module_matches_trl_batch_logps_and_hand_nll(tiny_tok_model):
    """The module feeds ORPO TRL's length-averaged log-probs (from TRL's get_batch_logps) and adds CPO's NLL."""
    from cpo.data import Collator, PairEncoder, PreferenceExample
    from cpo.train.module import OptimSettings, PreferenceModule

    trainer_cls, trl_loss = _trl_orpo(0.1)
    tok, model = tiny_tok_model
    enc = PairEncoder(tok, 64, 128)
    exs = [PreferenceExample("der hund", "the dog", "a cat sees 7 dogs", "de", "en"),
           PreferenceExample("die katze 3", "the cat 3 today", "cat", "de", "en")]
    pairs = [enc.encode(i, e) for i, e in enumerate(exs)]
    batch = Collator(tok.pad_token_id)([{"pair": p} for p in pairs])
    mod = PreferenceModule(model, PreferenceLoss("orpo", kind="orpo", beta=0.1, alpha=1.0, average_logps=True),
                           OptimSettings(), tok.pad_token_id)
    loss, stats = mod.compute(batch, train=False)
    avg = {}
    for side in ("chosen", "rejected"):  # TRL's way: labels -100 on the prompt, its own average
        vals = []
        for p in pairs:
            comp = getattr(p, f"{side}_ids")
            ids = torch.tensor([p.prompt_ids + comp])
            labels = torch.tensor([[-100] * len(p.prompt_ids) + comp])
            with torch.no_grad():
                vals.append(trainer_cls.get_batch_logps(model(ids).logits, labels, average_log_prob=True))
        avg[side] = torch.cat(vals)
    theirs = trl_loss(avg["chosen"], avg["rejected"])[0]
    sums, lens = hand_logps(model, pairs)
    nll = -sum(c for c, _ in sums) / sum(n for n, _ in lens)  # CPO's token mean over completion tokens
    assert float(loss) == pytest.approx(float(-theirs.mean()) + nll, rel=1e-5)
    m = PreferenceModule.summarize(stats, 1.0)
    assert float(m["rewards/chosen"]) == approx32(0.1 * float(avg["chosen"].mean()))


# ---------------------------------------------------------------------------------------------- ARPO
def tau_by_hand(ca: float, ra: float, c1=0.9, c2=0.4) -> float:
    return min(c1 * math.exp(c2 * abs(ca - ra)) - 1, 1.0)


def test_arpo_tau_by_hand_including_negative_and_saturated():
    ca, ra = torch.tensor([-1.0, -1.0, -1.0, -1.0]), torch.tensor([-1.0, -1.5, -3.0, -900.0])
    tau = arpo_tau(ca, ra, 0.9, 0.4)
    assert tau.tolist() == approx32([tau_by_hand(c, r) for c, r in zip(ca.tolist(), ra.tolist())])
    assert float(tau[0]) == approx32(-0.1)  # d = 0: c1 - 1 (float32: -0.10000002 on some CPUs)
    assert tau[-1] == 1.0  # huge d: the min(., 1) is exactly 1, on every CPU
    # Just past the saturation point as well, where exp(ln(2 / c1)) in float32 may round below 2.
    at_limit = torch.tensor([math.log(2 / 0.9) / 0.4 * 1.0001])
    assert arpo_tau(torch.zeros(1), -at_limit, 0.9, 0.4).item() == 1.0
    assert float(arpo_tau(ca, ra, 0.9, 1.5)[2]) == approx32(tau_by_hand(-1.0, -3.0, c2=1.5))


def test_arpo_loss_by_hand():
    n_c, n_r = torch.tensor([4.0, 8.0]), torch.tensor([5.0, 2.0])
    ca, ra = PC / n_c, PR / n_r
    losses, rc, rr = arpo_loss(PC, PR, ca, ra, beta=0.1)
    want = []
    for c, r, a, b in zip(PC.tolist(), PR.tolist(), ca.tolist(), ra.tolist()):
        want.append(nls(0.1 * (c - tau_by_hand(a, b) * r)))
    assert losses.tolist() == approx32(want)
    assert rc.tolist() == approx32((0.1 * PC).tolist()) and rr.tolist() == approx32((0.1 * PR).tolist())
    smoothed = arpo_loss(PC, PR, ca, ra, beta=0.1, label_smoothing=0.1)[0]
    zs = [0.1 * (c - tau_by_hand(a, b) * r) for c, r, a, b in zip(PC.tolist(), PR.tolist(), ca.tolist(), ra.tolist())]
    assert smoothed.tolist() == approx32([0.9 * nls(z) + 0.1 * nls(-z) for z in zs])


@pytest.mark.parametrize("detach", [False, True])
def test_arpo_gradient_through_tau_by_hand(detach):
    """d loss / d log pi(y_w) with tau a function of the mean log-probs (the reference code) or a constant."""
    n_c, n_r, beta = 4.0, 5.0, 0.1
    c, r = torch.tensor([-6.0], requires_grad=True), torch.tensor([-9.0], requires_grad=True)
    loss = arpo_loss(c, r, c / n_c, r / n_r, beta, detach_tau=detach)[0].sum()
    loss.backward()
    ca, ra = -6.0 / n_c, -9.0 / n_r
    tau = tau_by_hand(ca, ra)
    z = beta * (-6.0 - tau * -9.0)
    dtau_dc = 0.0 if detach else 0.9 * 0.4 * math.exp(0.4 * abs(ca - ra)) * math.copysign(1, ca - ra) / n_c
    want = -(1 - 1 / (1 + math.exp(-z))) * beta * (1 - dtau_dc * -9.0)
    assert float(c.grad) == approx32(want)


def test_arpo_huge_gap_gives_finite_gradients():
    c, r = torch.tensor([-2.0], requires_grad=True), torch.tensor([-4000.0], requires_grad=True)
    arpo_loss(c, r, c / 2, r / 2, beta=0.1)[0].sum().backward()
    assert torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()


@pytest.mark.parametrize("average", [False, True])
def test_arpo_through_the_module_matches_hand_value(tiny_tok_model, average):
    """Summed (the reference code's sigmoid path) or mean log-probs in the logits; tau from true means either way."""
    from cpo.data import Collator, PairEncoder, PreferenceExample
    from cpo.train.module import OptimSettings, PreferenceModule

    tok, model = tiny_tok_model
    enc = PairEncoder(tok, 64, 128)
    exs = [PreferenceExample("der hund", "the dog", "a cat sees 7 dogs today", "de", "en"),
           PreferenceExample("die katze 3", "the cat 3 today", "cat", "de", "en")]
    pairs = [enc.encode(i, e) for i, e in enumerate(exs)]
    batch = Collator(tok.pad_token_id)([{"pair": p} for p in pairs])
    lf = PreferenceLoss("arpo", kind="arpo", beta=0.1, alpha=1.0, average_logps=average, tau_c2=1.5)
    loss, _ = PreferenceModule(model, lf, OptimSettings(), tok.pad_token_id).compute(batch, train=False)
    sums, lens = hand_logps(model, pairs)
    prefer = 0.0
    for (c, r), (nc, nr) in zip(sums, lens):
        tau = tau_by_hand(c / nc, r / nr, c2=1.5)
        lw, ll = (c / nc, r / nr) if average else (c, r)
        prefer += nls(0.1 * (lw - tau * ll)) / 2
    nll = -sum(c for c, _ in sums) / sum(n for n, _ in lens)
    assert float(loss) == pytest.approx(prefer + nll, rel=1e-4)


# ------------------------------------------------------------------------------ beta, config, metrics
LOSS_DIR = Path(__file__).resolve().parents[1] / "conf" / "loss"
# Each loss file's own beta, used when no beta= is given (the README's loss table).
DEFAULT_BETA = {
    "cpo": 0.1, "cpo_prefer_only": 0.1, "sft": 0.1, "sft_ref": 0.1, "dpo": 0.1, "hinge": 0.1, "ipo": 0.1,
    "simpo": 2.0, "cpo_simpo": 2.0, "orpo": 0.1, "arpo": 0.1,
}
# What conf/train.yaml must say for "no beta given" to mean the loss's own default.
LOSS_DEFAULT = "beta=${loss.default_beta}"


def _built_beta(overrides):
    from conftest import compose

    from cpo.train.run import build_loss

    return build_loss(compose(overrides)).beta


def test_every_loss_file_takes_the_top_level_beta_and_keeps_its_own_default():
    assert {p.stem for p in LOSS_DIR.glob("*.yaml")} == set(DEFAULT_BETA)  # a new loss file needs its row
    for loss, default in DEFAULT_BETA.items():
        assert _built_beta([f"loss={loss}", "beta=0.5"]) == 0.5, loss
        assert _built_beta([f"loss={loss}", LOSS_DEFAULT]) == default, loss


def test_no_beta_given_means_the_loss_default():
    assert _built_beta(["loss=simpo"]) == 2.0 and _built_beta(["loss=cpo"]) == 0.1


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss=simpo", "beta=null"], "beta=null: leave beta out"),
        (["loss=orpo", LOSS_DEFAULT, "loss.average_logps=false"], "'orpo' is defined on length-averaged log-probs"),
        (["loss=orpo", LOSS_DEFAULT, "loss.label_smoothing=0.1"], "label_smoothing is not defined for kind 'orpo'"),
        (["loss=arpo", LOSS_DEFAULT, "loss.tau_c1=0"], "loss.tau_c1 must be > 0"),
        (["loss=cpo", "~loss.default_beta", LOSS_DEFAULT], "set default_beta in conf/loss/cpo.yaml"),
    ],
)
def test_loss_config_errors_are_one_sentence(overrides, message):
    from conftest import compose

    from cpo.train.config import ConfigError, validate

    with pytest.raises(ConfigError, match=message):
        validate(compose(overrides))


def test_metrics_summed_and_averaged_logps_and_nll_only_when_trained(tiny_tok_model):
    """logps/* are summed for every loss (the same for CPO and SimPO), logps/*_avg are TRL's averaged ones,
    nll_loss is absent when alpha = 0; validation totals (``_VAL_KEYS``) give the same numbers."""
    from cpo.data import Collator, PairEncoder, PreferenceExample
    from cpo.train.module import _VAL_KEYS, OptimSettings, PreferenceModule

    tok, model = tiny_tok_model
    enc = PairEncoder(tok, 64, 128)
    exs = [PreferenceExample("der hund", "the dog", "a cat sees 7 dogs today", "de", "en"),
           PreferenceExample("die katze 3", "the cat 3 today", "cat", "de", "en")]
    pairs = [enc.encode(i, e) for i, e in enumerate(exs)]
    col = Collator(tok.pad_token_id)
    sums, lens = hand_logps(model, pairs)
    got = {}
    simpo = PreferenceLoss("simpo", kind="simpo", beta=2.0, gamma=1.0, alpha=0.0, average_logps=True)
    for lf in (PreferenceLoss("cpo"), simpo):
        mod = PreferenceModule(model, lf, OptimSettings(), tok.pad_token_id)
        totals = {}
        for p in pairs:  # two validation batches of one pair, summed as validation_step does
            _, stats = mod.compute(col([{"pair": p}]), train=False)
            for k in _VAL_KEYS:
                if k in stats:
                    totals[k] = totals.get(k, 0) + stats[k]
        got[lf.name] = m = {k: float(v) for k, v in PreferenceModule.summarize(totals, lf.alpha).items()}
        assert m["logps/chosen"] == pytest.approx(sum(c for c, _ in sums) / 2, rel=1e-5)
        assert m["logps/chosen_avg"] == pytest.approx(sum(c / n for (c, _), (n, _) in zip(sums, lens)) / 2, rel=1e-5)
        assert m["logps/margins_avg"] == pytest.approx(  # a difference of two float32 means: absolute too
            sum(c / nc - r / nr for (c, r), (nc, nr) in zip(sums, lens)) / 2, rel=1e-5, abs=1e-5)
    assert "nll_loss" in got["cpo"] and "nll_loss" not in got["simpo"]
    assert got["simpo"]["rewards/chosen"] == approx32(2.0 * got["simpo"]["logps/chosen_avg"])


@pytest.mark.parametrize("loss", ["orpo", "arpo"])
def test_orpo_and_arpo_train(loss, tmp_path):
    from conftest import SMALL_DEMO, compose

    from cpo.train.run import run

    fast = SMALL_DEMO + ["logger=csv", "evaluate.before_after=false", "save_policy=false", "+trainer.fast_dev_run=2"]
    res = run(compose(fast + [f"loss={loss}", LOSS_DEFAULT]), tmp_path)
    m = res["train"]
    assert res["global_steps"] == 2 and res["loss"] == loss
    keys = ("train/loss", "train/nll_loss", "train/rewards/margins", "train/logps/chosen_avg")
    assert all(math.isfinite(m[k]) for k in keys)
