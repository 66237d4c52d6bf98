"""Every pipeline app speaks in one sentence: an expected error prints one ``error: ...`` line on stderr naming
the file, line or key, exits 2, and shows no traceback (``CPO_DEBUG=1`` shows it).

Each case runs the app's real command line (argv -> Hydra -> the app's main) in its own process. To keep
that fast, one driver process per app imports the app once (torch included) and forks a child per case;
``test_real_entry_points`` starts each script the ordinary way as well.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

DRIVER = r"""
import importlib.util, json, os, sys
cases = json.loads(open(sys.argv[1]).read())
for heavy in ("torch", "cpo.train.models", "cpo.mt.generation", "cpo.data"):  # imported once here, not in every child
    importlib.import_module(heavy)
apps = {}


def load(script):
    if script not in apps:
        spec = importlib.util.spec_from_file_location(f"_app_{len(apps)}", script)
        app = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = app
        spec.loader.exec_module(app)
        task = app.main
        while hasattr(task, "__wrapped__"):
            task = task.__wrapped__
        task.__module__ = "__main__"  # Hydra finds conf/ next to the script, as when the script is run
        apps[script] = app
    return apps[script]


codes = []
for case in cases:
    app = load(case["script"])
    pid = os.fork()
    if pid == 0:
        for fd, name in ((1, case["stdout"]), (2, case["stderr"])):
            os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        os.chdir(case["cwd"])
        args = case["args"]
        if hasattr(app, "rewrite_model_argument"):
            args = app.rewrite_model_argument(args)
        sys.argv = [case["script"], *args]
        code = 0
        try:
            app.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 99
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(codes))
"""


def run_cases(cases: list[tuple[str, list[str]]], cwd: Path, tmp: Path) -> list[subprocess.CompletedProcess]:
    """Run each (script, args) case in a child of one driver process; results in order, with stdout/stderr."""
    tmp.mkdir(parents=True, exist_ok=True)
    specs = [{"script": str(REPO / "scripts" / script), "args": [*args, f"hydra.run.dir={tmp / f'run{i}'}"],
              "cwd": str(cwd), "stdout": str(tmp / f"{i}.out"), "stderr": str(tmp / f"{i}.err")}
             for i, (script, args) in enumerate(cases)]
    (tmp / "cases.json").write_text(json.dumps(specs))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp / "cases.json")], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    return [subprocess.CompletedProcess(c["args"], code, Path(c["stdout"]).read_text(), Path(c["stderr"]).read_text())
            for c, code in zip(specs, codes)]


def assert_one_sentence(proc: subprocess.CompletedProcess, *fragments: str, absent: tuple[str, ...] = ()) -> str:
    """rc 2, no traceback, exactly one 'error:' line (the last line of stderr) holding every fragment."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    context = f"args {proc.args}\nstderr:\n{proc.stderr[-2000:]}"
    assert proc.returncode == 2, context
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, context
    assert len(errors) == 1 and proc.stderr.rstrip().splitlines()[-1] == errors[0], context
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    for fragment in absent:
        assert fragment not in errors[0], f"{fragment!r} in {errors[0]!r}"
    return errors[0]


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("apps")
    _write(root / "src.de", ["Hallo Welt", "Guten Tag", "Danke"])
    _write(root / "ref.en", ["Hello world", "Good day", "Thanks"])
    _write(root / "a.en", ["Hello world", "Good morning", "Thank you"])
    _write(root / "b.en", ["Hi world", "Good day", "Thanks a lot"])
    (root / "folder").mkdir()
    _write(root / "taken.jsonl", ["{}"])
    _write(root / "plainfile", ["x"])
    (root / "dup.json").write_text('[{"translation": {"de": "Hallo", "en": "Hello"}},\n'
                                   ' {"translation": {"de": "Tag", "de": "Tag!", "en": "Day"}}]\n', encoding="utf-8")
    (root / "de-en.jsonl").write_text('{"translation": {"language_pair": "de-en", "de": "a", "en": "b", "en": "c"}}\n')
    (root / "notamodel").mkdir()
    (root / "fakemodel").mkdir()
    (root / "fakemodel" / "config.json").write_text("{}")
    # a chrF score cache holding a NaN: the build must stop naming this file
    from cpo.scoring import build_scorer

    cache = build_scorer("chrf", cache_dir=root / "nan_cache")
    cache.path.parent.mkdir(parents=True)
    nan = float("nan")  # a line that passes its checksum (cpo.scoring.cache): only its score is wrong
    cache.path.write_text(json.dumps({"identity": cache.identity}) + "\n"
                          + json.dumps({"k": "x", "s": nan, "id": cache.identity_hash, "c": cache.check("x", nan)})
                          + "\n")
    return root


BUILD = ["input=src.de", "ref=ref.en", "src_lang=de", "tgt_lang=en", "scorer=chrf", "include_ref=false",
         "progress=false"]
