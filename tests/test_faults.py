"""Faults that used to get through, each through the real command line: a fast finite divergence saved as a
success, a held-out collapse reported as a result, refused launches that rewrote a finished folder's record,
tracebacks on a full disk, a folder that cannot be created and a lone surrogate, and data read without a word."""
from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SMALL_DEMO

QUICK = SMALL_DEMO + ["logger=csv", "evaluate.before_after=false", "evaluate.during_training.enabled=false"]
# A JSONL run on the small demo's pairs and warm start (model.name_or_path= is added by the tests).
JSONL = ["data=jsonl", "model=hf", "model.dtype=float32", "logger=csv", "data.batch_size=8",
         "evaluate.max_sentences=16", "evaluate.during_training.enabled=false", "save_policy=false",
         "trainer.max_steps=1"]
# A learning rate that destroys the small demo's model within a few steps while the loss stays finite
# (measured: the preferred side's NLL 5.2 -> 18.6 nats at step 3).
DESTROY = ["optim.lr=0.3", "optim.schedule=constant", "trainer.gradient_clip_val=null"]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "CPO_DEBUG")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    return env


def _app(script: str, args: list[str], cwd: Path = REPO, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=600, **kw)


def _one_sentence(p: subprocess.CompletedProcess, rc: int, *needles: str) -> str:
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert p.returncode == rc, (p.returncode, p.stderr[-3000:])
    assert len(errors) == 1 and "Traceback" not in p.stderr + p.stdout, p.stderr[-3000:]
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def _snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file of a folder (less the lock a run holds while it decides) with its mode and content hash."""
    return {str(p.relative_to(folder)): (p.stat().st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".run.lock")}


@pytest.fixture(scope="module")
def demo(cache_dir):
    """The small demo's assets (built once per session): its warm start and its preference pairs."""
    from cpo.demo.assets import DemoSettings, ensure_demo_assets

    return ensure_demo_assets(cache_dir, DemoSettings(n_train_sources=160, n_val_sources=24, n_test_sources=24,
                                                      warm_start_steps=30, hidden_size=32), progress=lambda m: None)


# ------------------------------------------------------------------------------------- divergence
def test_a_short_run_that_destroys_its_model_fails(tmp_path, demo):
    """8 steps, fewer than the 2 x guard.window (20) the NLL guard needed: it used to exit 0 with a policy."""
    p = _app("train.py", [f"hydra.run.dir={tmp_path}", *QUICK, *DESTROY, "trainer.max_steps=8",
                          "guard.min_chrf_ratio=null"])
    _one_sentence(p, 3, "NLL of the preferred translations rose", "nothing was saved as finished")
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "policy").exists()


@pytest.fixture(scope="module")
def self_referenced(demo, tmp_path_factory):
    """Preference pairs and a test set whose references are the starting policy's own greedy translations, so the
    starting policy scores chrF 100 on it: a model that translates, for the price of the small demo's."""
    from cpo.data.sources import read_test_file
    from cpo.mt.generation import translate
    from cpo.train.models import load_causal_lm, load_tokenizer

    root = tmp_path_factory.mktemp("selfref")
    test = read_test_file(str(demo.test_file))
    model, tok = load_causal_lm(str(demo.model_dir)), load_tokenizer(str(demo.model_dir))
    hyps = translate(model, tok, test.sources[:16], "zb", "en", batch_size=64, num_beams=1, max_new_tokens=32)
    rows = [{"source": s, "reference": h, "src_lang": "zb", "tgt_lang": "en"}
            for s, h in zip(test.sources, hyps) if h.strip()]
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ["data=jsonl", f"data.train_file={demo.train_file}", f"data.test_file={root / 'test.jsonl'}",
            "model=hf", f"model.name_or_path={demo.model_dir}", "model.dtype=float32", "data.batch_size=8",
            "evaluate.num_beams=1", "evaluate.max_new_tokens=32", "evaluate.max_sentences=16",
            "evaluate.during_training.enabled=false", "logger=csv", "guard.max_nll_ratio=null"]


@pytest.mark.slow
def test_a_collapse_against_the_starting_policy_is_a_failed_run(tmp_path, self_referenced):
    """Judged by the held-out numbers the run computes anyway: chrF 100 -> a few points is exit 3, not a result."""
    p = _app("train.py", [f"hydra.run.dir={tmp_path}", *self_referenced, *DESTROY, "trainer.max_steps=4"])
    _one_sentence(p, 3, "training collapsed the policy: held-out chrF fell from 100.00 to", "guard.min_chrf_ratio")
    assert not any((tmp_path / n).exists() for n in ("results.json", "policy", "before_after.md"))
    assert list(tmp_path.glob("failed-*/before_after.md"))  # the evidence is kept aside, not lost


