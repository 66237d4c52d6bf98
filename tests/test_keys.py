"""Keys that nothing reads, values of the wrong type, TRL's option names and the machine's strategy: each is one
sentence before any model or data loads (issue 20 items 3-5, issue 19's TRL aliases)."""
import os
import subprocess
import sys

import pytest

from conftest import REPO, compose
from cpo.errors import ConfigError
from cpo.train.config import validate


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "CPO_DEBUG",
                        "HYDRA_FULL_ERROR")}
    return env | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _trains(tmp_path, cases: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """train.py with each argument list, started together (each ends before loading anything)."""
    procs = [subprocess.Popen([sys.executable, "train.py", f"hydra.run.dir={tmp_path / str(i)}", *args], cwd=REPO,
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, args in enumerate(cases)]
    out = []
    for args, p in zip(cases, procs):
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(args, p.returncode, stdout, stderr))
    return out


def _one_sentence(p: subprocess.CompletedProcess, *needles: str) -> str:
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert p.returncode == 2 and len(errors) == 1 and "Traceback" not in p.stderr, (p.args, p.stderr[-3000:])
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    # Refused before anything was loaded: no data summary, no policy, no demo build.
    assert "policy " not in p.stdout and "data demo:" not in p.stdout and "[demo]" not in p.stdout, p.stdout[-2000:]
    return errors[0]


# ----------------------------------------------------------------------------------------- the command line
@pytest.mark.slow
def test_the_issues_command_lines_are_one_sentence_before_anything_loads(tmp_path):
    cases = {
        # Hydra's own suggestion for an unknown key: was a TypeError after the model loaded
        ("+optim.learning_rate=1e-4",): ("optim.learning_rate is not a setting of the optimizer",
                                         "TRL's learning_rate is optim.lr here", "known keys of optim: betas, eps"),
        ("+unknown_key=1",): ("unknown_key is not a setting of train.py", "known top-level keys: beta,"),
        ("seed=abc",): ("seed='abc' must be a whole number",),
        ("strategy=deepspeed_zero2",): ("strategy=deepspeed_zero2 needs the deepspeed package (not installed)",
                                        "bash scripts/install.sh deepspeed"),
    }
    if any(p.startswith("strategy=") for c in cases for p in c):
        import importlib.util

        import torch

        if torch.cuda.is_available() or importlib.util.find_spec("deepspeed") is not None:
            cases = {k: v for k, v in cases.items() if not k[0].startswith("strategy=")}
    for p, needles in zip(_trains(tmp_path, [list(k) for k in cases]), cases.values()):
        _one_sentence(p, *needles)


@pytest.mark.parametrize("overrides, message", [
    (["forward=sideways"], "forward='sideways' is not one of concat, kv_cache, packed"),  # was a ValueError traceback
    (["data.prompt_truncation=middle"], "data.prompt_truncation='middle' is not one of left, reject"),
    (["+loss.cpo_alpha=0.5"], "loss.cpo_alpha is not a setting of the loss (PreferenceLoss) (TRL's cpo_alpha is "
                              "loss.alpha here)"),
    (["model=tiny_lora", "+model.lora.rank=4"], "model.lora.rank is not a setting of LoRA (LoraSettings): nothing "
                                                "would read it; known keys of model.lora: adapter, alpha, dropout,"),
    (["+data.n_train=10"], "data.n_train is not a setting of the data module or data=demo"),
    (["+data.source.n_train=10"], "data.source.n_train is not a setting of the data source cpo.demo.source.DemoData"),
    (["data=jsonl", "data.train_file=x.jsonl", "+data.reference_file=y"], "data.reference_file is not a setting"),
    (["+trainer.callbacks=[]"], "trainer.callbacks is not a setting of Lightning's Trainer"),  # the run passes them
    (["+trainer.max_stepz=3"], "trainer.max_stepz is not a setting of Lightning's Trainer"),
    (["optim.lr=fast"], "optim.lr='fast' must be a number"),
    (["trainer.max_steps=abc"], "trainer.max_steps='abc' must be a whole number"),
    (["data.batch_size=two"], "data.batch_size='two' must be a whole number"),
    (["model=tiny_lora", "model.lora.r=1.5"], "model.lora.r=1.5 must be a whole number"),
    (["loss.average_logps=maybe"], "loss.average_logps='maybe' must be true or false"),
    (["+logps.chunk=64"], "logps.chunk is not a setting of the log-prob path (LogpsSettings)"),
])
def test_keys_nothing_reads_and_wrong_types_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(compose(overrides))


def _train_groups() -> list[str]:
    """The config groups of train.py's defaults list (launchers need their plugins; they set Hydra's keys only)."""
    from omegaconf import OmegaConf

    groups = [str(g) for entry in OmegaConf.load(REPO / "conf" / "train.yaml").defaults if not isinstance(entry, str)
              for g in entry]
    return [g for g in groups if not g.startswith("override") and "/" not in g and g != "launcher"]


@pytest.mark.parametrize("group", _train_groups())
def test_every_shipped_config_passes_the_key_check(group):
    """The known keys are read from the code and conf/, so every YAML the project ships passes."""
    from cpo.train.keys import check_keys

    for path in sorted((REPO / "conf" / group).glob("*.yaml")):
        extra = {"jsonl": ["data.train_file=x.jsonl"], "hf": ["model.name_or_path=some/model"]}.get(path.stem, [])
        check_keys(compose([f"{group}={path.stem}", *extra]))


def test_known_keys_follow_the_code():
    """A field added to a settings class is a known key at once, with no list to update."""
    import dataclasses

    from cpo.train import keys
    from cpo.train.models import LoraSettings

    @dataclasses.dataclass
    class Wider(LoraSettings):
        lora_plus_ratio: float = 16.0

    assert "lora_plus_ratio" in keys.dataclass_keys(Wider)
    assert "lora_plus_ratio" not in keys.dataclass_keys(LoraSettings)
    assert "use_dora" in keys.dataclass_keys(LoraSettings)  # issue 19's field, known without a list to update
    # Keys that only group files with `# @package _global_` set are known too.
    assert {"strategy_name", "global_batch_size", "build_in_configure_model"} <= keys.top_level_keys()
    assert "hydra" not in keys.top_level_keys()


# ----------------------------------------------------------------------------------------- LoRA target modules
def test_all_linear_goes_to_peft_as_one_string(tiny_tok_model):
    """`model.lora.target_modules=all-linear` was split into characters (peft: no module 'a', 'l', ...)."""
    import copy

    from cpo.train.models import LoraSettings, add_lora, count_parameters

    _, model = tiny_tok_model
    every = add_lora(copy.deepcopy(model), LoraSettings(r=4, target_modules="all-linear"))
    listed = add_lora(copy.deepcopy(model), LoraSettings(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                              "gate_proj", "up_proj", "down_proj"]))
    assert count_parameters(every)[0] == count_parameters(listed)[0] > 0
    assert not any("lm_head" in n and "lora_" in n for n, _ in every.named_parameters())  # peft's meaning
    validate(compose(["model=tiny_lora", "model.lora.target_modules=all-linear"]))


