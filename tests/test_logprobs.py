"""Masked per-sequence log-probs: against a naive per-example forward; shared-prompt path equal in value and
gradient."""
import copy

import torch

from cpo.data import Collator, PairEncoder, PreferenceExample
from cpo.train.logprobs import completion_logps, completion_logps_shared_prompt, gather_token_logps


def _batch(tok):
    enc = PairEncoder(tok, 64, 128)
    exs = [PreferenceExample("hund " * (1 + i), "the dog " * (1 + i % 2), "a cat sees " * (2 - i % 2), "de", "en")
           for i in range(4)]
    return Collator(tok.pad_token_id)([{"pair": enc.encode(i, e)} for i, e in enumerate(exs)])


def test_gather_matches_log_softmax():
    logits = torch.randn(2, 3, 11)
    t = torch.randint(0, 11, (2, 3))
    want = torch.log_softmax(logits, -1).gather(-1, t[..., None])[..., 0]
    assert torch.allclose(gather_token_logps(logits, t), want, atol=1e-6)


def test_padded_batch_equals_unpadded_forward(tiny_tok_model):
    tok, model = tiny_tok_model
    b = _batch(tok)
    c, r = completion_logps(
        model, b["prompt_ids"], b["prompt_mask"],
        [(b["chosen_ids"], b["chosen_mask"]), (b["rejected_ids"], b["rejected_mask"])], tok.pad_token_id,
    )
    for i in range(4):
        p = b["prompt_ids"][i][b["prompt_mask"][i].bool()]
        y = b["chosen_ids"][i][b["chosen_mask"][i].bool()]
        lp = (torch.log_softmax(model(torch.cat([p, y])[None]).logits[0, len(p) - 1 : -1], -1)
              .gather(-1, y[:, None]).sum())
        assert torch.allclose(c.sum[i], lp, atol=1e-4)
        assert int(c.n_tokens[i]) == len(y)
    assert torch.isfinite(r.sum).all()


def test_shared_prompt_equals_concatenated_in_value_and_gradient(tiny_tok_model):
    tok, model = tiny_tok_model
    b = _batch(tok)
    sides = [(b["chosen_ids"], b["chosen_mask"]), (b["rejected_ids"], b["rejected_mask"])]
    grads, vals = [], []
    for fn in (completion_logps, completion_logps_shared_prompt):
        m = copy.deepcopy(model)
        c, r = fn(m, b["prompt_ids"], b["prompt_mask"], sides, tok.pad_token_id)
        (-(c.sum - 0.5 * r.sum).sum()).backward()
        vals.append(torch.cat([c.sum, r.sum]).detach())
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert torch.allclose(vals[0], vals[1], atol=1e-4)
    rel = (grads[0] - grads[1]).norm() / grads[0].norm()
    assert rel < 1e-4, rel
