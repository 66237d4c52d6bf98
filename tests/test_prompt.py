"""The prompt and its truncation, on the tokenizer shape of the real path: a Llama SentencePiece tokenizer."""
import pytest

from cpo.data import PairEncoder, PreferenceDataModule, PreferenceExample
from cpo.io import DataError
from cpo.mt.prompt import PromptEncoder, PromptTooShort, format_prompt
from helpers.sp_tokenizer import llama_tokenizer

LONG = " ".join(["der Mann sieht zwei Hunde am Fluss"] * 12)


@pytest.fixture(scope="module", params=["fast", "slow"])
def sp_tok(request, tmp_path_factory):
    tok = llama_tokenizer(tmp_path_factory.mktemp(f"sp_{request.param}"), fast=request.param == "fast")
    assert tok.tokenize(" the man")[0] == "▁"  # the dummy-prefix behaviour of LLaMA-2's tokenizer
    return tok


def test_completion_ids_do_not_depend_on_prompt_truncation(sp_tok):
    ex = PreferenceExample(LONG, "the man sees two dogs", "a woman sees five cats", "de", "en")
    full = PairEncoder(sp_tok, max_prompt_length=400, max_length=500)
    cut = PairEncoder(sp_tok, max_prompt_length=24, max_length=64)
    a, b = full.encode(0, ex), cut.encode(0, ex)
    assert len(b.prompt_ids) == 24 < len(a.prompt_ids) and cut.counts["prompt_truncated"] == 1
    assert (a.chosen_ids, a.rejected_ids) == (b.chosen_ids, b.rejected_ids)
    # ... and they are the joint tokenization's continuation: no extra '▁' piece, no boundary fallback.
    assert sp_tok.convert_ids_to_tokens(b.chosen_ids[:2]) == ["▁the", "▁man"]
    assert cut.counts["boundary_fallback"] == full.counts["boundary_fallback"] == 0


def test_left_truncation_keeps_bos_and_cue(sp_tok):
    enc = PromptEncoder(sp_tok, max_length=20)
    p = enc.encode(LONG, "de", "en")
    assert p.truncated and len(p.ids) == 20 and p.ids[0] == sp_tok.bos_token_id
    assert sp_tok.decode(p.ids[1:]).endswith("Fluss\nEnglish:")
    assert p.full_ids == (
        [sp_tok.bos_token_id] + sp_tok(format_prompt(LONG, "de", "en"), add_special_tokens=False)["input_ids"]
    )


def test_generation_sees_the_training_prompt(sp_tok):
    """translate() and PairEncoder build the same ids for the same source and budget."""
    from cpo.mt.generation import PromptEncoder as GenPromptEncoder

    assert GenPromptEncoder is PromptEncoder
    train_ids = PairEncoder(sp_tok, 30, 60).encode(0, PreferenceExample(LONG, "a", "b", "de", "en")).prompt_ids
    assert PromptEncoder(sp_tok, 30, "left").encode(LONG, "de", "en").ids == train_ids


def test_a_budget_without_room_for_the_source_is_refused(sp_tok):
    with pytest.raises(PromptTooShort, match="keeps none of the source"):
        PromptEncoder(sp_tok, max_length=3).encode(LONG, "de", "en")
    ex = [PreferenceExample("der Mann", "the man", "a woman", "de", "en")] * 4
    with pytest.raises(DataError, match="data.max_prompt_length=3 is too short"):
        PreferenceDataModule(ex, [], sp_tok, batch_size=2, max_prompt_length=3, max_length=40)


def test_equal_sides_are_dropped_and_counted(sp_tok):
    ex = [PreferenceExample("der Mann", "the man", "the  man ", "de", "en"),
          PreferenceExample("der Mann", "the man", "the\u200b man", "de", "en"),
          PreferenceExample("die Frau", "the woman", "a man", "de", "en")]
    dm = PreferenceDataModule(ex, [], sp_tok, batch_size=1, max_prompt_length=64, max_length=96)
    assert len(dm.train_pairs) == 1 and dm.drop_counts["equal_sides"] == 2