TWO = ["+systems.a=a.en", "+systems.b=b.en"]
GEN = ["input=src.de", "src_lang=de", "tgt_lang=en"]
CASES = {
    "build_preferences.py": [
        ["input=folder", *BUILD[1:], *TWO, "output=o1.jsonl"],
        [*BUILD, *TWO, "output=folder"],
        [*BUILD, *TWO, "output=taken.jsonl"],
        [*BUILD, *TWO, "output=plainfile/o.jsonl"],
        [*BUILD, "systems={a: a.en, a: b.en}", "output=o2.jsonl"],
        [*BUILD, *TWO, "output=o3.jsonl", "scorer_cache_dir=nan_cache"],
        [*BUILD, "+systems.a=a.en", "+systems.b=missing.en", "output=o4.jsonl"],
        ["input=dup.json", "src_lang=de", "tgt_lang=en", "scorer=chrf", "include_ref=false", *TWO, "output=o5.jsonl"],
        [*BUILD, *TWO, "output=o6.jsonl", "negatives=fake"],
        [*BUILD, *TWO, "output=o7.jsonl", "noise.drop_prob=2"],
        [*BUILD, "+systems.a=a.en", "+systems.b=a.en", "output=o8.jsonl"],
    ],
    "generate.py": [
        ["model=./nowhere", *GEN, "output=folder"],
        ["model=./nowhere", *GEN, "output=plainfile/hyp.en"],
        ["model=./nowhere", *GEN, "output=taken.jsonl"],
        ["model=./nowhere", "input=folder", "src_lang=de", "tgt_lang=en", "output=h1.en"],
        ["model=./nowhere", *GEN, "output=h2.en"],
        ["model=notamodel", *GEN, "output=h3.en"],
        ["model=plainfile", *GEN, "output=h4.en"],
        ["model=fakemodel", "wmt22.root=."],
        ["model=fakemodel", *GEN, "output=h5.en", "max_prompt_length=0"],
        ["model=fakemodel", *GEN, "output=h6.en", "device=cuda"],
        ["model=fakemodel", "+directions.de-en.input=src.de", "+directions.de-xx.input=src.de", "output_dir=outs"],
    ],
    "convert_alma_r.py": [
        ["source=nothere", "output=c1.jsonl"],
        ["source=de-en.jsonl", "output=folder"],
        ["source=de-en.jsonl", "output=c2.jsonl"],
        ["source=de-en.jsonl", "output=c3.jsonl", "score_field=bleu"],
        ["source=de-en.jsonl", "output=c4.jsonl", "pairs=[de-fr]"],
        ["source=folder", "output=c5.jsonl"],
    ],
}


@pytest.fixture(scope="module")
def results(files, tmp_path_factory) -> dict[str, list[subprocess.CompletedProcess]]:
    """Every case of every app, run once through one driver (one torch import for all of them)."""
    flat = [(script, args) for script, cases in CASES.items() for args in cases]
    procs = run_cases(flat, files, tmp_path_factory.mktemp("app_runs"))
    out: dict[str, list[subprocess.CompletedProcess]] = {}
    for (script, _), proc in zip(flat, procs):
        out.setdefault(script, []).append(proc)
    return out


def test_build_preferences_errors(files, results):
    f, procs = files, results["build_preferences.py"]
    assert_one_sentence(procs[0], f"input={f / 'folder'}: is a directory, not a file")
    assert_one_sentence(procs[1], f"output={f / 'folder'}: is a directory", absent=("exists",))
    assert_one_sentence(procs[2], "taken.jsonl: exists; pass overwrite=true")
    assert_one_sentence(procs[3], f"{f / 'plainfile'} is a file, not a folder")
    assert_one_sentence(procs[4], "systems: the key 'a' is given twice")
    assert_one_sentence(procs[5], str(f / "nan_cache"), ":2:", "not a finite number")
    assert_one_sentence(procs[6], f"systems.b={f / 'missing.en'}: no such file")
    assert_one_sentence(procs[7], f"{f / 'dup.json'}:2 (row 2): the key 'de' appears twice")
    assert_one_sentence(procs[8], "negatives must be one of real, noised")
    assert_one_sentence(procs[9], "noise.drop_prob must be in [0, 1]")
    assert_one_sentence(procs[10], "no preference pair was kept", "nothing was written")
    assert not [p for p in f.glob("o*.jsonl")]  # nothing finished-looking is left behind


def test_generate_errors(files, results):
    import torch

    f, procs = files, results["generate.py"]
    # output problems are found before the (missing) model is even looked at
    assert_one_sentence(procs[0], f"output={f / 'folder'}: is a directory", absent=("exists", "nowhere"))
    assert_one_sentence(procs[1], f"{f / 'plainfile'} is a file, not a folder")
    assert_one_sentence(procs[2], "taken.jsonl: exists; pass overwrite=true")
    assert_one_sentence(procs[3], f"input={f / 'folder'}: is a directory, not a file")
    assert_one_sentence(procs[4], "model=./nowhere:", "does not exist")
    assert_one_sentence(procs[5], "model=notamodel:", "holds neither config.json nor adapter_config.json")
    assert_one_sentence(procs[6], "model=plainfile:", "is a file, not a model folder")
    assert_one_sentence(procs[7], "give output_dir=")
    assert_one_sentence(procs[8], "max_prompt_length=0 must be a positive integer")
    if not torch.cuda.is_available():
        assert_one_sentence(procs[9], "device=cuda, but no CUDA device is available")
    assert_one_sentence(procs[10], "directions: unknown language code 'xx'")
    assert not [p for p in f.glob("h*.en")] and not (f / "outs").exists()