def test_the_collapse_criterion_leaves_normal_runs_and_untrained_starts_alone():
    from cpo.train.guards import Diverged, check_heldout_collapse

    demo_before, demo_after = {"chrf": 89.83, "bleu": 82.0}, {"chrf": 93.46, "bleu": 89.42}  # the README's demo run
    check_heldout_collapse(demo_before, demo_after, 0.5)
    check_heldout_collapse({"chrf": 60.1}, {"chrf": 55.3}, 0.5)  # preference training may cost a few points
    check_heldout_collapse({"chrf": 5.1}, {"chrf": 1.5}, 0.5)  # an untrained start (the tests' small demo): not judged
    check_heldout_collapse(demo_before, {"chrf": 2.1, "bleu": 0.05}, None)  # switched off
    check_heldout_collapse(None, demo_after, 0.5)  # no held-out translations
    with pytest.raises(Diverged, match=r"held-out chrF fell from 89\.83 to 2\.10, BLEU 82\.00 -> 0\.05"):
        check_heldout_collapse(demo_before, {"chrf": 2.1, "bleu": 0.05}, 0.5)


# ------------------------------------------------------------------------------------- refused launches
@pytest.mark.slow
def test_refused_launches_leave_a_finished_folder_as_it_was(tmp_path, demo):
    """Another configuration and a second writer: Hydra's record (.hydra/), the log and every output stay as the
    finished run left them, and compare labels the job by its own record (run.json)."""
    from cpo.report import load_sweep
    from cpo.runs import RunFolder

    out = tmp_path / "run"
    args = [f"hydra.run.dir={out}", *QUICK, "trainer.max_steps=2", "save_policy=false"]
    first = _app("train.py", [*args, "beta=0.1"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / ".hydra" / "overrides.yaml").is_file() and (out / "train.log").is_file()
    before = _snapshot(out)
    other = _app("train.py", [*args, "beta=0.5"])
    _one_sentence(other, 2, "holds a finished run of another configuration", "beta: 0.1 -> 0.5")
    with RunFolder(out):  # a run that is still training there
        busy = _app("train.py", [*args, "beta=0.1", "rerun=true"])
    _one_sentence(busy, 2, "is in use by another run")
    assert _snapshot(out) == before
    (job,) = load_sweep(out)
    assert job.ok and job.overrides["beta"] == "0.1"

    # A folder of an older version, whose .hydra/overrides.yaml a refused launch rewrote (run.json without the
    # overrides): the label comes from what results.json says the run was, not from the refused settings.
    identity = json.loads((out / "run.json").read_text())
    del identity["overrides"]
    (out / "run.json").write_text(json.dumps(identity))
    (out / ".hydra" / "overrides.yaml").write_text("- logger=csv\n- beta=0.5\n")
    (job,) = load_sweep(out)
    assert job.overrides["beta"] == "0.1"


def test_a_failed_evaluate_leaves_a_finished_folder_as_it_was(tmp_path):
    """evaluate.py into a folder holding a finished evaluation: a failed launch changes nothing, a second one is
    refused rather than replacing metrics.json; into a training run's folder its record goes beside Hydra's own."""
    for name, lines in (("src.de", ["Hallo Welt", "Danke"]), ("ref.en", ["Hello world", "Thanks"]),
                        ("hyp.en", ["Hello world", "Thank you"])):
        (tmp_path / name).write_text("".join(x + "\n" for x in lines))
    ev = tmp_path / "eval"
    files = ["src=src.de", "ref=ref.en", "src_lang=de", "tgt_lang=en", "metrics=[bleu,chrf]"]
    ok = _app("scripts/evaluate.py", [*files, "hyp=hyp.en", f"hydra.run.dir={ev}"], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert {p.name for p in ev.iterdir()} == {".hydra", "evaluate.log", "metrics.json", "metrics.md"}
    before = _snapshot(ev)
    failed = _app("scripts/evaluate.py", [*files, "hyp=missing.en", "overwrite=true", f"hydra.run.dir={ev}"],
                  cwd=tmp_path)
    _one_sentence(failed, 2, "missing.en: no such file")
    again = _app("scripts/evaluate.py", [*files, "hyp=hyp.en", f"hydra.run.dir={ev}"], cwd=tmp_path)
    _one_sentence(again, 2, "metrics.json: exists; pass overwrite=true")
    assert _snapshot(ev) == before

    run = tmp_path / "trained"  # a training run's folder, as far as Hydra's record goes
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    name: train\n")
    (run / ".hydra" / "overrides.yaml").write_text("- beta=0.1\n")
    (run / "train.log").write_text("2026-01-01 00:00:00 starting a new run\n")
    kept = _snapshot(run)
    into = _app("scripts/evaluate.py", [*files, "hyp=hyp.en", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert into.returncode == 0, into.stderr[-3000:]
    assert {k: v for k, v in _snapshot(run).items() if k in kept} == kept
    assert (run / ".hydra-evaluate" / "overrides.yaml").is_file() and (run / "evaluate.log").is_file()


# ------------------------------------------------------------------------------------- no traceback
def test_a_run_folder_that_cannot_be_created_is_one_sentence(tmp_path):
    (tmp_path / "afile").write_text("x")
    p = _app("train.py", [f"hydra.run.dir={tmp_path / 'afile' / 'run'}", *QUICK])
    _one_sentence(p, 2, "cannot create or write the run folder", "hydra.run.dir=")


def _file_size_limit(limit: int):
    def apply():  # in the child: writes past `limit` bytes fail with EFBIG, as on a disk that is full
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_a_full_disk_is_one_sentence_and_leaves_nothing_finished(tmp_path, demo):
    """A checkpoint (torch.save) that cannot be written reported itself as a traceback."""
    p = _app("train.py", [f"hydra.run.dir={tmp_path}", *QUICK, "trainer.max_steps=2"],
             preexec_fn=_file_size_limit(200_000))
    _one_sentence(p, 2, "run the same command again")
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "policy").exists()
    assert not list(tmp_path.rglob("*.tmp*"))  # no half-written checkpoint left behind


@pytest.mark.slow
def test_a_lone_surrogate_names_the_file_and_line(tmp_path, demo):
    rows = demo.train_file.read_text().splitlines()[:20]
    bad = json.loads(rows[6])
    rows[6] = json.dumps(bad).replace('"chosen": "', '"chosen": "\\ud83d ', 1)  # half of an emoji, escaped
    data = tmp_path / "prefs.jsonl"
    data.write_text("\n".join(rows) + "\n")
    p = _app("train.py", [f"hydra.run.dir={tmp_path / 'run'}", *JSONL, f"data.train_file={data}",
                          f"model.name_or_path={demo.model_dir}"])
    _one_sentence(p, 2, f"{data}:7: field 'chosen' holds a lone UTF-16 surrogate (\\ud83d)")


# ------------------------------------------------------------------------------------- data messages
@pytest.mark.slow
def test_data_messages_name_the_real_problem(tmp_path, demo):
    """val_size larger than the data was blamed on tokenization; two pairs trained with an empty held-out table."""
    rows = demo.train_file.read_text().splitlines()
    two = tmp_path / "two.jsonl"
    two.write_text("\n".join(rows[:2]) + "\n")
    common = [*JSONL, f"data.train_file={two}", f"model.name_or_path={demo.model_dir}"]
    too_big = _app("train.py", [f"hydra.run.dir={tmp_path / 'a'}", *common, "data.val_size=5"])
    _one_sentence(too_big, 2, "data.val_size=5 holds out 5 source sentence(s), but the data has only 2",
                  "lower data.val_size")
    small = _app("train.py", [f"hydra.run.dir={tmp_path / 'b'}", *common])
    assert small.returncode == 0, small.stderr[-3000:]
    assert "warning: no held-out pairs and no test set, so no before/after table" in small.stdout
    assert "Held-out results" not in small.stdout and not (tmp_path / "b" / "before_after.md").exists()


@pytest.mark.parametrize("row, message", [
    ({"source": "a", "chosen": ["x", "y"], "rejected": "z", "src_lang": "de", "tgt_lang": "en"},
     "field 'chosen' is a list, not a string"),
    ({"source": "a", "prompt": "Translate: a", "chosen": "x", "rejected": "z", "src_lang": "de", "tgt_lang": "en"},
     "the row has both 'source'"),
    ({"prompt": "a", "chosen": [{"role": "assistant", "content": "x"}], "rejected": "z"},
     "is a list of chat messages"),
])
def test_records_name_what_is_wrong(tmp_path, row, message):
    from cpo.data.records import read_preference_jsonl
    from cpo.io import DataError

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"p\.jsonl:1: .*{message}"):
        read_preference_jsonl(path)


def test_a_file_mixing_the_projects_and_trls_rows_is_refused(tmp_path):
    from cpo.data.records import read_preference_jsonl
    from cpo.io import DataError

    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps({"source": "a", "chosen": "x", "rejected": "y", "src_lang": "de", "tgt_lang": "en"})
                    + "\n" + json.dumps({"prompt": "Translate: b", "chosen": "x", "rejected": "y"}) + "\n")
    with pytest.raises(DataError, match=r"mixed\.jsonl:2: a row in TRL standard format after rows in the project's "
                                        r"format \(line 1\)"):
        read_preference_jsonl(path)
