"""The model card of a trained policy (``policy/README.md``, what the Hugging Face Hub shows) and its upload.

The card says what a reader of a shared checkpoint needs to judge and reproduce it: the base model and the
adapter, the loss and its settings, the optimiser and the global batch, fingerprints of the data read, the
held-out before/after table, which validation chose the policy (``callbacks=best_policy``), the command and the
code version. ``push_to_hub=<owner/name>`` uploads ``policy/`` with its card after a finished run; without hub
access it is refused in one sentence before training starts.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Mapping

from cpo.errors import ConfigError
from cpo.io import Unavailable, atomic_write_text

CARD = "README.md"
LOSS_KEYS = ("kind", "beta", "alpha", "label_smoothing", "gamma", "average_logps", "nll_target", "reference",
             "tau_c1", "tau_c2", "tau_detach")


def command() -> str:
    """The command that ran, as far as it can be known: ``python train.py <overrides>`` under Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return "cpo.train.run.run(cfg, out_dir) called as a library (the whole configuration is in results.json)"
    return " ".join(["python", "train.py", *(shlex.quote(str(o)) for o in hc.overrides.task)])


def _is_hub_name(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith(("/", ".", "~")) and not Path(name).exists()


def _yaml_list(key: str, values) -> list[str]:
    return [f"{key}:"] + [f"- {v}" for v in values] if values else []


def render(config: Mapping[str, Any], results: Mapping[str, Any], table: str | None, role: str = "policy",
           languages=()) -> str:
    """The card's Markdown (YAML metadata first, as the Hub reads it) from the run's resolved config and results."""
    from cpo.languages import LANGUAGES

    model, loss, optim = config.get("model") or {}, config.get("loss") or {}, config.get("optim") or {}
    lora = model.get("lora")
    base = str(results.get("start_model") or model.get("name_or_path"))
    langs = sorted({lang for lang in languages if lang in LANGUAGES and lang != "zb"})  # ISO 639-1 (zb: the demo's)
    meta = ["---", f"library_name: {'peft' if lora else 'transformers'}"]
    if _is_hub_name(base):
        meta.append(f"base_model: {base}")
    meta += _yaml_list("language", langs)
    meta += _yaml_list("tags", list(dict.fromkeys(["translation", "cpo", "preference-optimization",
                                                    str(loss.get("name", ""))])))
    meta += ["pipeline_tag: text-generation", "---", ""]

    sel = results.get("policy_selection")
    which = ""
    if sel and role == "policy":
        which = (f" This is the policy of the best validation by `{sel['monitor']}` ({sel['best']:.4g} at step "
                 f"{sel['best_step']} of {sel['last_step']}); the last weights are in `policy_last/` beside it.")
    elif sel:
        which = f" These are the last weights (step {sel['last_step']}); `policy/` holds the best validation's."
    lines = [f"# {model.get('name', 'policy')}, trained with the `{loss.get('name', '?')}` loss", "",
             f"A translation policy trained with `cpo` (Contrastive Preference Optimization, Xu et al. 2024) from "
             f"`{base}`.{which}", "", "## Model", ""]
    if lora:
        adapter = f"continuing the adapter `{lora.get('adapter')}`" if lora.get("adapter") else "a fresh adapter"
        variants = [v for v, on in (("DoRA", lora.get("use_dora")), ("rsLoRA", lora.get("use_rslora")),
                                    ("QLoRA (4-bit NF4 base)", lora.get("load_in_4bit"))) if on]
        lines += [f"- LoRA adapter ({adapter}): r {lora.get('r')}, alpha {lora.get('alpha')}, dropout "
                  f"{lora.get('dropout')}, target modules {', '.join(map(str, lora.get('target_modules') or []))}"
                  + (f"; {', '.join(variants)}" if variants else "")
                  + (f"; modules trained in full: {', '.join(lora['modules_to_save'])}"
                     if lora.get("modules_to_save") else ""),
                  "- load: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), this_folder)`"]
    else:
        lines += ["- full fine-tuning: `AutoModelForCausalLM.from_pretrained(this_folder)`"]
    precision = (config.get("trainer") or {}).get("precision")
    trainable, total = results.get("trainable_parameters", 0), results.get("total_parameters", 0)
    lines += [f"- base model: `{base}`, dtype {model.get('dtype')}, precision {precision}",
              f"- trainable parameters: {trainable:,} of {total:,}",
              "", "## Training", ""]
    settings = ", ".join(f"{k} {loss[k]}" for k in LOSS_KEYS if k in loss)
    batch = results.get("global_batch") or {}
    lines += [f"- loss `{loss.get('name')}`: {settings}",
              "- optimiser AdamW: " + ", ".join(f"{k} {optim[k]}" for k in ("lr", "weight_decay", "schedule",
                                                                                "warmup_ratio") if k in optim),
              f"- global batch {batch.get('global_batch')} pairs per step, {results.get('global_steps')} optimizer "
              f"steps, seed {results.get('seed')}",
              f"- training pairs {results.get('train_pairs')}, validation pairs {results.get('val_pairs')}"]
    stop = results.get("early_stopping")
    if stop and stop.get("stopped_step") is not None:
        lines.append(f"- stopped early at step {stop['stopped_step']}: `{stop['monitor']}` did not improve for "
                     f"{stop['patience']} validations")
    prov = results.get("provenance") or {}
    lines += ["", "## Data", "", f"- source `{(config.get('data') or {}).get('name')}`; sha256 of every file read:"]
    files = prov.get("data_files") or {}
    lines += [f"  - `{Path(f).name}`: `{h}`" for f, h in files.items()] or ["  - (no data files: generated in memory)"]
    if table:
        lines += ["", "## Held-out results, before and after training", "", table]
    git = prov.get("git") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (prov.get("versions") or {}).items() if v)
    lines += ["", "## Reproduce", "", "```", results.get("command") or command(), "```", "",
              f"cpo commit `{git.get('commit')}`" + (" (with uncommitted changes)" if git.get("dirty") else "")
              + (f"; {versions}" if versions else "") + ". The whole configuration is in the run's `results.json`."]
    return "\n".join(meta + lines) + "\n"


