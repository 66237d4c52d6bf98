"""Prompt formats (conf/prompt): ALMA's ids unchanged, chat templates token for token, truncation of the source
only, stop ids and cleaning, the policy's record, TRL's conversational rows."""
from __future__ import annotations

import json

import pytest

from cpo.data import PairEncoder, PreferenceDataModule, PreferenceExample, read_preference_jsonl
from cpo.errors import ConfigError
from cpo.io import DataError
from cpo.mt.chat import TOWER_INSTRUCTION, ChatPrompt
from cpo.mt.template import TemplatePrompt
from cpo.mt.prompt import (AlmaPrompt, PromptTooShort, build_prompt_format, format_prompt,
                           read_prompt_record, write_prompt_record)
from helpers.chat_tokenizers import FAMILIES, chat_tokenizer, end_of_turn
from helpers.sp_tokenizer import llama_tokenizer

LONG = " ".join(["der Mann sieht zwei Hunde am Fluss"] * 12)
ANSWER = "  the man sees two dogs "  # spaces a template may trim


# ---------------------------------------------------------------------------------------------- ALMA, unchanged
class LegacyAlma:
    """The ids the code before conf/prompt gave (cpo/mt/prompt.py PromptEncoder and cpo/data/encoding.py
    PairEncoder at 5225a04), kept here as the reference the default format must reproduce."""

    def __init__(self, tok, max_prompt_length, max_length, truncation):
        self.tok, self.mpl, self.ml, self.trunc = tok, max_prompt_length, max_length, truncation

    def ids(self, text):
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def head(self):
        return [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []

    def prompt(self, text, cue_tokens):
        full = self.head() + self.ids(text)
        if len(full) <= self.mpl:
            return full, full
        kept = self.mpl - len(self.head())
        assert kept > cue_tokens
        return (None if self.trunc == "reject" else self.head() + full[len(full) - kept:]), full

    def cue_length(self, tgt):
        probe = format_prompt("x", "en" if tgt != "en" else "de", tgt)
        cue = "\nEnglish:" if tgt == "en" else "\nGerman:"
        return max(1, len(self.ids(probe)) - len(self.ids(probe[: -len(cue)])))

    def completion(self, prompt, full, text, sep):
        body = full[1:] if self.tok.bos_token_id is not None else full
        joint = self.ids(prompt + sep + text)
        ids = joint[len(body):] if joint[: len(body)] == body and len(joint) > len(body) else self.ids(sep + text)
        return ids + [self.tok.eos_token_id]

    def encode(self, ex):
        if ex.prompt is not None:
            text, cue, sep = ex.prompt, 0, ""
        else:
            text, cue, sep = format_prompt(ex.source, ex.src_lang, ex.tgt_lang), self.cue_length(ex.tgt_lang), " "
        ids, full = self.prompt(text, cue)
        if ids is None:
            return None
        budget = self.ml - len(ids)
        return ids, [self.completion(text, full, t, sep)[:budget] for t in (ex.chosen, ex.rejected)]


def _alma_examples():
    from cpo.demo import sample_sentences

    sents = sample_sentences(60, seed=3)
    rows = [PreferenceExample(s.source, s.translation, s.translation.upper(), "zb", "en") for s in sents]
    rows += [PreferenceExample(LONG, "the man sees two dogs", "a woman sees five cats", "de", "en"),
             PreferenceExample(LONG[:90], "der Mann", "die Frau", "en", "de"),
             PreferenceExample("x", "the dog sees the river " * 30, "a cat", "de", "en"),
             PreferenceExample("", "the dog", "a cat", None, None, prompt="Q: der Hund\nA:"),
             PreferenceExample("", " the dog", "a cat", None, None, prompt=LONG + "\nEnglish:")]
    return rows


@pytest.fixture(scope="module", params=["sp_fast", "sp_slow", "bpe"])
def any_tok(request, tmp_path_factory, tiny_tok_model):
    if request.param == "bpe":
        return tiny_tok_model[0]
    return llama_tokenizer(tmp_path_factory.mktemp(request.param), fast=request.param == "sp_fast")


@pytest.mark.parametrize("truncation", ["left", "reject"])
def test_alma_gives_the_ids_of_the_code_before_prompt_formats(any_tok, truncation):
    """The default format, explicit or implied, encodes every row (demo sentences, cut prompts, over-long
    completions, TRL's own prompts) to the ids the previous code gave, and generation sees the same prompts."""
    rows = _alma_examples()
    legacy = LegacyAlma(any_tok, 24, 64, truncation)
    for fmt in (None, AlmaPrompt(), build_prompt_format({"_target_": "cpo.mt.prompt.AlmaPrompt"})):
        enc = PairEncoder(any_tok, 24, 64, truncation, prompt_format=fmt)
        for i, ex in enumerate(rows):
            got, want = enc.encode(i, ex), legacy.encode(ex)
            assert (got is None) == (want is None), ex
            if got is not None:
                assert (got.prompt_ids, [got.chosen_ids, got.rejected_ids]) == want, ex
    cut = [ex for ex in rows if ex.prompt is None and legacy.prompt(format_prompt(ex.source, ex.src_lang,
                                                                                  ex.tgt_lang), 1)[0] is None]
    assert truncation == "left" or cut  # the rows really exercise rejection
    bound = AlmaPrompt().bind(any_tok, 24, "left")
    for ex in rows[:5] + rows[60:62]:
        assert bound.encode(ex.source, ex.src_lang, ex.tgt_lang).ids == LegacyAlma(any_tok, 24, 64, "left").prompt(
            format_prompt(ex.source, ex.src_lang, ex.tgt_lang), 1)[0]
    assert bound.stop_ids == [any_tok.eos_token_id]


# ---------------------------------------------------------------------------------------------- chat templates
@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    return request.param, chat_tokenizer(request.param)


@pytest.mark.parametrize("system", [None, "You translate news."])
def test_chat_prompt_and_completion_are_the_templates_tokens(family, system):
    """prompt ids + completion ids == apply_chat_template(whole conversation) token for token, up to what the
    template writes after the turn (a new line in ChatML and Gemma, nothing in Llama-3); the completion ends
    with the end-of-turn token; BOS appears once, where the template writes it."""
    name, tok = family
    fmt = ChatPrompt(system=system)
    if name == "gemma" and system:
        with pytest.raises(ConfigError,
                           match=r"refuses the conversation.*System role not supported.*prompt.system=null"):
            fmt.bind(tok, 256)
        return
    enc = PairEncoder(tok, 256, 400, prompt_format=fmt)
    pair = enc.encode(0, PreferenceExample("der Mann sieht zwei Hunde", ANSWER, "a woman", "de", "en"))
    messages = fmt.messages("der Mann sieht zwei Hunde", "de", "en")
    assert pair.prompt_ids == tok.apply_chat_template(messages, add_generation_prompt=True)
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": ANSWER}])
    n = len(pair.prompt_ids) + len(pair.chosen_ids)
    assert pair.prompt_ids + pair.chosen_ids == full[:n]
    assert tok.decode(full[n:]) == ("" if name == "llama3" else "\n")  # after the turn: not generated
    eot = tok.convert_tokens_to_ids(end_of_turn(name))
    assert pair.chosen_ids[-1] == eot and pair.rejected_ids[-1] == eot and eot not in pair.chosen_ids[:-1]
    assert tok.decode(pair.chosen_ids[:-1]) == (ANSWER if name == "qwen" else ANSWER.strip())  # trim: theirs
    assert pair.prompt_ids.count(tok.bos_token_id) == (0 if tok.bos_token_id is None else 1)
    assert tok.bos_token_id is None or pair.prompt_ids[0] == tok.bos_token_id
    assert enc.counts.get("boundary_fallback", 0) == 0
    if system:
        assert system in tok.decode(pair.prompt_ids)
    bound = fmt.bind(tok, 256)
    assert bound.stop_ids[0] == eot and tok.eos_token_id in bound.stop_ids


def test_a_template_without_bos_gets_the_tokenizers_own_once(tmp_path):
    """A Llama-2-based ChatML model (TowerInstruct): the template writes no BOS, the tokenizer adds one to plain
    text, so the prompt starts with one BOS (add_bos=false: none), and TowerInstruct's instruction is the user turn."""
    tok = chat_tokenizer("llama3")
    tok.chat_template = ("{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content"
                         " + '<|im_end|>' + '\\n' }}{%- endfor %}"
                         "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tower = build_prompt_format(_compose_prompt("tower"))
    p = tower.bind(tok, 256).encode("Um grupo de investigadores.", "pt", "en")
    assert p.ids[0] == tok.bos_token_id and p.ids.count(tok.bos_token_id) == 1
    assert tok.decode(p.ids[1:]) == ("<|im_start|>user\nTranslate the following text from Portuguese into English.\n"
                                     "Portuguese: Um grupo de investigadores.\nEnglish:<|im_end|>\n"
                                     "<|im_start|>assistant\n")
    no_bos = ChatPrompt(TOWER_INSTRUCTION, add_bos=False).bind(tok, 256).encode("Um grupo.", "pt", "en")
    assert tok.bos_token_id not in no_bos.ids


@pytest.mark.parametrize("instruction", ["chat", "tower"])
def test_chat_truncation_cuts_the_source_only(family, instruction):
    """An over-long source loses its beginning; the system turn, the instruction (also its text after the
    source), the role markers and the generation prompt stay; a budget too small for the template alone is one
    sentence; reject drops the row."""
    name, tok = family
    fmt = build_prompt_format(_compose_prompt(instruction))
    full = fmt.bind(tok).encode(LONG, "de", "en")
    budget = len(full.ids) - 25
    cut = fmt.bind(tok, budget).encode(LONG, "de", "en")
    assert cut.truncated and budget - 8 <= len(cut.ids) <= budget and cut.full_ids == full.ids
    text, whole = tok.decode(cut.ids), tok.decode(full.ids)
    head, tail = whole.split("der Mann", 1)[0], whole.rsplit("Fluss", 1)[1]
    assert text.startswith(head) and text.endswith("Fluss" + tail) and len(text) < len(whole)
    kept = text[len(head):len(text) - len(tail)]
    assert LONG.endswith(" " + kept) and text.count("English") == whole.count("English")
    template_alone = len(fmt.bind(tok).encode("", "de", "en").ids)
    with pytest.raises(PromptTooShort, match=rf"budget of {template_alone - 1} tokens keeps none of the source: "
                                             rf"the template alone takes {template_alone} tokens; raise it"):
        fmt.bind(tok, template_alone - 1).encode(LONG, "de", "en")
    assert fmt.bind(tok, budget, "reject").encode(LONG, "de", "en") is None
    # training cuts the same way and counts it; completions do not depend on the cut
    a = PairEncoder(tok, budget, budget + 40, prompt_format=fmt).encode(0, PreferenceExample(LONG, "the man", "x",
                                                                                              "de", "en"))
    b = PairEncoder(tok, 400, 500, prompt_format=fmt).encode(0, PreferenceExample(LONG, "the man", "x", "de", "en"))
    assert a.prompt_ids == cut.ids and a.chosen_ids == b.chosen_ids


def test_chat_truncation_with_a_slow_tokenizer(tmp_path):
    """A slow tokenizer gives no offsets: the source is cut at characters, still never the template."""
    tok = llama_tokenizer(tmp_path, fast=False)
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }} [end]\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant] {% endif %}")
    bound = ChatPrompt("German: {source}").bind(tok, 30)
    p = bound.encode(LONG, "de", "en")
    assert p.truncated and len(p.ids) <= 30 and p.ids.count(tok.bos_token_id) == 1
    kept = tok.decode(p.ids[1:]).split("[user] German: ", 1)[1].split(" [end]")[0]
    assert LONG.endswith(" " + kept) and len(kept) < len(LONG)  # the end of the source, cut at a word
    assert tok.decode(p.ids).rstrip().endswith("Fluss [end]\n[assistant]")
    ids, _ = bound.completion_ids(p, "the man")
    assert ids[-1] == tok.eos_token_id  # this template ends a turn with no special token: EOS, as a base model


