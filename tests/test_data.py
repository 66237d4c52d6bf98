"""Prompt, exact token boundary, truncation, bad-input errors, window normalisation."""
import json

import pytest
import torch

from cpo.data import (
    Collator, PairEncoder, PreferenceDataModule, PreferenceExample, WindowBatchSampler, format_prompt,
    read_alma_r_preference, read_preference_jsonl,
)
from cpo.io import DataError


def test_prompt_is_almas():
    assert format_prompt("Hallo Welt", "de", "en") == (
        "Translate this from German to English:\nGerman: Hallo Welt\nEnglish:"
    )
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        format_prompt("a", "xx", "en")


def test_boundary_bos_eos(tiny_tok_model):
    tok, _ = tiny_tok_model
    enc = PairEncoder(tok, 64, 128)
    p = enc.encode(0, PreferenceExample("der hund", "the dog", "a cat", "de", "en"))
    assert p.prompt_ids[0] == tok.bos_token_id and p.chosen_ids[-1] == tok.eos_token_id
    # The prompt's ids are exactly what generation tokenizes; the completion decodes to ' the dog'.
    prompt = format_prompt("der hund", "de", "en")
    assert p.prompt_ids == [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.decode(p.chosen_ids[:-1]) == " the dog"
    assert tok.decode(p.prompt_ids[1:] + p.chosen_ids[:-1]) == prompt + " the dog"


def test_truncation_rules(tiny_tok_model):
    tok, _ = tiny_tok_model
    long_src = " ".join(["hund"] * 80)
    enc = PairEncoder(tok, max_prompt_length=20, max_length=24, prompt_truncation="left")
    p = enc.encode(0, PreferenceExample(long_src, "the cat sees many many dogs today", "x", "de", "en"))
    assert len(p.prompt_ids) == 20 and p.prompt_ids[0] == tok.bos_token_id
    assert tok.decode(p.prompt_ids[1:]).endswith("hund\nEnglish:")  # the cue survives left truncation
    assert 1 <= len(p.chosen_ids) <= 4 and len(p.rejected_ids) >= 1  # right-truncated, never empty
    assert enc.counts["prompt_truncated"] == 1 and enc.counts["completion_truncated"] >= 1
    rej = PairEncoder(tok, max_prompt_length=20, max_length=24, prompt_truncation="reject")
    assert (rej.encode(0, PreferenceExample(long_src, "a", "b", "de", "en")) is None
            and rej.counts["prompt_too_long"] == 1)
    with pytest.raises(ValueError, match="max_prompt_length"):
        PairEncoder(tok, max_prompt_length=30, max_length=30)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"source": "a", "chosen": "b"', "malformed JSON"),
        ('{"source": "a", "chosen": "b", "src_lang": "de", "tgt_lang": "en"}', "missing field 'rejected'"),
        ('{"source": " ", "chosen": "b", "rejected": "c", "src_lang": "de", "tgt_lang": "en"}',
         "field 'source' is empty"),
        ('{"source": "a", "chosen": "b", "rejected": "c", "src_lang": "qq", "tgt_lang": "en"}',
         "unknown language code 'qq'"),
    ],
)
def test_bad_jsonl_names_file_line_field(tmp_path, line, message):
    good = {"source": "a", "chosen": "b", "rejected": "c", "src_lang": "de", "tgt_lang": "en"}
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps(good) + "\n" + line + "\n")
    with pytest.raises(DataError) as e:
        read_preference_jsonl(f)
    assert f"{f}:2" in str(e.value) and message in str(e.value)


