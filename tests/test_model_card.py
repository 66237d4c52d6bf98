"""The model card in policy/ and push_to_hub (the upload replaced at its boundary, HfApi, and nowhere else)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SMALL_DEMO, compose
from cpo.errors import ConfigError
from cpo.io import Unavailable
from cpo.train.run import run

SHORT = SMALL_DEMO + ["model=tiny_lora", "trainer.max_steps=2", "logger=none"]


def test_the_policy_carries_a_model_card(tmp_path):
    res = run(compose(SHORT), tmp_path)
    card = (tmp_path / "policy" / "README.md").read_text()
    meta = card.split("---")[1]
    assert "library_name: peft" in meta and meta.count("- cpo") == 1 and "base_model" not in meta  # a local base
    assert "- en" in meta and "- zb" not in meta  # ISO codes only
    assert f"from `{res['start_model']}`" in card
    assert "- LoRA adapter (a fresh adapter): r 8, alpha 16, dropout 0.0, target modules q_proj, k_proj" in card
    assert "- loss `cpo`: kind sigmoid, beta 0.1, alpha 1.0, label_smoothing 0.0" in card
    assert "- optimiser AdamW: lr 0.0001, weight_decay 0.01, schedule inverse_sqrt" in card
    assert f"{res['global_steps']} optimizer steps, seed 42" in card
    files = res["provenance"]["data_files"]
    assert files and all(f"`{Path(f).name}`: `{h}`" in card for f, h in files.items())
    assert (tmp_path / "before_after.md").read_text().strip() in card  # the before/after table, as the run wrote it
    assert res["provenance"]["git"]["commit"] in card and "cpo.train.run.run(cfg, out_dir) called as a library" in card


def test_the_card_names_the_command_that_ran(tmp_path):
    p = subprocess.run([sys.executable, "train.py", *SHORT, "evaluate.before_after=false", "loss=dpo",
                        f"hydra.run.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    card = (tmp_path / "policy" / "README.md").read_text()
    assert "```\npython train.py data.n_train_sources=160 " in card and " loss=dpo hydra.run.dir=" not in card
    assert "loss=dpo" in card and "reference auto" in card
    assert json.loads((tmp_path / "results.json").read_text())["command"].startswith("python train.py ")


class _Calls(list):
    fail = False


@pytest.fixture
def hub(monkeypatch):
    """Hub access as a machine with a token has it; HfApi's two network calls recorded instead of made."""
    from huggingface_hub import HfApi

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    calls = _Calls()

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        calls.append(("upload_folder", repo_id, {**kw, "files": sorted(p.name for p in Path(folder_path).iterdir())}))
        if calls.fail:
            raise OSError("Connection refused")
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_uploads_the_policy_with_its_card(hub, tmp_path, capsys):
    res = run(compose(SHORT + ["push_to_hub=me/alma-cpo"]), tmp_path)
    (_, repo, kw), (_, repo2, up) = hub
    assert repo == repo2 == "me/alma-cpo" and kw["private"] is True and kw["exist_ok"] is True
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= set(up["files"])
    assert "uploaded" in capsys.readouterr().out and res["policy_dir"]
    # The same command again: training is skipped (finished), the upload is made again (e.g. after a failed one).
    hub.clear()
    run(compose(SHORT + ["push_to_hub=me/alma-cpo", "push_private=false"]), tmp_path)
    assert [c[0] for c in hub] == ["create_repo", "upload_folder"] and hub[0][2]["private"] is False
    assert "already finished" in capsys.readouterr().out


def test_a_failed_upload_keeps_the_finished_run(hub, tmp_path):
    hub.fail = True
    with pytest.raises(Unavailable, match=r"push_to_hub=me/x: the upload failed \(Connection refused\); the run is "
                                          r"finished and kept: run the same command again"):
        run(compose(SHORT + ["push_to_hub=me/x"]), tmp_path)
    assert (tmp_path / "results.json").is_file() and (tmp_path / "policy" / "README.md").is_file()


@pytest.mark.slow
def test_push_to_hub_is_refused_before_training_without_hub_access(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    # HF_HUB_OFFLINE=1 (this suite's setting): refused in one sentence, from the command line, before anything runs.
    p = subprocess.run([sys.executable, "train.py", *SHORT, "push_to_hub=me/alma-cpo", f"hydra.run.dir={tmp_path}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.startswith("error: push_to_hub=me/alma-cpo: this machine has no hub "
                                                     "access (HF_HUB_OFFLINE is set)"), p.stderr[-2000:]
    assert "Traceback" not in p.stderr and not (tmp_path / "run.json").exists()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(Unavailable, match="no Hugging Face token"):
        run(compose(SHORT + ["push_to_hub=me/x"]), tmp_path / "b")
    with pytest.raises(ConfigError, match="give a Hugging Face Hub repository as <owner>/<name>"):
        run(compose(SHORT + ["push_to_hub=alma-cpo"]), tmp_path / "c")
    with pytest.raises(ConfigError, match="save_policy=false does not write"):
        run(compose(SHORT + ["push_to_hub=me/x", "save_policy=false"]), tmp_path / "d")
    assert not any((tmp_path / d / "run.json").exists() for d in "bcd")
