"""TRL's option names on train.py's command line, mapped to this project's keys where they mean the same thing.

``python train.py learning_rate=1e-4 per_device_train_batch_size=4 loss_type=simpo`` is rewritten, before Hydra
reads it, to ``optim.lr=1e-4 data.batch_size=4 loss=simpo``, with a one-line note per alias saying what it became
and, where the two tools differ around it, how (``notes``). TRL names whose meaning has no equivalent here are
refused in one sentence that says what to use instead; so are an alias and its key given together. Names
checked against TRL 1.16's CPOConfig and DPOConfig and transformers' TrainingArguments (the fields they inherit).

Only the command line is rewritten (YAML files use the project's keys), and only names that are not keys of
this project: a top-level key of conf/ (``beta``, ``seed``) is always the project's. Values pass through as
given, sweeps included (``learning_rate=1e-4,3e-4`` under ``-m``), except for the few aliases whose values
are translated (``loss_type=sigmoid`` is ``loss=cpo``), which take a value or a comma list.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from cpo.errors import ConfigError


@dataclass(frozen=True)
class Alias:
    key: str                                   # the project's key; a config group when ``group``
    values: dict[str, str] | None = None       # TRL value -> project value (None: the value as given)
    notes: dict[str, str] = field(default_factory=dict)  # TRL value (or "*") -> what differs, said in the note
    group: bool = False
    convert: Callable[[str], str] | None = None  # a check or conversion of each value (e.g. whole epochs)


def _whole_epochs(value: str) -> str:
    try:
        epochs = float(value)
    except ValueError:
        return value  # not a number: the key's own type check says so
    if epochs != int(epochs):
        raise ConfigError(f"num_train_epochs={value}: Lightning trains whole epochs (trainer.max_epochs); for part of "
                          f"an epoch give trainer.max_steps or trainer.limit_train_batches")
    return str(int(epochs))


_NLL = "with no NLL term here (loss.alpha=0); TRL's CPOTrainer adds cpo_alpha=1 of it by default (give cpo_alpha=1)"
ALIASES: dict[str, Alias] = {
    # transformers.TrainingArguments (inherited by CPOConfig and DPOConfig)
    "learning_rate": Alias("optim.lr"),
    "weight_decay": Alias("optim.weight_decay"),  # both spare biases and norm weights
    "adam_beta1": Alias("optim.betas.0"),
    "adam_beta2": Alias("optim.betas.1"),
    "adam_epsilon": Alias("optim.eps"),
    "warmup_ratio": Alias("optim.warmup_ratio"),
    "lr_scheduler_type": Alias("optim.schedule", values={"linear": "linear", "cosine": "cosine",
                                                         "inverse_sqrt": "inverse_sqrt",
                                                         "constant_with_warmup": "constant"}),
    "num_train_epochs": Alias("trainer.max_epochs", convert=_whole_epochs),
    "max_steps": Alias("trainer.max_steps"),
    "per_device_train_batch_size": Alias("data.batch_size"),
    "per_device_eval_batch_size": Alias("data.eval_batch_size"),
    "gradient_accumulation_steps": Alias("trainer.accumulate_grad_batches"),
    "max_grad_norm": Alias("trainer.gradient_clip_val"),
    "logging_steps": Alias("trainer.log_every_n_steps"),
    "save_steps": Alias("checkpoint.every_n_steps",
                        notes={"*": "one checkpoints/last.ckpt, rewritten at each save, not a folder per save"}),
    "dataloader_num_workers": Alias("data.num_workers"),
    "gradient_checkpointing": Alias("model.gradient_checkpointing"),
    "bf16": Alias("trainer.precision", values={"true": "bf16-mixed", "false": "32-true"}),
    "fp16": Alias("trainer.precision", values={"true": "16-mixed", "false": "32-true"}),
    "output_dir": Alias("hydra.run.dir"),  # hydra.sweep.dir under -m
    "report_to": Alias("logger", group=True, values={"wandb": "wandb", "none": "none", "tensorboard": "tensorboard"}),
    # CPOConfig / DPOConfig
    "cpo_alpha": Alias("loss.alpha"),
    "simpo_gamma": Alias("loss.gamma", notes={"*": "used by loss=simpo and cpo_simpo only, as in TRL"}),
    "label_smoothing": Alias("loss.label_smoothing"),
    "loss_type": Alias("loss", group=True, values={"sigmoid": "cpo", "hinge": "hinge", "ipo": "ipo", "simpo": "simpo",
                                                   "sft": "sft"},
                       notes={"sigmoid": "CPOConfig's sigmoid; DPOConfig's sigmoid (DPO) is loss=dpo",
                              "hinge": _NLL, "ipo": _NLL,
                              "simpo": _NLL.replace("(give cpo_alpha=1)", "(that is loss=cpo_simpo)")
                              + "; this project's defaults are beta 2.0 and gamma 1.0 (TRL: 0.1 and 0.5)"}),
    "max_length": Alias("data.max_length", notes={"*": "prompt + completion tokens, as in TRL; here the prompt is "
                                                       "cut first (data.max_prompt_length, from the left)"}),
    "max_prompt_length": Alias("data.max_prompt_length"),
    "disable_dropout": Alias("model.disable_dropout"),
    "trust_remote_code": Alias("model.trust_remote_code"),
    "precompute_ref_log_probs": Alias("loss.reference", values={"true": "cached", "false": "auto"}),
    # trl's scripts (ModelConfig)
    "model_name_or_path": Alias("model.name_or_path"),
}

# TRL names with no equivalent of the same meaning here: one sentence each, saying what to use instead.
REFUSED: dict[str, str] = {
    "warmup_steps": "the warm-up here is a ratio of the run's optimizer steps: give optim.warmup_ratio "
                    "(warmup_steps divided by the number of steps)",
    "max_completion_length": "a completion gets what data.max_length leaves after its prompt (the prompt is capped "
                             "at data.max_prompt_length); there is no separate cap",
    "truncation_mode": "here the prompt is cut from the left (data.prompt_truncation=left, or reject to drop the "
                       "pair) and a completion from the right, which no single TRL truncation_mode describes",
    "alpha": "TRL's alpha is AlphaPO's reward shape, which is not implemented here (loss.alpha is the NLL weight, "
             "TRL's cpo_alpha)",
    "reference_free": "DPO without a reference model is CPO's preference term: loss=cpo_prefer_only (alone) or "
                      "loss=cpo (with the NLL term)",
    "ref_adapter_name": "the reference adapter is made here from the starting adapter: "
                        "loss.reference=reference_adapter",
    "model_adapter_name": "the trained adapter is model.lora (model.lora.adapter to continue one)",
    "eval_steps": "validation runs every trainer.val_check_interval training batches (micro-batches, not optimizer "
                  "steps), or at that fraction of an epoch",
    "eval_strategy": "validation runs every trainer.val_check_interval (batches or a fraction of an epoch)",
    "save_strategy": "checkpoints/last.ckpt is written every checkpoint.every_n_steps steps and/or "
                     "checkpoint.every_minutes minutes, at the end and on SIGTERM",
    "use_peft": "LoRA is on when model.lora is set: model=tiny_lora, an alma-* preset, or ++model.lora.r=16 "
                "with model=hf",
    "lora_r": "LoRA settings are model.lora.* (model.lora.r; ++model.lora.r=16 turns LoRA on for model=hf)",
    "lora_alpha": "LoRA settings are model.lora.* (model.lora.alpha)",
    "lora_dropout": "LoRA settings are model.lora.* (model.lora.dropout)",
    "lora_target_modules": "LoRA settings are model.lora.* (model.lora.target_modules)",
    "generate_during_eval": "translations of the dev set are scored at every validation by default "
                            "(evaluate.during_training.enabled)",
    "lr_scheduler_kwargs": "the schedules here take no extra arguments (optim.schedule, optim.warmup_ratio)",
}
for _name in ("sync_ref_model", "ref_model_mixup_alpha", "ref_model_sync_steps", "loss_weights", "f_divergence_type",
              "f_alpha_divergence_coef", "use_weighting", "ld_alpha", "discopop_tau", "padding_free",
              "pad_to_multiple_of", "rpo_alpha", "activation_offloading"):
    REFUSED.setdefault(_name, "it is not implemented here (the losses are conf/loss/*.yaml)")
_VALUE_REFUSALS = {
    ("lr_scheduler_type", "constant"): "TRL's constant schedule has no warm-up: give optim.schedule=constant "
                                       "optim.warmup_ratio=0",
    ("loss_type", "alphapo"): "AlphaPO is not implemented here",
}

_PREFIX = re.compile(r"^(~|\+\+|\+)?([\w.\-/@]+)=(.*)$", re.S)


@dataclass
class Rewritten:
    argv: list[str]
    notes: list[str]


def _split_values(value: str) -> list[str] | None:
    """A plain value or a comma list of plain values; None for a sweep function, a list, quotes, interpolations."""
    if re.search(r"[()\[\]{}'\"$]", value):
        return None
    return value.split(",")


def _map_value(name: str, alias: Alias, value: str) -> str:
    if alias.values is None and alias.convert is None:
        return value
    parts = _split_values(value)
    if parts is not None and alias.values is None:
        return ",".join(alias.convert(v) for v in parts)  # type: ignore[misc]
    if alias.values is None:
        return value
    if parts is None:
        ours = ", ".join(sorted(set(alias.values.values())))
        raise ConfigError(f"{name}={value}: TRL's {name} takes a value or a comma list here; for a sweep function "
                          f"give {alias.key}=... with this project's values ({ours})")
    out = []
    for v in parts:
        low = v.strip().lower()
        if (name, low) in _VALUE_REFUSALS:
            raise ConfigError(f"{name}={v}: {_VALUE_REFUSALS[(name, low)]}")
        if low not in alias.values:
            raise ConfigError(f"{name}={v} has no equivalent here (TRL's {name} values that map: "
                              f"{', '.join(f'{k} -> {alias.key}={w}' for k, w in alias.values.items())})")
        out.append(alias.values[low])
    return ",".join(out)


def _key_of(arg: str) -> str | None:
    m = _PREFIX.match(arg)
    return m.group(2) if m else None


def rewrite(argv: list[str], project_keys: set[str]) -> Rewritten:
    """``argv`` (without the program name) with TRL's names replaced by the project's; raises ConfigError for a
    TRL name without an equivalent, a value that does not map, or an alias given beside its own key."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    given = {k for k in (_key_of(a) for a in argv if not a.startswith("-")) if k}
    out, notes, used = [], [], {}
    for arg in argv:
        m = _PREFIX.match(arg) if not arg.startswith("-") else None
        if m is None or m.group(2) in project_keys or m.group(2).split(".")[0] in project_keys:
            out.append(arg)
            continue
        prefix, name, value = m.group(1) or "", m.group(2), m.group(3)
        if name in REFUSED:
            raise ConfigError(f"{name} (TRL's option) has no equivalent of the same meaning here: {REFUSED[name]}")
        alias = ALIASES.get(name)
        if alias is None:
            out.append(arg)
            continue
        key = "hydra.sweep.dir" if name == "output_dir" and multirun else alias.key
        if key in given or key in used:
            other = f"{key}=..." if key in given else f"{used[key]}=..."
            raise ConfigError(f"{name}={value} (TRL's name for {key}) and {other} are both given: keep one")
        used[key] = name
        new_value = _map_value(name, alias, value)
        new = [f"{prefix if prefix == '~' else ''}{key}={new_value}"]
        if name == "model_name_or_path" and "model" not in given:
            new.insert(0, "model=hf")  # any causal LM by name or path, as TRL's scripts load it
        out += new
        detail = alias.notes.get(value.strip().lower()) or alias.notes.get("*")
        notes.append(f"note: {name}={value} is TRL's name; using {' '.join(new)}" + (f" ({detail})" if detail else ""))
    return Rewritten(out, notes)
