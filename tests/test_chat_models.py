"""A chat model end to end, for each of three template families: a few CPO steps with prompt=chat, the saved
policy reloaded with plain transformers + peft, and scripts/generate.py translating with the format the policy
recorded, stopping at the template's end of turn, its outputs cleaned.

The model's next token depends on the current token alone (``helpers.chat_tokenizers.chain_model``): after the
generation prompt's last token it writes "the man", the end-of-turn token, then " river" for ever. An output of
"the man" therefore shows that generation stopped at the end of turn and that nothing after it was kept.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, compose
from helpers.chat_tokenizers import FAMILIES, chain_model, chat_tokenizer, end_of_turn

SOURCES = [f"der {a} sieht {b} Hunde am Fluss {i}"
           for i, (a, b) in enumerate([("Mann", "zwei"), ("Frau", "fünf")] * 6)]


def _generate_app(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_gen_{name}", REPO / "scripts" / "generate.py")
    app = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = app
    spec.loader.exec_module(app)
    return app


def _rows(n: int) -> list[dict]:
    return [{"source": s, "chosen": f"the man sees dogs {i}", "rejected": f"a woman sees cats {i}",
             "src_lang": "de", "tgt_lang": "en"} for i, s in enumerate(SOURCES[:n])]


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request, tmp_path_factory):
    """(family, tokenizer, base model folder, run folder) after a few CPO steps with prompt=chat and LoRA."""
    from cpo.mt.chat import ChatPrompt
    from cpo.train.run import run
    from cpo.train.tiny import save_model_and_tokenizer

    family = request.param
    root = tmp_path_factory.mktemp(f"chat_{family}")
    tok = chat_tokenizer(family)
    last = ChatPrompt().bind(tok).encode("x", "de", "en").ids[-1]  # the generation prompt's last token
    the, man = tok(" the man", add_special_tokens=False)["input_ids"]
    (river,) = tok(" river", add_special_tokens=False)["input_ids"]
    eot = tok.convert_tokens_to_ids(end_of_turn(family))
    model = chain_model(tok, {last: the, the: man, man: eot, eot: river, river: river})
    save_model_and_tokenizer(model, tok, root / "base")
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(12)))
    (root / "test.jsonl").write_text("".join(
        json.dumps({"source": s, "reference": "the man", "src_lang": "de", "tgt_lang": "en"}) + "\n"
        for s in SOURCES[:3]))
    res = run(compose([
        "prompt=chat", "data=jsonl", f"data.train_file={root / 'pairs.jsonl'}", "data.val_size=4",
        f"data.test_file={root / 'test.jsonl'}", "data.batch_size=2", "model=tiny_lora",
        f"model.name_or_path={root / 'base'}", "model.lora.r=4", "logger=csv", "trainer.max_steps=3",
        "evaluate.num_beams=1", "evaluate.max_new_tokens=6", "evaluate.max_sentences=3",
        f"cache_dir={root / 'cache'}",
    ]), root / "run")
    return family, tok, root, res


def test_cpo_trains_a_chat_model_and_records_its_format(trained):
    family, tok, root, res = trained
    from cpo.mt.chat import ChatPrompt

    assert res["global_steps"] == 3 and res["train_pairs"] == 8 and res["val"]
    assert res["tokenization"].get("boundary_fallback", 0) == 0
    record = json.loads((root / "run" / "policy" / "cpo_prompt.json").read_text())
    assert record == ChatPrompt().describe()
    # Held-out translations before and after training went through the chat template and its end of turn.
    rows = [json.loads(line) for line in (root / "run" / "test_translations.jsonl").read_text().splitlines()]
    assert [r["hypothesis"] for r in rows] == ["the man"] * 3
    assert res["before"]["chrf"] == pytest.approx(100.0) and res["after"]["chrf"] == pytest.approx(100.0)


def test_the_policy_reloads_with_plain_transformers_and_peft(trained):
    family, tok, root, res = trained
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = root / "run" / "policy"
    base = json.loads((policy / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), policy).eval()
    saved = AutoTokenizer.from_pretrained(policy)
    assert saved.chat_template == tok.chat_template
    messages = [{"role": "user", "content": "Translate the following German text into English. Reply with the "
                                            f"translation only.\n\n{SOURCES[0]}"}]
    ids = saved.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    eot = saved.convert_tokens_to_ids(end_of_turn(family))
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             eos_token_id=eot, pad_token_id=saved.pad_token_id)
    assert saved.decode(out[0, ids.shape[1]:]) == f" the man{end_of_turn(family)}"


def test_generate_translates_with_the_recorded_format_and_stops_at_the_end_of_turn(trained, monkeypatch, caplog):
    family, tok, root, res = trained
    import transformers

    app = _generate_app(family)
    (root / "src.de").write_text("".join(s + "\n" for s in SOURCES[:5]))
    generated = []
    original = transformers.GenerationMixin.generate

    def recording(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        generated.append((kwargs["eos_token_id"], out.shape[1] - kwargs["input_ids"].shape[1]))
        return out

    monkeypatch.setattr(transformers.GenerationMixin, "generate", recording)

    def generate(*extra):
        return app.run(compose(app.rewrite_model_argument([
            f"model={root / 'run' / 'policy'}", f"input={root / 'src.de'}", "src_lang=de", "tgt_lang=en",
            "num_beams=1", "max_new_tokens=8", "batch_size=2", "progress=false", "overwrite=true", *extra]),
            config_name="generate"))

    summary = generate(f"output={root / 'hyp.en'}")
    assert (root / "hyp.en").read_text().splitlines() == ["the man"] * 5
    assert summary["directions"][0]["cleaning"] == {"end_of_turn": 5, "prompt_truncated": 0}
    assert summary["prompt"]["_target_"] == "cpo.mt.chat.ChatPrompt"
    eot = tok.convert_tokens_to_ids(end_of_turn(family))
    # generate() was told to stop at the end of turn, and did: "the man" + end of turn, not 8 new tokens
    assert generated, "generate() was never called through GenerationMixin.generate"
    assert all((eos if isinstance(eos, list) else [eos])[0] == eot and n == 3 for eos, n in generated)
    # an explicit other format is used, with a warning naming both
    caplog.clear()
    summary = generate(f"output={root / 'alma.en'}", "prompt=alma")
    assert summary["prompt"] == {"_target_": "cpo.mt.prompt.AlmaPrompt"}
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "cpo_prompt.json records the prompt format the policy was trained with, ChatPrompt(" in warning
    assert "translating with AlmaPrompt as the command line says" in warning


def test_a_tokenizer_without_a_template_is_refused_before_the_model_is_loaded(tmp_path, monkeypatch):
    """train.py and generate.py with prompt=chat on a base model: one sentence naming the remedy, no model load."""
    from cpo.errors import ConfigError
    from cpo.train.run import run
    from cpo.train.tiny import build_tiny_llama, save_model_and_tokenizer, train_bpe_tokenizer

    tok = train_bpe_tokenizer(SOURCES + ["the man sees dogs"], 300)
    save_model_and_tokenizer(build_tiny_llama(tok, hidden_size=32), tok, tmp_path / "base")
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(6)))
    monkeypatch.setattr("cpo.train.run.build_policy", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=f"the tokenizer of {tmp_path / 'base'} has none: use prompt=alma"):
        run(compose(["prompt=chat", "data=jsonl", f"data.train_file={tmp_path / 'pairs.jsonl'}", "model=hf",
                     f"model.name_or_path={tmp_path / 'base'}", "model.dtype=float32", "logger=csv"]),
            tmp_path / "run")
    assert not (tmp_path / "run" / "results.json").exists()
    app = _generate_app("no_template")
    (tmp_path / "src.de").write_text(SOURCES[0] + "\n")
    monkeypatch.setattr("cpo.train.models.load_causal_lm", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match="has none: use prompt=alma or prompt=template for a base model"):
        app.run(compose(app.rewrite_model_argument([f"model={tmp_path / 'base'}", f"input={tmp_path / 'src.de'}",
                                                    "src_lang=de", "tgt_lang=en", f"output={tmp_path / 'hyp.en'}",
                                                    "prompt=chat"]), config_name="generate"))
    assert not (tmp_path / "hyp.en").exists()


def test_the_demo_default_is_alma(tmp_path):
    """Without prompt=, a run's config holds ALMA's format: the demo trains and translates as before."""
    cfg = compose([])
    assert dict(cfg.prompt) == {"_target_": "cpo.mt.prompt.AlmaPrompt"}
    assert Path(REPO / "conf" / "prompt" / "alma.yaml").is_file()
