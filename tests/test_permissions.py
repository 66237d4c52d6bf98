"""Shared folders: every file a run, a sweep, generate, build_preferences, evaluate and compare write gets the
permissions a plain ``open()`` gives under the umask, whoever writes it (the project, transformers, peft,
safetensors, Lightning, W&B, Hydra, matplotlib). One test per app, through its real command line.

safetensors writes through a private 0600 temporary file, so policy/model.safetensors (full fine-tuning) and
policy/adapter_model.safetensors (LoRA) were unreadable to colleagues; W&B's staging copies are 0400 and
``mkdtemp`` folders 0700 (cpo.io.normalize_permissions).
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SMALL_DEMO


def _run(args: list[str], umask: int, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    p = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
                       preexec_fn=lambda: os.umask(umask))
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def unshared(root: Path, umask: int) -> list[str]:
    """Entries under ``root`` that a plain open()/mkdir() under ``umask`` would have made otherwise: missing read
    (search, for folders) bits for group and others, group write missing on a group-shared umask (002), or a
    bit the umask forbids."""
    allowed = 0o777 & ~umask
    bad = []
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        mode = stat.S_IMODE(st.st_mode)
        is_dir = stat.S_ISDIR(st.st_mode)
        want = allowed & (0o055 if is_dir else 0o044)
        if mode & stat.S_IWUSR:
            want |= allowed & 0o022
        if mode & want != want or mode & 0o077 & ~allowed:
            bad.append(f"{path.relative_to(root)} {oct(mode)}")
    return bad


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A LoRA run with W&B (offline) under umask 002, building the demo's assets into a cache of its own."""
    root = tmp_path_factory.mktemp("shared_run")
    out, cache = root / "run", root / "cache"
    _run(["train.py", f"hydra.run.dir={out}", f"cache_dir={cache}", "model=tiny_lora", "trainer.max_steps=2",
          *SMALL_DEMO], umask=0o002)
    return out, cache


def test_a_run_writes_files_others_can_read(trained):
    out, cache = trained
    assert (out / "policy" / "adapter_model.safetensors").is_file() and list((out / "wandb_files").rglob("*.wandb"))
    assert unshared(out, 0o002) == []
    assert unshared(cache, 0o002) == []  # the demo's warm start (model.safetensors) included


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A two-job sweep with full fine-tuning under umask 022."""
    root = tmp_path_factory.mktemp("shared_sweep") / "sweep"
    _run(["train.py", "-m", "seed=1,2", f"hydra.sweep.dir={root}", "hydra.sweep.subdir=${hydra.job.num}",
          "trainer.max_steps=2", "trainer.val_check_interval=2", "evaluate.during_training.max_sentences=8",
          *SMALL_DEMO], umask=0o022)
    return root


@pytest.mark.slow
def test_a_sweep_writes_files_others_can_read(sweep):
    assert len(list(sweep.glob("*/policy/model.safetensors"))) == 2
    assert unshared(sweep, 0o022) == []


@pytest.mark.slow
def test_compare_writes_files_others_can_read(sweep):
    _run(["scripts/compare.py", f"sweep={sweep}", "bootstrap.samples=50"], umask=0o022)
    assert (sweep / "report.md").is_file() and list((sweep / "plots").glob("*.png"))
    assert unshared(sweep, 0o022) == []


@pytest.mark.slow
def test_generate_writes_files_others_can_read(trained, tmp_path):
    from cpo.data.sources import read_test_file

    out, cache = trained
    test = read_test_file(str(next(cache.rglob("test.jsonl"))))
    (tmp_path / "src.zb").write_text("".join(s + "\n" for s in test.sources[:4]))
    _run([str(REPO / "scripts" / "generate.py"), f"model={out / 'policy'}", "input=src.zb", "src_lang=zb",
          "tgt_lang=en", "output=hyps/hyp.en", "num_beams=1", "max_new_tokens=8", f"hydra.run.dir={tmp_path / 'gen'}"],
         umask=0o022, cwd=tmp_path)
    assert (tmp_path / "hyps" / "hyp.en").is_file() and (tmp_path / "gen" / "generate.log").is_file()
    assert unshared(tmp_path / "hyps", 0o022) == unshared(tmp_path / "gen", 0o022) == []


def test_build_preferences_and_evaluate_write_files_others_can_read(tmp_path):
    from cpo.demo import DEFAULT_SYSTEMS, sample_sentences

    sentences = sample_sentences(20, seed=3)
    files = {"src.zb": [s.source for s in sentences], "ref.en": [s.translation for s in sentences]}
    files.update({f"{x.name}.en": x.translate(sentences, seed=3) for x in DEFAULT_SYSTEMS})
    for name, lines in files.items():
        (tmp_path / name).write_text("".join(line + "\n" for line in lines))
    _run([str(REPO / "scripts" / "build_preferences.py"), "input=src.zb", "ref=ref.en", "src_lang=zb", "tgt_lang=en",
          "+systems.strong=strong.en", "+systems.weak=weak.en", "scorer=chrf", "include_ref=false",
          "output=prefs/prefs.jsonl", "progress=false", f"hydra.run.dir={tmp_path / 'build'}"],
         umask=0o022, cwd=tmp_path)
    assert (tmp_path / "prefs" / "prefs.jsonl").is_file() and list((tmp_path / "prefs" / "scorer_cache").iterdir())
    _run([str(REPO / "scripts" / "evaluate.py"), "src=src.zb", "ref=ref.en", "hyp=strong.en", "src_lang=zb",
          "tgt_lang=en", "scorers=[chrf]", "scorer_cache_dir=scores", f"hydra.run.dir={tmp_path / 'eval'}"],
         umask=0o022, cwd=tmp_path)
    assert (tmp_path / "eval" / "metrics.json").is_file() and list((tmp_path / "scores").iterdir())
    for written in ("prefs", "build", "eval", "scores"):  # (pytest makes tmp_path itself 0700)
        assert unshared(tmp_path / written, 0o022) == [], written
