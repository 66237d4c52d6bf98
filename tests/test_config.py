"""Every shipped YAML composes; the schema stops bad settings with one clear sentence."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO, compose
from cpo.config import ConfigError, validate

GROUPS = ["model", "loss", "data", "strategy", "logger"]


def options(group):
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes(group):
    for opt in options(group):
        extra = ["data.train_file=x.jsonl"] if opt == "jsonl" else []
        extra += ["model.name_or_path=some/model"] if opt == "hf" else []
        cfg = compose([f"{group}={opt}"] + extra)
        OmegaConf.to_container(cfg, resolve=True)


def test_every_experiment_composes():
    for opt in options("experiment"):
        OmegaConf.to_container(compose([f"experiment={opt}"]), resolve=True)


def test_beta_is_top_level_and_reaches_every_loss():
    for loss in options("loss"):
        assert compose([f"loss={loss}", "beta=0.37"]).loss.beta == 0.37


def test_alma_r_setup_composes_to_spec_section_5():
    cfg = compose(["model=alma-13b-lora", "data=alma_r_preference", "strategy=deepspeed_zero2"])
    assert cfg.model.name_or_path == "haoranxu/ALMA-13B-Pretrain" and cfg.model.lora.adapter == "haoranxu/ALMA-13B-Pretrain-LoRA"
    assert (cfg.model.lora.r, cfg.model.lora.alpha, cfg.model.lora.dropout, list(cfg.model.lora.target_modules)) == (16, 32, 0.05, ["down_proj"])
    assert (cfg.loss.beta, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.schedule, cfg.optim.warmup_ratio) == (0.1, 1e-4, 0.01, "inverse_sqrt", 0.01)
    assert (cfg.data.max_prompt_length, cfg.data.max_length, cfg.data.batch_size, cfg.trainer.max_epochs) == (256, 512, 2, 1)
    assert cfg.model.dtype == "bfloat16" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.strategy["_target_"] == "cpo.strategies.deepspeed" and cfg.trainer.strategy.stage == 2
    validate(cfg)


def test_trainer_keys_pass_through():
    cfg = compose(["trainer.max_steps=5", "trainer.limit_val_batches=2"])
    assert cfg.trainer.max_steps == 5 and cfg.trainer.limit_val_batches == 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["beta=0"], "beta must be > 0"),
        (["beta=-1"], "beta must be > 0"),
        (["loss.alpha=-0.5"], "loss.alpha must be >= 0"),
        (["loss.kind=nope"], "loss.kind='nope' is not a known loss"),
        (["data=jsonl", "data.train_file=/nonexistent/pairs.jsonl", "model=hf", "model.name_or_path=x"], "data.train_file: /nonexistent/pairs.jsonl does not exist"),
        (["data=jsonl", "model=hf", "model.name_or_path=x"], "data.train_file is not set"),
        (["loss=dpo", "loss.reference=none"], "loss=dpo needs loss.reference"),
    ],
)
def test_schema_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(compose(overrides))


def test_unknown_group_option_is_refused():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="loss"):
        compose(["loss=nope"])
    with pytest.raises(MissingConfigException, match="strategy"):
        compose(["strategy=nope"])


def test_strategies_instantiate_on_cpu():
    from hydra.utils import instantiate

    fsdp = instantiate(compose(["strategy=fsdp"]).trainer.strategy)
    assert type(fsdp).__name__ == "FSDPStrategy"
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        pytest.skip("deepspeed is an optional extra (pip install cpo[deepspeed])")
    for s in ("deepspeed_zero2", "deepspeed_zero3"):
        ds = instantiate(compose([f"strategy={s}"]).trainer.strategy)
        assert ds.config["zero_optimization"]["stage"] == int(s[-1])