@pytest.mark.parametrize("fast", [True, False], ids=["fast_offsets", "slow_characters"])
def test_chat_truncation_of_a_source_without_spaces(tmp_path, fast):
    """Chinese or Japanese text has no word to cut at: a fast tokenizer's offsets give the cuts, a slow one's
    characters; either way only the source is cut, from its start."""
    tok = llama_tokenizer(tmp_path, fast=fast)
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }} [end]\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant] {% endif %}")
    source = "".join(LONG.split())
    p = ChatPrompt("German: {source}").bind(tok, 30).encode(source, "de", "en")
    assert p.truncated and len(p.ids) <= 30 and p.ids.count(tok.bos_token_id) == 1
    kept = tok.decode(p.ids[1:]).split("[user] German: ", 1)[1].split(" [end]")[0].strip()
    assert kept and source.endswith(kept) and len(kept) < len(source)
    assert tok.decode(p.ids).rstrip().endswith("[end]\n[assistant]")


def test_chat_without_a_template_is_one_sentence(tiny_tok_model, tmp_path):
    tok = tiny_tok_model[0]
    assert not tok.chat_template
    with pytest.raises(ConfigError, match="has none: use prompt=alma or prompt=template for a base model, or give "
                                          r"the template with prompt.chat_template=<file.jinja>"):
        ChatPrompt().check(tok)
    # ... and a template given by file works with it, recorded inline
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}"
                     "{% if add_generation_prompt %}<assistant>{% endif %}")
    fmt = ChatPrompt(chat_template=str(jinja))
    p = fmt.bind(tok, 256).encode("der hund", "de", "en")
    ids, exact = fmt.bind(tok, 256).completion_ids(p, "the dog")
    assert ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == 1 and exact
    assert fmt.describe()["chat_template"].startswith("{% for m in messages %}")
    with pytest.raises(ConfigError, match="no such file"):
        ChatPrompt(chat_template=str(tmp_path / "none.jinja"))


