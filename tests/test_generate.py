"""scripts/generate.py on a tiny locally built model: aligned output, input formats, overwrite
refusal, a LoRA adapter folder, and clear errors for a missing model or an empty source line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_apps
GEN = ["num_beams=2", "max_new_tokens=6", "batch_size=4", "progress=false"]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_app_{Path(name).stem}", REPO / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run_all(arg_lists: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess]:
    return run_apps("generate.py", arg_lists, cwd)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A tiny Llama saved as a model folder, a LoRA adapter on it, and demo inputs in three formats."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cpo.data import format_prompt
    from cpo.demo import sample_sentences
    from cpo.train.tiny import build_tiny_llama, save_model_and_tokenizer, train_bpe_tokenizer

    root = tmp_path_factory.mktemp("generate")
    sentences = sample_sentences(40, seed=2)
    tok = train_bpe_tokenizer([s.source for s in sentences] + [s.translation for s in sentences]
                              + [format_prompt("x", "zb", "en"), format_prompt("x", "en", "zb")], 300)
    save_model_and_tokenizer(build_tiny_llama(tok, hidden_size=32, seed=0), tok, root / "model")
    base = AutoModelForCausalLM.from_pretrained(root / "model")
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, lora)
    peft_model.save_pretrained(root / "policy")  # like a trained run's saved policy: adapter + tokenizer
    tok.save_pretrained(root / "policy")
    assert (json.loads((root / "policy" / "adapter_config.json").read_text())["base_model_name_or_path"]
            == str(root / "model"))
    _write(root / "src.zb", [s.source for s in sentences[:7]])
    _write(root / "empty.zb", [sentences[0].source, " ", sentences[1].source])
    (root / "test.en-zb.json").write_text(json.dumps(
        [{"translation": {"en": s.translation, "zb": s.source}} for s in sentences[:5]]), encoding="utf-8")
    (root / "test.jsonl").write_text("".join(
        json.dumps({"source": s.source, "reference": s.translation, "src_lang": "zb", "tgt_lang": "en"}) + "\n"
        for s in sentences[:3]), encoding="utf-8")
    return root


def _lines(path: Path) -> list[str]:
    return path.read_bytes().decode("utf-8").split("\n")[:-1]


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    app = _load_script("generate.py")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("generate", overrides=app.rewrite_model_argument(list(overrides)))


def test_generate_app(workdir):
    """Through the command line: a full model, and a saved policy folder (adapter + tokenizer) alone."""
    w = workdir
    base, policy = _run_all([
        ["model=model", "input=src.zb", "src_lang=zb", "tgt_lang=en", "output=out/base.txt", *GEN,
         f"hydra.run.dir={w / 'r1'}"],
        # the policy folder alone: an adapter whose base model is read from adapter_config.json
        ["model=policy", "input=src.zb", "src_lang=zb", "tgt_lang=en", "output=out/policy.txt", *GEN,
         "merge_adapter=false", f"hydra.run.dir={w / 'r2'}"],
    ], w)
    for proc in (base, policy):
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(_lines(w / "out" / "base.txt")) == 7 and len(_lines(w / "out" / "policy.txt")) == 7
    assert "wrote 7 translations (zb-en)" in base.stdout
    assert not list((w / "out").glob(".*.tmp"))

    # The adapter is really applied: the app's output equals an in-process PeftModel's, which differs from the base's.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from cpo.mt.generation import translate
    from cpo.train.models import load_tokenizer

    torch.set_num_threads(1)
    sources = _lines(w / "src.zb")
    tok = load_tokenizer(str(w / "model"))
    kw = dict(batch_size=4, num_beams=2, max_new_tokens=6)
    plain = AutoModelForCausalLM.from_pretrained(w / "model")
    assert translate(plain, tok, sources, "zb", "en", **kw) == _lines(w / "out" / "base.txt")
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(w / "model"), w / "policy")
    expected = translate(with_adapter, tok, sources, "zb", "en", **kw)
    assert expected == _lines(w / "out" / "policy.txt")
    assert expected != _lines(w / "out" / "base.txt")


def test_generate_in_process(workdir, monkeypatch):
    """The same app through run(): other input formats, adapter= with merging, overwrite, errors."""
    app = _load_script("generate.py")
    w = workdir
    monkeypatch.chdir(w)  # relative paths resolve against the launch directory
    # base + adapter given separately (merged), ALMA JSON input with the direction from its file name
    out = app.run(_compose("model=model", "adapter=policy", "input=test.en-zb.json", "output=out2/alma.txt", *GEN))
    assert (out["n"], out["direction"], out["adapter"]) == (5, "en-zb", str(w / "policy"))
    assert len(_lines(w / "out2" / "alma.txt")) == 5
    out = app.run(_compose("model=model", "input=test.jsonl", "output=out2/jsonl.txt", *GEN))
    assert (out["n"], out["direction"]) == (3, "zb-en") and len(_lines(w / "out2" / "jsonl.txt")) == 3
    # the policy folder alone, adapter merged into the weights (the default)
    app.run(_compose("model=policy", "input=src.zb", "src_lang=zb", "tgt_lang=en", "output=out2/merged.txt", *GEN))
    merged = _lines(w / "out2" / "merged.txt")
    assert len(merged) == 7

    # An existing output is kept unless overwrite=true (checked before the model is loaded).
    before = (w / "out2" / "jsonl.txt").read_bytes()
    with pytest.raises(FileExistsError, match="exists; pass overwrite=true"):
        app.run(_compose("model=./no/such/model", "input=test.jsonl", "output=out2/jsonl.txt", *GEN))
    assert (w / "out2" / "jsonl.txt").read_bytes() == before
    app.run(_compose("model=model", "input=src.zb", "src_lang=zb", "tgt_lang=en", "output=out2/jsonl.txt",
                     "overwrite=true", *GEN))
    assert len(_lines(w / "out2" / "jsonl.txt")) == 7

    with pytest.raises(FileNotFoundError, match=r"model=\./no/such/model: .*no/such/model does not exist"):
        app.run(_compose("model=./no/such/model", "input=src.zb", "src_lang=zb", "tgt_lang=en", "output=out2/x.txt"))
    from cpo.io import DataError

    with pytest.raises(DataError, match=r"empty\.zb:2: empty source line"):
        app.run(_compose("model=model", "input=empty.zb", "src_lang=zb", "tgt_lang=en", "output=out2/y.txt"))
    with pytest.raises(ValueError, match="needs src_lang"):
        app.run(_compose("model=model", "input=src.zb", "output=out2/z.txt"))
    with pytest.raises(ValueError, match="model= is not set"):
        app.run(_compose("input=src.zb", "src_lang=zb", "tgt_lang=en", "output=out2/z.txt"))
    assert not any((w / "out2" / n).exists() for n in ("x.txt", "y.txt", "z.txt"))


def test_model_resolution(workdir, monkeypatch):
    app = _load_script("generate.py")
    w = workdir
    monkeypatch.chdir(w)
    assert app.resolve_model_and_adapter("model", None) == (str(w / "model"), None)
    assert app.resolve_model_and_adapter("policy", None) == (str(w / "model"), str(w / "policy"))
    assert app.resolve_model_and_adapter("model", "policy") == (str(w / "model"), str(w / "policy"))
    assert app.resolve_model_and_adapter("haoranxu/ALMA-13B-R", None) == ("haoranxu/ALMA-13B-R", None)
    with pytest.raises(FileNotFoundError, match="adapter=model: .* has no adapter_config.json"):
        app.resolve_model_and_adapter("model", "model")
    with pytest.raises(FileNotFoundError, match="nothere"):
        app.resolve_model_and_adapter("./nothere", None)
    with pytest.raises(ValueError, match="model= is not set"):
        app.resolve_model_and_adapter(None, None)
    assert app.rewrite_model_argument(["model=/x/y", "input=a"]) == ["model=hf", "model.name_or_path=/x/y", "input=a"]
    assert app.rewrite_model_argument(["model=alma-13b-lora"]) == ["model=alma-13b-lora"]
    assert app.one_line("a\rb\u2028c") == "a b c"


# --------------------------------------------------------------------------- ALMA's output cleaning (SPEC section 4)
@pytest.mark.parametrize("generated, expected, rule", [
    # "{Tgt}:" inside a line is part of the translation; only "\n{Tgt}:" is a cue
    (" Beautiful English: Letters That Take Your Breath Away", "Beautiful English: Letters That Take Your Breath Away",
     "first_line"),
    (" Hello world\nEnglish: Hello", "Hello world", "first_line"),
    ("\n Hello world", "Hello world", "second_line"),
    ("\n\n Hello world\nmore", "Hello world", "third_line"),
    ("\n\n\n Hello world", "", "third_line"),  # ALMA returns the (blank) third line, never looks further
    ("\nEnglish: Hello world\nEnglish: x", "Hello world", "after_repeated_cue"),
    ("\n", "", "none"),
    ("", "", "none"),
    (" \u200b\n Hi", "Hi", "second_line"),  # a zero-width-only line is blank
])
def test_clean_translation_follows_alma(generated, expected, rule):
    from cpo.mt.generation import clean_translation, postprocess

    assert clean_translation(generated, "en") == (expected, rule)
    assert postprocess(generated, "en") == expected


def test_clean_translation_keeps_a_real_alma_13b_r_output():
    """ALMA-13B-R's own WMT'22 zh-en output has a line with "English:" inside it; the old cut kept one word."""
    from conftest import WMT22

    from cpo.mt.generation import postprocess

    path = WMT22 / "ALMA-13B-R" / "zhen" / "test.zh-en.en"
    if not path.is_file():
        pytest.skip(f"shared WMT'22 data not found at {path} (set CPO_SHARED_DATA)")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if "English:" in line]
    if not lines:
        pytest.skip(f"{path} has no line with 'English:'")
    for line in lines:
        assert postprocess(" " + line, "en") == line
        assert postprocess(" " + line + "\nEnglish: something else", "en") == line
    assert postprocess(" Beautiful English: Letters", "de") == "Beautiful English: Letters"
    assert postprocess(" Schöne Grüße\nGerman: x", "de") == "Schöne Grüße"


# --------------------------------------------------------------------------- many directions, one model load
def _wmt22_root(root: Path, sentences) -> Path:
    """A WMT'22-layout folder with two directions of the demo language (sources and references)."""
    for s, t in (("zb", "en"), ("en", "zb")):
        pair = root / "wmt-testset" / f"{s}{t}"
        pair.mkdir(parents=True, exist_ok=True)
        src = [x.source for x in sentences] if s == "zb" else [x.translation for x in sentences]
        ref = [x.translation for x in sentences] if s == "zb" else [x.source for x in sentences]
        _write(pair / f"test.{s}-{t}.{s}", src)
        _write(pair / f"test.{s}-{t}.{t}", ref)
    return root


