"""peft's LoRA variants as settings (DoRA, rsLoRA, modules_to_save) and QLoRA refused where it cannot run."""
import copy
import json
import math

import pytest
import torch

from conftest import SMALL_DEMO, compose
from cpo.errors import ConfigError
from cpo.train.models import LoraSettings, build_policy, build_reference, count_parameters, save_policy
from cpo.train.tiny import save_model_and_tokenizer

TARGETS = ["q_proj", "v_proj"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tok_model):
    tok, model = tiny_tok_model
    return str(save_model_and_tokenizer(copy.deepcopy(model), tok, tmp_path_factory.mktemp("variants") / "model"))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _lora_layers(policy):
    return [m for n, m in policy.named_modules() if n.endswith("q_proj") and hasattr(m, "scaling")]


def test_dora_trains_a_magnitude_and_starts_as_the_base(model_dir, tiny_tok_model):
    plain = build_policy(model_dir, "float32", LoraSettings(r=4, alpha=8, target_modules=TARGETS))
    dora = build_policy(model_dir, "float32", LoraSettings(r=4, alpha=8, target_modules=TARGETS, use_dora=True))
    names = [n for n, p in dora.named_parameters() if p.requires_grad]
    assert any("lora_magnitude_vector" in n for n in names) and not any(
        "lora_magnitude_vector" in n for n, _ in plain.named_parameters())
    # one magnitude per output feature of each adapted projection (q: 32, v: 16 with 2 KV heads), 2 layers
    assert count_parameters(dora)[0] == count_parameters(plain)[0] + 2 * (32 + 16)
    # A fresh DoRA adapter is the identity on the base model, so the DPO reference may be the adapter switched off.
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    ref = build_reference("auto", dora, LoraSettings(use_dora=True))
    with ref.model_for(dora) as m:
        base = _logits(m, ids)
    torch.testing.assert_close(_logits(dora.eval(), ids), base, rtol=1e-5, atol=1e-5)


def test_rslora_scales_by_the_square_root_of_the_rank(model_dir):
    plain = build_policy(model_dir, "float32", LoraSettings(r=16, alpha=32, target_modules=TARGETS))
    rs = build_policy(model_dir, "float32", LoraSettings(r=16, alpha=32, target_modules=TARGETS, use_rslora=True))
    assert {m.scaling["default"] for m in _lora_layers(plain)} == {32 / 16}
    assert {m.scaling["default"] for m in _lora_layers(rs)} == {32 / math.sqrt(16)}


def test_modules_to_save_are_trained_in_full_and_saved_with_the_adapter(model_dir, tmp_path):
    from safetensors.torch import load_file

    lora = LoraSettings(r=4, alpha=8, target_modules=TARGETS, modules_to_save=["lm_head"])
    policy = build_policy(model_dir, "float32", lora)
    trained = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    head = [n for n in trained if "lm_head" in n]
    assert head and sum(trained[n].numel() for n in head) == policy.get_output_embeddings().weight.numel()
    save_policy(policy, tmp_path / "policy")
    saved = load_file(tmp_path / "policy" / "adapter_model.safetensors")
    assert any("lm_head" in k for k in saved)
    assert json.loads((tmp_path / "policy" / "adapter_config.json").read_text())["modules_to_save"] == ["lm_head"]


def test_a_variant_of_a_continued_adapter_is_refused(model_dir, tmp_path):
    save_policy(build_policy(model_dir, "float32", LoraSettings(r=4, alpha=8, target_modules=TARGETS)),
                tmp_path / "adapter")
    with pytest.raises(ConfigError, match=r"model.lora.use_dora applies to a fresh adapter"):
        build_policy(model_dir, "float32", LoraSettings(adapter=str(tmp_path / "adapter"), use_dora=True))


def test_a_dora_run_trains_and_saves_its_setting(tmp_path):
    from cpo.train.run import run

    res = run(compose(SMALL_DEMO + ["logger=none", "model=tiny_lora", "model.lora.use_dora=true",
                                    "model.lora.use_rslora=true", "evaluate.before_after=false",
                                    "trainer.max_steps=2"]), tmp_path)
    saved = json.loads((tmp_path / "policy" / "adapter_config.json").read_text())
    assert saved["use_dora"] is True and saved["use_rslora"] is True and res["global_steps"] == 2


def test_qlora_is_refused_in_one_sentence_without_a_gpu_or_bitsandbytes(tmp_path):
    from cpo.train.quantization import check_4bit
    from cpo.train.run import run

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"load_in_4bit=true \(QLoRA\) needs a CUDA GPU, and this machine has"):
            run(compose(SMALL_DEMO + ["model=tiny_lora", "model.lora.load_in_4bit=true"]), tmp_path)
        assert not (tmp_path / "run.json").exists()  # refused before anything was started
    with pytest.raises(ConfigError, match=r"needs bitsandbytes, which is not installed: pip install 'cpo\[qlora\]'"):
        check_4bit(cuda=True, bitsandbytes=False)
    with pytest.raises(ConfigError, match="not supported with build_in_configure_model"):
        check_4bit(sharded=True, cuda=True, bitsandbytes=True)
    check_4bit(cuda=True, bitsandbytes=True)  # where both are there, nothing to refuse


def test_the_qlora_extra_is_declared():
    import tomllib

    from conftest import REPO

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("bitsandbytes") for d in extras["qlora"])


@pytest.mark.parametrize("model", ["tiny", "tiny_lora"])
def test_a_record_from_before_the_new_keys_is_the_same_run(model):
    """A run recorded before the LoRA variants and the callbacks group existed is the run of the same command
    today (ADDED_KEYS, with a null model.lora left null); a variant switched on is another run."""
    from omegaconf import OmegaConf

    from cpo.runs.fingerprint import config_diff, fingerprint, same_configuration

    now = OmegaConf.to_container(compose(SMALL_DEMO + [f"model={model}"]), resolve=True)
    old = copy.deepcopy(now)
    old.pop("callbacks")
    if old["model"]["lora"] is not None:
        for k in ("use_dora", "use_rslora", "modules_to_save", "load_in_4bit"):
            old["model"]["lora"].pop(k)
    assert fingerprint(old) != fingerprint(now)
    assert same_configuration(fingerprint(old), old, fingerprint(now)) and config_diff(old, now) == []
    if model == "tiny_lora":
        dora = OmegaConf.to_container(compose(SMALL_DEMO + [f"model={model}", "model.lora.use_dora=true"]),
                                      resolve=True)
        assert not same_configuration(fingerprint(old), old, fingerprint(dora))
        assert config_diff(old, dora) == ["model.lora.use_dora: false -> true"]
