"""Is the README true? Its measured figures against the result files they come from, or against a fresh run.

    python scripts/check_readme.py                       # every measured block vs its result file (the suite's)
    python scripts/check_readme.py --write               # rewrite the blocks from the result files
    python scripts/check_readme.py --rerun demo          # run `python train.py` from an empty cache, compare
    python scripts/check_readme.py --rerun demo --write  # ... record the run in docs/results/demo/, rewrite README

A measured block sits between ``<!-- measured: <name> (...) -->`` and ``<!-- end measured: <name> -->`` and is
rendered by ``cpo.report.readme.BLOCKS`` from files under ``docs/results/``. The demo's run is rerun here; the
protocol tables come from ``scripts/compare.py``'s report files (re-run the sweep and compare.py into
``docs/results/<experiment>/``, then ``--write``). Exit status: 0 the README matches, 1 it does not (each
difference is printed), 2 a bad argument.

Timings and memory are compared with a tolerance (``--time-tolerance``, a factor): they vary from run to run and
machine to machine; every other figure of the demo must match exactly. On one kind of CPU the demo is
bit-identical from run to run and for 1 or 2 threads (measured: the warm start's weights, the preference pairs,
the test translations and logits); another kind of CPU (another generation, AVX-512) picks other MKL/ATen kernels
and may end with other figures, so the record names the CPU it was measured on.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cpo.report import readme

REPO = readme.REPO

_READY = re.compile(r"\[demo\] .* ready in ([0-9.]+)s")


def run_demo(command: list[str], work: Path) -> dict:
    """Run the demo's command from an empty cache into ``work``; its record (cpo.report.readme.demo_record_from_run)."""
    run_dir, cache = work / "run", work / "cache"
    args = [sys.executable, "train.py", *command, f"hydra.run.dir={run_dir}", f"cache_dir={cache}"]
    print(f"[check_readme] running {' '.join(['python', 'train.py', *command])} from an empty cache ({work})",
          flush=True)
    t0 = time.monotonic()
    p = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
        raise SystemExit(f"error: the demo's command failed with status {p.returncode}")
    build = sum(float(x) for x in _READY.findall(p.stdout))
    rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 / 1024  # KiB on Linux
    return readme.demo_record_from_run(run_dir, " ".join(["python", "train.py", *command]), wall, build, rss_gb,
                                       os.cpu_count() or 1)


def compare_demo(old: dict, new: dict, tolerance: float) -> list[str]:
    """The figures of a fresh run that differ from the recorded ones (exactly; timings and memory by a factor)."""
    out = []
    o, n = old["results"], new["results"]
    for key in ("global_steps", "train_pairs", "val_pairs"):
        if o.get(key) != n.get(key):
            out.append(f"{key}: README {o.get(key)} -> run {n.get(key)}")
    old_rows = readme.before_after_rows(o["before"], o["after"], old.get("change"))
    new_rows = readme.before_after_rows(n["before"], n["after"], new.get("change"))
    for a, b in zip(old_rows, new_rows):
        if a != b:
            out.append(f"table: README {a} -> run {b}")
    if len(old_rows) != len(new_rows):
        out.append(f"table: README has {len(old_rows) - 2} metrics, the run {len(new_rows) - 2}")
    if out and old["measured"].get("cpu") != new["measured"].get("cpu"):
        out.append(f"note: the record was measured on {old['measured'].get('cpu') or 'a CPU it does not name'}, this "
                   f"run on {new['measured'].get('cpu')}; another kind of CPU rounds differently (the demo is "
                   "bit-identical across runs and thread counts on one kind)")
    for key in ("wall_seconds", "asset_build_seconds", "peak_rss_gb"):
        a, b = float(old["measured"][key]), float(new["measured"][key])
        if min(a, b) <= 0 or max(a, b) / min(a, b) > tolerance:
            out.append(f"{key}: README {a} -> run {b} (more than a factor {tolerance} apart)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite the README's measured blocks (and, with --rerun, "
                                                         "the result file)")
    ap.add_argument("--rerun", choices=["demo"], help="run the block's command again and compare its figures")
    ap.add_argument("--time-tolerance", type=float, default=1.5, help="factor within which timings and memory match")
    ap.add_argument("--work", type=Path, help="folder for the rerun (default: a new temporary folder)")
    ap.add_argument("--readme", type=Path, default=REPO / "README.md")
    ns = ap.parse_args(argv)

    if ns.rerun == "demo":
        record_path = REPO / readme.DEMO_RECORD
        old = json.loads(record_path.read_text(encoding="utf-8"))
        work = ns.work or Path(tempfile.mkdtemp(prefix="cpo-readme-"))
        new = run_demo([], work)
        differences = compare_demo(old, new, ns.time_tolerance)
        for line in differences:
            print(f"[check_readme] demo: {line}")
        if ns.write:
            from cpo.io import atomic_write_json

            atomic_write_json(record_path, new)
            print(f"[check_readme] recorded the run in {record_path.relative_to(REPO)}")
        elif differences:
            print("[check_readme] the README's demo figures are not what `python train.py` gives now: "
                  "`python scripts/check_readme.py --rerun demo --write` records this run and rewrites them")
            return 1
        else:
            print("[check_readme] demo: the README's figures match the run")
    if ns.write:
        changed = readme.write(REPO, ns.readme)
        print(f"[check_readme] rewrote {', '.join(changed)}" if changed else "[check_readme] README already current")
    problems = readme.check(REPO, ns.readme)
    for p in problems:
        print(f"[check_readme] {p}")
    if not problems:
        print(f"[check_readme] every measured block of {ns.readme.name} matches its result file "
              f"({', '.join(readme.BLOCKS)})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