def write_card(folder: str | os.PathLike, text: str) -> Path:
    return atomic_write_text(Path(folder) / CARD, text)


# --------------------------------------------------------------------------- the Hub
_TRUE = {"1", "on", "yes", "true"}


def check_hub_access(cfg) -> None:
    """Refuse ``push_to_hub`` in one sentence before training when the upload could not happen."""
    repo = cfg.get("push_to_hub")
    if not repo:
        return
    if not cfg.get("save_policy", True):
        raise ConfigError(f"push_to_hub={repo} uploads policy/, which save_policy=false does not write; "
                          "set save_policy=true or leave push_to_hub out")
    if not isinstance(repo, str) or repo.count("/") != 1 or repo.startswith("/") or repo.endswith("/"):
        raise ConfigError(f"push_to_hub={repo!r}: give a Hugging Face Hub repository as <owner>/<name>")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        raise Unavailable(f"push_to_hub={repo}: this machine has no hub access (HF_HUB_OFFLINE is set); leave "
                          f"push_to_hub out and upload policy/ later from a machine that has: "
                          f"huggingface-cli upload {repo} <run>/policy")
    from huggingface_hub import get_token

    if not get_token():
        raise Unavailable(f"push_to_hub={repo}: no Hugging Face token (set HF_TOKEN or run huggingface-cli login), "
                          "so nothing could be uploaded; log in first, or leave push_to_hub out")


def push(folder: str | os.PathLike, repo: str, private: bool = True, say=print) -> str:
    """Upload ``folder`` (policy/ with its card) to the model repository ``repo``, created if needed."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model",
                                 commit_message=f"cpo: upload {Path(folder).name}/")
    except Exception as e:  # network, permissions, quota: the run itself is finished and kept
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise Unavailable(f"push_to_hub={repo}: the upload failed ({first}); the run is finished and kept: run the "
                          "same command again to retry the upload (training is skipped)") from None
    url = getattr(info, "commit_url", None) or f"https://huggingface.co/{repo}"
    say(f"uploaded {folder} to {url}")
    return str(url)


def publish(cfg, out_dir: str | os.PathLike, say=print) -> str | None:
    """After a finished (or already finished) run: upload its policy/ when ``push_to_hub`` names a repository."""
    repo = cfg.get("push_to_hub")
    folder = Path(out_dir) / "policy"
    if not repo or not folder.is_dir():
        return None
    return push(folder, str(repo), bool(cfg.get("push_private", True)), say)