# ----------------------------------------------------------------------------------------- TRL's names
def test_trl_names_become_the_projects_keys():
    from cpo.train.aliases import rewrite
    from cpo.train.keys import top_level_keys

    keys = top_level_keys()
    done = rewrite(["learning_rate=1e-4", "cpo_alpha=0.5", "loss_type=simpo", "simpo_gamma=0.7",
                    "per_device_train_batch_size=4", "gradient_accumulation_steps=8", "adam_beta2=0.98",
                    "num_train_epochs=3.0", "lr_scheduler_type=constant_with_warmup", "bf16=True",
                    "precompute_ref_log_probs=true", "beta=0.2", "seed=3"], keys)
    assert done.argv == ["optim.lr=1e-4", "loss.alpha=0.5", "loss=simpo", "loss.gamma=0.7", "data.batch_size=4",
                         "trainer.accumulate_grad_batches=8", "optim.betas.1=0.98", "trainer.max_epochs=3",
                         "optim.schedule=constant", "trainer.precision=bf16-mixed", "loss.reference=cached",
                         "beta=0.2", "seed=3"]  # beta and seed are this project's own keys: untouched
    assert len(done.notes) == 11 and done.notes[0] == "note: learning_rate=1e-4 is TRL's name; using optim.lr=1e-4"
    simpo = next(n for n in done.notes if n.startswith("note: loss_type=simpo"))
    assert "loss=cpo_simpo" in simpo and "beta 2.0 and gamma 1.0" in simpo  # what differs from TRL is said
    cfg = compose(done.argv)
    validate(cfg)
    assert (cfg.optim.lr, cfg.loss.alpha, cfg.loss.name, cfg.loss.gamma, cfg.data.batch_size) == (1e-4, 0.5, "simpo",
                                                                                                  0.7, 4)
    assert list(cfg.optim.betas) == [0.9, 0.98] and cfg.trainer.max_epochs == 3

    # A sweep: the values pass through (a value-mapped alias maps each); output_dir names the sweep's folder.
    sweep = rewrite(["-m", "learning_rate=1e-4,3e-4", "loss_type=sigmoid,hinge", "+output_dir=/tmp/s"], keys)
    assert sweep.argv == ["-m", "optim.lr=1e-4,3e-4", "loss=cpo,hinge", "hydra.sweep.dir=/tmp/s"]
    assert rewrite(["model_name_or_path=/m"], keys).argv == ["model=hf", "model.name_or_path=/m"]


