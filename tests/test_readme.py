"""The README is true: its measured blocks are rendered from the result files in docs/results/, and the checker
(scripts/check_readme.py) flags a figure that no longer matches its record or a fresh run."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

from conftest import REPO
from cpo.report import readme


def test_every_measured_block_of_the_readme_matches_its_result_file():
    assert readme.check(REPO) == []
    assert set(readme.blocks_in((REPO / "README.md").read_text(encoding="utf-8"))) == set(readme.BLOCKS)


def test_the_checker_flags_a_figure_that_no_longer_matches(tmp_path):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    stale = tmp_path / "README.md"
    bleu = next(line for line in text.splitlines() if line.startswith("| bleu | "))  # the demo's BLEU row
    after = bleu.split(" | ")[2]
    changed = bleu.replace(f" {after} ", f" {float(after) + 0.01:.2f} ", 1)  # one figure of the after column
    interval = next(line for line in text.splitlines() if line.startswith("| CPO ") and " [" in line)
    figure = interval.split(" | ")[2].split(" ")[0]  # loss_ablation: a mean of the baseline's row
    stale.write_text(text.replace(bleu, changed, 1)
                     .replace(interval, interval.replace(f" {figure} [", f" {float(figure) + 0.01:.2f} [", 1), 1),
                     encoding="utf-8")
    problems = readme.check(REPO, stale)
    assert len(problems) == 2 and "'demo' differs from docs/results/demo/demo_run.json" in problems[0]
    assert f"-{changed}" in problems[0] and "'loss_ablation'" in problems[1]
    p = subprocess.run([sys.executable, "scripts/check_readme.py", f"--readme={stale}"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "README block 'demo' differs" in p.stdout, p.stdout + p.stderr
    p = subprocess.run([sys.executable, "scripts/check_readme.py", f"--readme={stale}", "--write"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and stale.read_text(encoding="utf-8") == text, p.stdout + p.stderr


def test_the_demo_block_is_the_runs_own_table_and_a_rerun_is_compared_figure_by_figure():
    from cpo.train.heldout import before_after_table

    before = {"pref_accuracy": 0.61, "bleu": 82.123456, "ter": 9.0, "pairs": 97, "sentences": 200,
              "bleu_signature": "x"}
    after = {"pref_accuracy": 0.73, "bleu": 89.42, "ter": 4.5, "pairs": 97, "sentences": 200, "bleu_signature": "x"}
    assert "\n".join(readme.before_after_rows(before, after)) == before_after_table(before, after)

    import importlib.util

    spec = importlib.util.spec_from_file_location("check_readme", REPO / "scripts" / "check_readme.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    old = json.loads((REPO / readme.DEMO_RECORD).read_text(encoding="utf-8"))
    assert script.compare_demo(old, copy.deepcopy(old), 1.5) == []
    new = copy.deepcopy(old)
    new["results"]["after"]["bleu"] -= 1.01  # what the issue saw: 89.42 in the README, 88.41 from the command
    new["results"]["train_pairs"] += 6
    new["measured"]["wall_seconds"] *= 1.3   # timings vary: within the tolerance
    flagged = script.compare_demo(old, new, 1.5)
    pairs = old["results"]["train_pairs"]
    assert flagged[0] == f"train_pairs: README {pairs} -> run {pairs + 6}"
    bleu = next(r for r in readme.before_after_rows(old["results"]["before"], old["results"]["after"])
                if r.startswith("| bleu | "))
    assert len(flagged) == 2 and flagged[1].startswith(f"table: README {bleu} -> run | bleu |"), flagged