@pytest.mark.parametrize("kwargs, message", [
    ({"instruction": "Translate {text}"}, r"prompt.instruction: unknown placeholder\(s\) \{text\}"),
    ({"instruction": "Translate it"}, r"must name \{source\} exactly once, found 0"),
    ({"system": "You translate {source}"}, r"prompt.system cannot name \{source\}"),
    ({"end_of_turn": []}, "prompt.end_of_turn must be null or a list"),
])
def test_bad_chat_settings_are_one_sentence(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ChatPrompt(**kwargs)


def test_end_of_turn_override_must_match_the_template(family):
    name, tok = family
    with pytest.raises(ConfigError, match="prompt.end_of_turn=.*ends an assistant turn with"):
        ChatPrompt(end_of_turn=["<pad>"]).bind(tok)
    bound = ChatPrompt(end_of_turn=[end_of_turn(name)]).bind(tok)
    assert bound.stop_ids[0] == tok.convert_tokens_to_ids(end_of_turn(name))


def test_chat_cleaning_stops_at_the_end_of_turn(family):
    name, tok = family
    bound = ChatPrompt().bind(tok)
    eot = tok.convert_tokens_to_ids(end_of_turn(name))
    words = tok("the man\n\nsees two dogs", add_special_tokens=False)["input_ids"]
    after = tok(" English: more text", add_special_tokens=False)["input_ids"]
    assert bound.clean(words + [eot] + after, "en") == ("the man sees two dogs", "end_of_turn")
    assert bound.clean(words + after, "en") == ("the man sees two dogs English: more text", "max_new_tokens")
    assert bound.clean([eot], "en") == ("", "end_of_turn")


# ---------------------------------------------------------------------------------------------- template format
def test_template_format_writes_cuts_and_cleans(tiny_tok_model):
    tok = tiny_tok_model[0]
    fmt = build_prompt_format(_compose_prompt("template"))
    assert isinstance(fmt, TemplatePrompt) and fmt.cue == "\n{tgt_lang}:"
    bound = fmt.bind(tok, 256)
    p = bound.encode("der hund", "de", "en")
    assert p.ids == [tok.bos_token_id] + tok("German: der hund\nEnglish:", add_special_tokens=False)["input_ids"]
    ids, exact = bound.completion_ids(p, "the dog")
    assert tok.decode(ids[:-1]) == " the dog" and ids[-1] == tok.eos_token_id and exact
    budget = len(p.ids) + 4
    cut = fmt.bind(tok, budget).encode(" ".join(["hund"] * 40), "de", "en")
    assert cut.truncated and len(cut.ids) <= budget and tok.decode(cut.ids[1:]).startswith("German: hund")
    assert tok.decode(cut.ids).endswith("hund\nEnglish:")
    gen = tok(" the dog\nEnglish: a cat", add_special_tokens=False)["input_ids"]
    assert bound.clean(gen, "en") == ("the dog", "first_line")
    codes = TemplatePrompt("<{src_code}2{tgt_code}> {source} =>", separator=" ", add_bos=False).bind(tok, 256)
    p = codes.encode("der hund", "de", "en")
    assert tok.decode(p.ids) == "<de2en> der hund =>" and codes.clean(tok(" the dog =>x")["input_ids"], "en")[0] == (
        "the dog")
    with pytest.raises(ConfigError, match=r"prompt.template must name \{source\} exactly once"):
        TemplatePrompt("{src_lang}:")


# ---------------------------------------------------------------------------------------------- config and record
def _compose_prompt(option):
    from conftest import compose

    return compose([f"prompt={option}"]).prompt


@pytest.mark.parametrize("option", ["alma", "chat", "tower", "template"])
def test_every_prompt_file_builds_and_round_trips_through_its_record(option, tmp_path):
    fmt = build_prompt_format(_compose_prompt(option))
    write_prompt_record(tmp_path, fmt)
    again, path = read_prompt_record(tmp_path)
    assert again == fmt and path == tmp_path / "cpo_prompt.json"
    assert json.loads(path.read_text())["_target_"] == fmt.describe()["_target_"]


def test_the_chat_file_is_the_classes_default_and_tower_the_documented_instruction():
    assert build_prompt_format(_compose_prompt("chat")) == ChatPrompt()
    assert build_prompt_format(_compose_prompt("tower")) == ChatPrompt(TOWER_INSTRUCTION)
    assert TOWER_INSTRUCTION.format(src_lang="Portuguese", tgt_lang="English", source="Um grupo.") == (
        "Translate the following text from Portuguese into English.\nPortuguese: Um grupo.\nEnglish:")


def test_bad_prompt_nodes_and_records_are_one_sentence(tmp_path):
    with pytest.raises(ConfigError, match="prompt._target_=cpo.mt.nope.Format cannot be imported"):
        build_prompt_format({"_target_": "cpo.mt.nope.Format"})
    with pytest.raises(ConfigError, match="is not a prompt format"):
        build_prompt_format({"_target_": "cpo.mt.prompt.PromptTooShort"})
    with pytest.raises(ConfigError, match="does not take these settings"):
        build_prompt_format({"_target_": "cpo.mt.prompt.AlmaPrompt", "bogus": 1})
    (tmp_path / "cpo_prompt.json").write_text("{not json")
    with pytest.raises(DataError, match="cpo_prompt.json: not a readable prompt record"):
        read_prompt_record(tmp_path)
    assert read_prompt_record(tmp_path / "none") is None


def test_the_prompt_format_is_part_of_the_run_identity():
    """prompt=chat and prompt=alma on the same data are different runs; a run recorded before conf/prompt
    existed is the alma run (ADDED_KEYS)."""
    from conftest import compose
    from cpo.runs.fingerprint import config_diff, fingerprint, same_configuration
    from omegaconf import OmegaConf

    alma, chat = (OmegaConf.to_container(compose([f"prompt={p}"]), resolve=True) for p in ("alma", "chat"))
    assert fingerprint(alma) != fingerprint(chat)
    assert any(line.startswith("prompt._target_") for line in config_diff(alma, chat))
    before = {k: v for k, v in alma.items() if k != "prompt"}
    assert same_configuration(fingerprint(before), before, fingerprint(alma))
    assert not same_configuration(fingerprint(before), before, fingerprint(chat))


# ---------------------------------------------------------------------------------------------- TRL conversational
def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CONV = {"prompt": [{"role": "user", "content": "Translate to English: der Hund"}],
        "chosen": [{"role": "assistant", "content": "the dog"}],
        "rejected": [{"role": "assistant", "content": "a cat"}]}


def test_trl_conversational_rows_are_read_through_the_chat_template(tmp_path, family):
    name, tok = family
    implicit = {"chosen": CONV["prompt"] + CONV["chosen"], "rejected": CONV["prompt"] + CONV["rejected"]}
    system = {**CONV, "prompt": [{"role": "system", "content": "Be brief."}] + CONV["prompt"]}
    rows = [CONV, implicit] + ([] if name == "gemma" else [system])
    examples = read_preference_jsonl(_write(tmp_path / "conv.jsonl", rows))
    assert [e.chosen for e in examples] == ["the dog"] * len(rows) and examples[0].messages == CONV["prompt"]
    assert examples[1].messages == examples[0].messages and examples[0].origin == f"{tmp_path / 'conv.jsonl'}:1"
    enc = PairEncoder(tok, 256, 400, prompt_format=ChatPrompt())
    for i, ex in enumerate(examples):
        pair = enc.encode(i, ex)
        full = tok.apply_chat_template(ex.messages + [{"role": "assistant", "content": "the dog"}])
        assert pair.prompt_ids + pair.chosen_ids == full[: len(pair.prompt_ids) + len(pair.chosen_ids)]
        assert pair.prompt_ids == tok.apply_chat_template(ex.messages, add_generation_prompt=True)
    # a long conversation loses the beginning of its last user message only
    long = {**CONV, "prompt": [{"role": "user", "content": "Translate to English: " + LONG}]}
    (ex,) = read_preference_jsonl(_write(tmp_path / "long.jsonl", [long]))
    budget = len(enc.encode(0, ex).prompt_ids) - 20
    cut = PairEncoder(tok, budget, budget + 30, prompt_format=ChatPrompt()).encode(0, ex)
    assert len(cut.prompt_ids) <= budget and tok.decode(cut.prompt_ids).count("Fluss") < LONG.count("Fluss")


@pytest.mark.parametrize("rows, message", [
    ([CONV, {"source": "a", "chosen": "b", "rejected": "c", "src_lang": "de", "tgt_lang": "en"}],
     r":2: a row in the project's format after rows in TRL conversational format \(line 1\); one file holds one"),
    ([{"prompt": "Q: a", "chosen": "b", "rejected": "c"}, CONV],
     ":2: a row in TRL conversational format after rows in TRL standard format"),
    ([{**CONV, "chosen": [{"role": "user", "content": "x"}]}], "field 'chosen' must hold one assistant message"),
    ([{**CONV, "prompt": [{"role": "robot", "content": "x"}]}], "role 'robot' is not one of system, user, assistant"),
    ([{**CONV, "prompt": [{"role": "user"}]}], r"field 'prompt', message 0: expected"),
    ([{"chosen": CONV["prompt"] + CONV["chosen"], "rejected": CONV["rejected"]}], "differ before their last message"),
    ([{**CONV, "prompt": "Q: a"}], "field 'chosen' is a list of chat messages in a row whose other fields are strings"),
])
def test_bad_conversational_files_are_one_sentence(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        read_preference_jsonl(_write(tmp_path / "bad.jsonl", rows))


def test_conversational_rows_with_a_non_chat_format_name_file_and_line(tmp_path, tiny_tok_model):
    tok = tiny_tok_model[0]
    path = _write(tmp_path / "conv.jsonl", [CONV, CONV])
    examples = read_preference_jsonl(path)
    with pytest.raises(DataError, match=rf"{path}:1: a conversational row .* pass prompt=chat"):
        PreferenceDataModule(examples, [], tok, batch_size=1, max_prompt_length=64, max_length=96)
    with pytest.raises(DataError, match=rf"{path}:1: a conversational row"):
        PairEncoder(tok, 64, 96, prompt_format=TemplatePrompt()).encode(0, examples[0])