@pytest.mark.parametrize("args, message", [
    (["learning_rate=1e-4", "optim.lr=2e-4"], "learning_rate=1e-4 (TRL's name for optim.lr) and optim.lr=... are both "
                                              "given: keep one"),
    (["bf16=true", "fp16=true"], "fp16=true (TRL's name for trainer.precision) and bf16=... are both given"),
    (["loss_type=simpo", "loss=cpo"], "loss_type=simpo (TRL's name for loss) and loss=... are both given"),
    (["loss_type=robust"], "loss_type=robust has no equivalent here (TRL's loss_type values that map: sigmoid -> "
                           "loss=cpo, hinge -> loss=hinge"),
    (["loss_type=alphapo"], "loss_type=alphapo: AlphaPO is not implemented here"),
    (["lr_scheduler_type=constant"], "TRL's constant schedule has no warm-up: give optim.schedule=constant "
                                     "optim.warmup_ratio=0"),
    (["warmup_steps=100"], "warmup_steps (TRL's option) has no equivalent of the same meaning here: the warm-up here "
                           "is a ratio"),
    (["alpha=0.5"], "TRL's alpha is AlphaPO's reward shape"),
    (["num_train_epochs=0.5"], "num_train_epochs=0.5: Lightning trains whole epochs"),
    (["-m", "loss_type=choice(sigmoid,hinge)"], "for a sweep function give loss=... with this project's values"),
])
def test_trl_names_without_the_same_meaning_are_refused(args, message):
    from cpo.train.aliases import rewrite
    from cpo.train.keys import top_level_keys

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        rewrite(args, top_level_keys())


@pytest.mark.slow
def test_trl_names_on_train_py_with_a_note_each(tmp_path):
    from conftest import SMALL_DEMO

    args = [a for a in SMALL_DEMO if not a.startswith("data.batch_size")] + [
        "logger=csv", "evaluate.before_after=false", "evaluate.during_training.enabled=false", "save_policy=false",
        "trainer.max_steps=2", "learning_rate=3e-4", "per_device_train_batch_size=4", "gradient_accumulation_steps=2"]
    ok, refused, clash = _trains(tmp_path, [args, ["warmup_steps=10"], ["+optim.learning_rate=1e-4",
                                                                        "learning_rate=1e-4"]])
    assert ok.returncode == 0, ok.stderr[-3000:]
    log = (tmp_path / "0" / "train.log").read_text()
    for note in ("note: learning_rate=3e-4 is TRL's name; using optim.lr=3e-4",
                 "note: per_device_train_batch_size=4 is TRL's name; using data.batch_size=4",
                 "note: gradient_accumulation_steps=2 is TRL's name; using trainer.accumulate_grad_batches=2"):
        assert note in log and note in ok.stdout
    assert "global batch 8 = 4 per device x 1 devices x 1 nodes x 2 accumulated" in ok.stdout
    import json

    assert json.loads((tmp_path / "0" / "results.json").read_text())["config"]["optim"]["lr"] == 3e-4
    _one_sentence(refused, "warmup_steps (TRL's option) has no equivalent", "optim.warmup_ratio")
    # The alias is rewritten, and the other key is refused by the key check, each in its own words: never both.
    _one_sentence(clash, "optim.learning_rate is not a setting of the optimizer", "TRL's learning_rate is optim.lr")
