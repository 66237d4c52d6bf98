"""Each loss against values computed by hand from the formulas of SPEC section 3."""
import math

import pytest
import torch

from cpo.losses import PreferenceLoss, cpo_prefer_loss, dpo_loss, hinge_loss, ipo_loss, simpo_loss

PC = torch.tensor([-10.0, -4.0])  # policy log pi(y_w|x)
PR = torch.tensor([-12.0, -3.0])  # policy log pi(y_l|x)
RC = torch.tensor([-11.0, -5.0])  # reference log pi_ref(y_w|x)
RR = torch.tensor([-11.5, -2.0])


def nls(x):  # -log sigmoid(x), by hand
    return math.log(1 + math.exp(-x))


def test_cpo_prefer_is_dpo_with_uniform_reference():
    losses, rc, rr = cpo_prefer_loss(PC, PR, beta=0.1)
    assert losses.tolist() == pytest.approx([nls(0.1 * 2.0), nls(0.1 * -1.0)], abs=1e-6)
    assert rc.tolist() == pytest.approx([-1.0, -0.4]) and rr.tolist() == pytest.approx([-1.2, -0.3])


def test_label_smoothing():
    losses, _, _ = cpo_prefer_loss(PC, PR, beta=0.5, label_smoothing=0.1)
    want = [0.9 * nls(0.5 * d) + 0.1 * nls(-0.5 * d) for d in (2.0, -1.0)]
    assert losses.tolist() == pytest.approx(want, abs=1e-6)


def test_dpo():
    losses, rc, rr = dpo_loss(PC, PR, RC, RR, beta=0.1)
    # row 0: (-10+11) - (-12+11.5) = 1.5; row 1: (-4+5) - (-3+2) = 2
    assert losses.tolist() == pytest.approx([nls(0.15), nls(0.2)], abs=1e-6)
    assert rc.tolist() == pytest.approx([0.1, 0.1]) and rr.tolist() == pytest.approx([-0.05, -0.1])


def test_hinge_ipo_simpo():
    assert hinge_loss(PC, PR, beta=0.1)[0].tolist() == pytest.approx([max(0, 1 - 0.2), max(0, 1 + 0.1)])
    assert hinge_loss(PC, PR, beta=1.0)[0].tolist() == pytest.approx([0.0, 2.0])
    assert ipo_loss(PC, PR, beta=0.1)[0].tolist() == pytest.approx([(2 - 5) ** 2, (-1 - 5) ** 2])
    assert simpo_loss(PC, PR, beta=2.0, gamma=1.0)[0].tolist() == pytest.approx([nls(2 * 2 - 1), nls(2 * -1 - 1)], abs=1e-6)


def test_preference_loss_dispatch_and_validation():
    loss = PreferenceLoss("cpo")
    assert loss.preference_terms(PC, PR)[0].tolist() == pytest.approx([nls(0.2), nls(-0.1)], abs=1e-6)
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
    from cpo.module import OptimSettings, PreferenceModule

    tok, model = tiny_tok_model
    enc = PairEncoder(tok, 64, 128)
    exs = [PreferenceExample("der hund", "the dog", "a cat sees", "de", "en"), PreferenceExample("die katze 3", "the cat 3 today", "cat", "de", "en")]
    batch = Collator(tok.pad_token_id)([{"pair": enc.encode(i, e)} for i, e in enumerate(exs)])
    mod = PreferenceModule(model, PreferenceLoss("cpo", beta=0.1, alpha=1.0), OptimSettings(), tok.pad_token_id, forward=forward)
    loss, stats = mod.compute(batch, train=False)
    # by hand: per-example unpadded forward
    sums, toks = [], []
    for p in (enc.encode(i, e) for i, e in enumerate(exs)):
        per = []
        for comp in (p.chosen_ids, p.rejected_ids):
            ids = torch.tensor([p.prompt_ids + comp])
            lp = torch.log_softmax(model(ids).logits[0].double(), -1)
            per.append(sum(float(lp[len(p.prompt_ids) - 1 + t, c]) for t, c in enumerate(comp)))
        sums.append(per)
        toks.append(len(p.chosen_ids))
    prefer = sum(nls(0.1 * (c - r)) for c, r in sums) / 2
    nll = -sum(c for c, _ in sums) / sum(toks)
    assert float(loss) == pytest.approx(prefer + nll, rel=1e-4)