def test_generate_wmt22_layout_many_directions_one_load(workdir, tmp_path, monkeypatch):
    from cpo.demo import sample_sentences
    from cpo.mt.evaluation import evaluate_directions, wmt22_directions

    app = _load_script("generate.py")
    monkeypatch.chdir(workdir)
    root = _wmt22_root(tmp_path / "wmt22", sample_sentences(5, seed=3))
    loads = []
    real_load = app.load_for_generation
    monkeypatch.setattr(app, "load_for_generation", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    out_dir = tmp_path / "outputs" / "tiny-system"
    overrides = ["model=model", f"wmt22.root={root}", "wmt22.directions=[zb-en,en-zb]", f"output_dir={out_dir}", *GEN]
    summary = app.run(_compose(*overrides))
    assert len(loads) == 1
    assert [d["direction"] for d in summary["directions"]] == ["zb-en", "en-zb"]
    for d in ("zb-en", "en-zb"):
        s, t = d.split("-")
        assert len(_lines(out_dir / f"{s}{t}" / f"test.{d}.{t}")) == 5
    # scripts/evaluate.py wmt22.root=<root> wmt22.system=<absolute output_dir> finds exactly these files
    found = wmt22_directions(root, str(out_dir), ["zb-en", "en-zb"])
    assert found["en-zb"]["hyp"] == str(out_dir / "enzb" / "test.en-zb.zb")
    assert set(evaluate_directions(found)) == {"zb-en", "en-zb"}

    # Overwrite rules per file, all checked before the model is loaded.
    monkeypatch.setattr(app, "load_for_generation", lambda *a, **k: pytest.fail("the model was loaded"))
    (out_dir / "enzb" / "test.en-zb.zb").unlink()
    with pytest.raises(FileExistsError, match=r"output_dir=.*zben/test\.zb-en\.en: exists; pass overwrite=true"):
        app.run(_compose(*overrides))
    assert not (out_dir / "enzb" / "test.en-zb.zb").exists()
    monkeypatch.setattr(app, "load_for_generation", real_load)
    before = (out_dir / "zben" / "test.zb-en.en").stat().st_mtime_ns
    summary = app.run(_compose(*overrides, "skip_existing=true"))
    assert [d["direction"] for d in summary["directions"]] == ["en-zb"] and len(summary["skipped"]) == 1
    assert (out_dir / "zben" / "test.zb-en.en").stat().st_mtime_ns == before
    # ... but only an output written with the same model and decoding: a system folder never mixes two.
    from cpo.cli import UsageError as Usage

    with pytest.raises(Usage, match=r"exists but was not written with these settings \(num_beams\)"):
        greedy = [o for o in overrides if not o.startswith("num_beams=")]
        app.run(_compose(*greedy, "num_beams=1", "skip_existing=true"))
    # A record written before the prompt format was recorded is ALMA's; another format is another system.
    made_by = out_dir / "zben" / ".test.zb-en.en.generation.json"
    record = json.loads(made_by.read_text())
    assert record.pop("prompt") == {"_target_": "cpo.mt.prompt.AlmaPrompt"}
    made_by.write_text(json.dumps(record))
    assert len(app.run(_compose(*overrides, "skip_existing=true"))["skipped"]) == 2
    with pytest.raises(Usage, match=r"exists but was not written with these settings \(prompt\)"):
        app.run(_compose(*overrides, "prompt=template", "skip_existing=true"))

    # The directions mode: an explicit output per direction, or the layout under output_dir.
    summary = app.run(_compose(
        "model=model", f"+directions.zb-en.input={root / 'wmt-testset/zben/test.zb-en.zb'}",
        f"+directions.zb-en.output={tmp_path / 'mine.en'}",
        f"+directions.en-zb.input={root / 'wmt-testset/enzb/test.en-zb.en'}", f"output_dir={tmp_path / 'layout'}",
        *GEN))
    assert [d["output"] for d in summary["directions"]] == [str(tmp_path / "mine.en"),
                                                            str(tmp_path / "layout" / "enzb" / "test.en-zb.zb")]
    from cpo.cli import UsageError

    with pytest.raises(UsageError, match="give output_dir="):
        app.run(_compose("model=model", f"wmt22.root={root}", *GEN))
    with pytest.raises(UsageError, match="would both write"):
        app.run(_compose("model=model", f"+directions.zb-en.input={root / 'wmt-testset/zben/test.zb-en.zb'}",
                         f"+directions.zb-en.output={tmp_path / 'same.txt'}",
                         f"+directions.en-zb.output={tmp_path / 'same.txt'}",
                         f"+directions.en-zb.input={root / 'wmt-testset/enzb/test.en-zb.en'}", *GEN))


def test_generate_truncates_prompts_as_training_does(workdir, monkeypatch):
    """max_prompt_length reaches translate(): over-long prompts are cut by the training code's rule."""
    import torch
    from transformers import AutoModelForCausalLM

    from cpo.cli import UsageError
    from cpo.mt.generation import translate
    from cpo.train.models import load_tokenizer
    from cpo.mt.prompt import PromptEncoder

    app = _load_script("generate.py")
    monkeypatch.chdir(workdir)
    torch.set_num_threads(1)
    tok = load_tokenizer(str(workdir / "model"))
    sources = _lines(workdir / "src.zb")
    budget = 14
    assert all(PromptEncoder(tok, budget).encode(s, "zb", "en").truncated for s in sources)
    summary = app.run(_compose("model=model", "input=src.zb", "src_lang=zb", "tgt_lang=en", "output=out3/cut.txt",
                               f"max_prompt_length={budget}", *GEN))
    assert summary["directions"][0]["cleaning"]["prompt_truncated"] == len(sources)
    model = AutoModelForCausalLM.from_pretrained(workdir / "model")
    kw = dict(batch_size=4, num_beams=2, max_new_tokens=6)
    assert _lines(workdir / "out3" / "cut.txt") == translate(model, tok, sources, "zb", "en",
                                                             max_prompt_length=budget, **kw)
    # a budget that leaves no room for any of the source is refused before any generation
    monkeypatch.setattr("cpo.mt.generation.translate", lambda *a, **k: pytest.fail("generation started"))
    with pytest.raises(UsageError, match=r"max_prompt_length=3: .*keeps none of the source"):
        app.run(_compose("model=model", "input=src.zb", "src_lang=zb", "tgt_lang=en", "output=out3/none.txt",
                         "max_prompt_length=3", *GEN))
    assert not (workdir / "out3" / "none.txt").exists()


def test_generate_max_sentences_is_a_smoke_test(workdir, monkeypatch):
    """max_sentences=N translates the first N sources; the partial output is never kept as a whole one."""
    from cpo.cli import UsageError
    from cpo.mt.generation import translate
    from cpo.train.models import load_tokenizer
    from transformers import AutoModelForCausalLM

    app = _load_script("generate.py")
    w = workdir
    monkeypatch.chdir(w)
    args = ["model=model", "input=src.zb", "src_lang=zb", "tgt_lang=en", "output=out4/smoke.txt", *GEN]
    out = app.run(_compose(*args, "max_sentences=3"))
    assert out["n"] == 3 and len(_lines(w / "out4" / "smoke.txt")) == 3
    tok = load_tokenizer(str(w / "model"))
    plain = AutoModelForCausalLM.from_pretrained(w / "model")
    expected = translate(plain, tok, _lines(w / "src.zb")[:3], "zb", "en", batch_size=4, num_beams=2, max_new_tokens=6)
    assert _lines(w / "out4" / "smoke.txt") == expected
    assert json.loads((w / "out4" / ".smoke.txt.generation.json").read_text())["max_sentences"] == 3
    with pytest.raises(UsageError, match=r"exists but was not written with these settings \(max_sentences\)"):
        app.run(_compose(*args, "skip_existing=true"))
    with pytest.raises(UsageError, match="max_sentences=0 must be a positive integer"):
        app.run(_compose(*args, "max_sentences=0", "overwrite=true"))


@pytest.mark.slow
def test_nan_outputs_and_damaged_weights_stop_in_one_sentence(workdir):
    """A model whose outputs are NaN gave a file of empty lines and exit 0; a truncated weight file a traceback."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from cpo.train.models import load_tokenizer

    w = workdir
    nan = AutoModelForCausalLM.from_pretrained(w / "model")
    with torch.no_grad():
        nan.model.norm.weight.fill_(float("nan"))  # every logit NaN, as after a diverged run or an fp16 overflow
    nan.save_pretrained(w / "nan_model")
    load_tokenizer(str(w / "model")).save_pretrained(w / "nan_model")
    shutil.copytree(w / "model", w / "cut_model")
    weights = w / "cut_model" / "model.safetensors"
    with open(weights, "r+b") as f:  # a copy that did not finish
        f.truncate(weights.stat().st_size // 2)
    runs = _run_all([
        ["model=nan_model", "input=src.zb", "src_lang=zb", "tgt_lang=en", "output=out/nan.txt", *GEN,
         f"hydra.run.dir={w / 'nan_run'}"],
        ["model=cut_model", "input=src.zb", "src_lang=zb", "tgt_lang=en", "output=out/cut.txt", *GEN,
         f"hydra.run.dir={w / 'cut_run'}"],
    ], w)
    for proc, output, needle in zip(runs, ("nan.txt", "cut.txt"), (
            "the model's outputs are not numbers (NaN) while translating zb-en",
            "a weight file is damaged or cut short (Error while deserializing header")):
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]
        assert not (w / "out" / output).exists()  # no file of empty lines that looks finished


def test_generate_speaks_the_console_convention(workdir):
    """Plain lines (was Hydra's "[date][generate][INFO] - ..."), stamped in generate.log, and progress=true in a
    log file gives progress lines, never a bar's carriage returns."""
    import re

    w = workdir
    (proc,) = _run_all([["model=model", "input=src.zb", "src_lang=zb", "tgt_lang=en", "output=out/console.txt",
                         "num_beams=2", "max_new_tokens=6", "batch_size=4", "progress=true",
                         f"hydra.run.dir={w / 'console'}"]], w)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "\r" not in out and "][INFO]" not in out and "[HYDRA]" not in out, out[-2000:]
    assert any(line.startswith("model ") for line in proc.stdout.splitlines()), proc.stdout
    log = [line for line in (w / "console" / "generate.log").read_text().splitlines() if line.strip()]
    assert log and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) for line in log), log
