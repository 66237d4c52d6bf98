"""Dropout as in ALMA-R: off by default (nn.Dropout, LoRA, attention); model.disable_dropout=false keeps it."""
import copy

import pytest
import torch

from conftest import REPO, compose
from cpo.data import Collator, PairEncoder, PreferenceExample
from cpo.train.losses import PreferenceLoss
from cpo.train.models import LoraSettings, build_policy
from cpo.train.module import OptimSettings, PreferenceModule
from cpo.train.tiny import save_model_and_tokenizer

EXAMPLES = [PreferenceExample(f"der hund {i}", f"the cat number {i} sees {i * 7} dogs today", f"the cat sees {i} dogs",
                              "de", "en") for i in range(4)]
LORA = LoraSettings(r=4, alpha=8, dropout=0.3, target_modules=["q_proj", "v_proj", "down_proj"])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tok_model):
    """The tiny Llama saved with attention dropout 0.1 in its config, as some checkpoints ship."""
    tok, model = tiny_tok_model
    model = copy.deepcopy(model)
    model.config.attention_dropout = 0.1
    return str(save_model_and_tokenizer(model, tok, tmp_path_factory.mktemp("dropout") / "model"))


def training_losses(policy, tok, n: int = 3) -> list[float]:
    """The CPO loss of one batch from ``n`` training-mode forwards."""
    enc = PairEncoder(tok, 64, 128)
    batch = Collator(tok.pad_token_id)([{"pair": enc.encode(i, e)} for i, e in enumerate(EXAMPLES)])
    module = PreferenceModule(policy, PreferenceLoss("cpo", beta=0.1, alpha=1.0), OptimSettings(), tok.pad_token_id)
    assert policy.training
    out = []
    for _ in range(n):
        loss, _ = module.compute(batch, train=True)
        out.append(float(loss.detach()))
    return out


@pytest.mark.parametrize("lora", [LORA, None], ids=["lora", "full"])
def test_dropout_is_off_by_default_so_one_batch_gives_one_loss(model_dir, tiny_tok_model, lora):
    tok, _ = tiny_tok_model
    policy = build_policy(model_dir, "float32", lora)
    losses = training_losses(policy, tok)
    assert losses[0] == losses[1] == losses[2], losses
    assert all(m.p == 0 for m in policy.modules() if isinstance(m, torch.nn.Dropout))
    attn = [m for m in policy.modules() if hasattr(m, "attention_dropout") and isinstance(m.attention_dropout, float)]
    assert attn and all(m.attention_dropout == 0.0 for m in attn)
    assert policy.config.attention_dropout == 0.0
    if lora is not None:  # the adapter's stored setting is kept (it is saved with it); only the modules are off
        assert policy.peft_config["default"].lora_dropout == 0.3


@pytest.mark.parametrize("lora", [LORA, None], ids=["lora", "full"])
def test_disable_dropout_false_keeps_dropout(model_dir, tiny_tok_model, lora):
    """With LoRA dropout 0.3 (and attention dropout 0.1 for full fine-tuning) three forwards give three losses."""
    tok, _ = tiny_tok_model
    torch.manual_seed(0)
    losses = training_losses(build_policy(model_dir, "float32", lora, disable_dropout=False), tok)
    assert len(set(losses)) == 3, losses


def test_a_continued_adapters_dropout_is_off_too(model_dir, tiny_tok_model, tmp_path):
    """ALMA's adapter stores lora_dropout 0.05; continued with the default settings, it is inactive."""
    tok, _ = tiny_tok_model
    fresh = build_policy(model_dir, "float32", LORA)
    with torch.no_grad():
        for n, p in fresh.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    fresh.save_pretrained(tmp_path / "adapter")
    continued = build_policy(model_dir, "float32", LoraSettings(adapter=str(tmp_path / "adapter")))
    lora_dropouts = [m for n, m in continued.named_modules() if n.endswith("lora_dropout.default")]
    assert lora_dropouts and all(m.p == 0 for m in lora_dropouts)
    losses = training_losses(continued, tok)
    assert losses[0] == losses[1] == losses[2]
    kept = build_policy(model_dir, "float32", LoraSettings(adapter=str(tmp_path / "adapter")), disable_dropout=False)
    assert len(set(training_losses(kept, tok))) == 3


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml")))
def test_every_model_preset_switches_dropout_off(preset):
    cfg = compose([f"model={preset}"] + (["model.name_or_path=x"] if preset == "hf" else []))
    assert cfg.model.disable_dropout is True
    text = (REPO / "conf" / "model" / f"{preset}.yaml").read_text()
    assert "model.disable_dropout=false" in text, f"conf/model/{preset}.yaml must document the switch"
