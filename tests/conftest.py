"""Shared fixtures: every test runs offline, with W&B and the demo cache inside a temp folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# A small demo so the suite builds its assets in seconds; the real default is in conf/.
SMALL_DEMO = [
    "data.n_train_sources=160", "data.n_val_sources=24", "data.n_test_sources=24",
    "model.demo.warm_start_steps=30", "model.demo.hidden_size=32", "data.batch_size=8",
    "evaluate.max_sentences=16",
]


@pytest.fixture(scope="session", autouse=True)
def offline_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("env")
    os.environ.update({
        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true", "WANDB_CONSOLE": "off",
        "WANDB_ERROR_REPORTING": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "CPO_CACHE": str(root / "cache"), "WANDB_DIR": str(root / "wandb"), "WANDB_CONFIG_DIR": str(root / "wandb"),
        "WANDB_CACHE_DIR": str(root / "wandb"), "WANDB_DATA_DIR": str(root / "wandb"),
    })
    torch.set_num_threads(1)
    yield root


@pytest.fixture(scope="session")
def cache_dir(offline_env) -> Path:
    return Path(os.environ["CPO_CACHE"])


@pytest.fixture(scope="session")
def tiny_tok_model():
    """A 2-layer, width-32 Llama and a BPE tokenizer trained on a few hundred local sentences."""
    from cpo.train.tiny import build_tiny_llama, train_bpe_tokenizer

    texts = [f"the cat number {i} sees {i * 7} dogs today" for i in range(300)] + [
        "Translate this from German to English:\nGerman: x\nEnglish:"
    ]
    tok = train_bpe_tokenizer(texts, 300)
    model = build_tiny_llama(tok, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    return tok, model


def approx32(expected, rel: float = 1e-5, abs: float = 1e-6):
    """``pytest.approx`` fit for float32 values: a few units in the last place of float32 (eps 1.2e-7), which AMD
    and Intel CPUs (and torch's vectorised kernels) may round differently; pytest's default (rel 1e-6) is 8 units."""
    return pytest.approx(expected, rel=rel, abs=abs)


def compose(overrides: list[str] | None = None, config_name: str = "train"):
    from hydra import compose as hcompose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hcompose(config_name=config_name, overrides=overrides or [])


SHARED_DATA = Path(os.environ.get("CPO_SHARED_DATA", REPO.parent / "shared" / "data"))
WMT22 = SHARED_DATA / "wmt22"


def run_apps(script: str, arg_lists: list[list[str]], cwd: Path):
    """Independent invocations of an app in scripts/, started together; results in the order given."""
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, str(REPO / "scripts" / script), *a], cwd=cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for a in arg_lists]
    out = []
    for a, p in zip(arg_lists, procs):
        stdout, stderr = p.communicate(timeout=300)  # waits, so returncode is set after it
        out.append(subprocess.CompletedProcess(a, p.returncode, stdout, stderr))
    return out