def test_alma_r_rows(tmp_path):
    tr = {"language_pair": "de-en", "de": "Hallo", "en": "Hello", "gpt4_de": "Hallo!", "gpt4_en": "Hi",
          "alma_de": "Hallo", "alma_en": "Hello", "required_directions": "", "Delta": 0}
    for sys, (de, en) in {"ref": (0.8, 0.9), "gpt4": (0.9, 0.7), "alma": (0.8, 0.9)}.items():
        tr[f"{sys}_de_kiwi_xcomet"], tr[f"{sys}_en_kiwi_xcomet"] = de, en
    rows = [{"translation": tr}, {"translation": {**tr, "required_directions": "en-de"}},
            {"translation": {**tr, "Delta": 1.0}}]
    f = tmp_path / "de-en.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ex = read_alma_r_preference(str(tmp_path), ["de-en", "en-de"], "kiwi_xcomet")
    # row 1 de->en: ref 0.9 and alma 0.9 tie for max -> ref (first); min gpt4. en->de: gpt4 best, ref first of
    # the tied minimum.
    assert (ex[0].src_lang, ex[0].chosen, ex[0].rejected) == ("de", "Hello", "Hi")
    assert (ex[1].src_lang, ex[1].chosen, ex[1].rejected) == ("en", "Hallo!", "Hallo")
    # row 2 only en->de; row 3: human Delta > 0 prefers gpt4 over alma whatever the scores.
    assert [(e.src_lang, e.tgt_lang) for e in ex[2:3]] == [("en", "de")]
    assert len(ex) == 5 and (ex[3].tgt_lang, ex[3].chosen, ex[3].rejected) == ("en", "Hi", "Hello")
    assert (ex[4].chosen, ex[4].rejected) == ("Hallo!", "Hallo") and ex[4].provenance["human_delta"] == 1.0
    with pytest.raises(DataError, match=r"de-en.jsonl:1: missing field 'translation.ref_en_kiwi'"):
        read_alma_r_preference(str(tmp_path), ["de-en"], "kiwi")


def test_window_sampler_totals_and_sharding():
    lengths = [3, 5, 2, 7, 4, 6, 1, 8]
    full = list(WindowBatchSampler(lengths, lengths, batch_size=2, accumulate=2, shuffle=False))
    assert [[w.index for w in b] for b in full] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert {(b[0].window_pairs, b[0].window_tokens) for b in full[:2]} == {(4, 17)}
    r0 = list(WindowBatchSampler(lengths, lengths, batch_size=1, accumulate=2, world_size=2, rank=0, shuffle=False))
    r1 = list(WindowBatchSampler(lengths, lengths, batch_size=1, accumulate=2, world_size=2, rank=1, shuffle=False))
    # two ranks with batch 1 see the same global batches as one rank with batch 2, and the same window totals
    assert [b[0].index for b in r0] == [0, 2, 4, 6] and [b[0].index for b in r1] == [1, 3, 5, 7]
    assert r0[0][0].window_tokens == r1[0][0].window_tokens == 17


def test_gradient_accumulation_equals_one_large_batch(tiny_tok_model):
    """Accumulating 2 micro-batches of 2 gives the gradient of one batch of 4 (token-mean NLL included)."""
    import copy

    from cpo.train.losses import PreferenceLoss
    from cpo.train.module import OptimSettings, PreferenceModule

    tok, model = tiny_tok_model
    exs = [PreferenceExample(f"hund {i}", "the dog " * (1 + i), "a cat", "de", "en") for i in range(4)]
    enc = PairEncoder(tok, 64, 128)
    pairs = [enc.encode(i, e) for i, e in enumerate(exs)]
    col = Collator(tok.pad_token_id)
    lengths = [len(p.chosen_ids) for p in pairs]

    def grads(bs, acc):
        m = copy.deepcopy(model)
        mod = PreferenceModule(m, PreferenceLoss("cpo"), OptimSettings(), tok.pad_token_id)

        class T:  # what compute() reads from a Trainer
            accumulate_grad_batches, world_size = acc, 1

        mod._trainer = T()  # LightningModule.trainer returns it
        from cpo.data import PairDataset

        ds = PairDataset(pairs)
        for b in WindowBatchSampler(lengths, lengths, bs, acc, shuffle=False):
            loss, _ = PreferenceModule.compute(mod, col([ds[w] for w in b]), train=True)
            (loss / acc).backward()  # Lightning divides by accumulate_grad_batches
        return torch.cat([p.grad.flatten() for p in m.parameters()])

    g_big, g_acc = grads(4, 1), grads(2, 2)
    assert torch.allclose(g_big, g_acc, rtol=1e-4, atol=1e-6)
    assert len(set(lengths)) > 1  # unequal lengths: a mean of micro-batch means would differ