def test_convert_alma_r_errors(files, results):
    f, procs = files, results["convert_alma_r.py"]
    assert_one_sentence(procs[0], f"source={f / 'nothere'}", "does not exist")
    assert_one_sentence(procs[1], f"output={f / 'folder'}: is a directory", absent=("exists",))
    assert_one_sentence(procs[2], f"{f / 'de-en.jsonl'}:1: the key 'en' appears twice")
    assert_one_sentence(procs[3], "score_field must be one of kiwi, xcomet, kiwi_xcomet")
    assert_one_sentence(procs[4], "pairs: de-fr")
    assert_one_sentence(procs[5], f"source={f / 'folder'}: no files named like")
    assert not [p for p in f.glob("c*.jsonl")]


def test_real_entry_points(files, tmp_path):
    """The scripts as users start them (generate's model= rewriting included); CPO_DEBUG=1 adds the traceback."""
    f = files
    runs = [
        ("build_preferences.py", ["input=folder", *BUILD[1:], "+systems.a=a.en", "output=x.jsonl"], True),
        ("generate.py", ["model=./nowhere", "input=src.de", "src_lang=de", "tgt_lang=en", "output=folder"], False),
    ]  # convert_alma_r.py's own entry point runs in tests/test_preferences.py::test_convert_alma_r
    procs = []
    for i, (script, args, debug) in enumerate(runs):
        env = {k: v for k, v in os.environ.items() if k != "CPO_DEBUG"} | ({"CPO_DEBUG": "1"} if debug else {})
        procs.append(subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / script), *args, f"hydra.run.dir={tmp_path / f'r{i}'}"],
            cwd=f, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for (script, args, _), p in zip(runs, procs):
        out, err = p.communicate(timeout=300)
        results.append(subprocess.CompletedProcess([script, *args], p.returncode, out, err))
    debug = results[0]
    assert debug.returncode == 2 and "Traceback" in debug.stderr, debug.stderr[-2000:]
    assert debug.stderr.rstrip().splitlines()[-1] == f"error: input={f / 'folder'}: is a directory, not a file"
    assert_one_sentence(results[1], "is a directory", absent=("exists",))


@pytest.mark.slow
def test_hydra_refusals_of_the_command_line_are_one_sentence(tmp_path):
    """An unknown option or key and a malformed override, refused by Hydra before any app code runs."""
    cases = [
        (REPO / "train.py", ["loss=cpoo"], ("Could not find 'loss/cpoo'", "available options in 'loss': arpo, cpo,")),
        (REPO / "train.py", ["optim.lrr=1"], ("Could not override 'optim.lrr'", "use +optim.lrr=1")),
        (REPO / "scripts" / "compare.py", ["sweeep=x"], ("Could not override 'sweeep'",)),
        (REPO / "scripts" / "generate.py", ["num_beams=[5"], ("num_beams=[5: no viable alternative",)),
        (REPO / "scripts" / "evaluate.py", ["scorer=nosuch"], ("Could not override 'scorer'", "+scorer=nosuch")),
        (REPO / "scripts" / "build_preferences.py", ["+x=1", "+x=2"], ("x",)),
        (REPO / "scripts" / "convert_alma_r.py", ["nosuch=1"], ("Could not override 'nosuch'",)),
        (REPO / "train.py", ["loss=cpoo", "--env", "HYDRA_FULL_ERROR=1"], None),  # the user asked for the trace
    ]
    procs = []
    for i, (script, args, _) in enumerate(cases):
        env = {k: v for k, v in os.environ.items() if k not in ("CPO_DEBUG", "HYDRA_FULL_ERROR")}
        if "--env" in args:
            k, v = args[args.index("--env") + 1].split("=")
            env[k], args = v, args[:args.index("--env")]
        procs.append(subprocess.Popen([sys.executable, str(script), *args, f"hydra.run.dir={tmp_path / str(i)}"],
                                      cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for (script, args, fragments), p in zip(cases, procs):
        out, err = p.communicate(timeout=300)
        proc = subprocess.CompletedProcess([script.name, *args], p.returncode, out, err)
        if fragments is None:
            assert p.returncode == 1 and "Traceback" in err and "Could not find 'loss/cpoo'" in err, err[-2000:]
            continue
        line = assert_one_sentence(proc, *fragments, absent=("provider=", "\t"))
        assert len(line) < 400, line
    assert not any(tmp_path.glob("*/train.log"))  # refused before a run folder was written to
