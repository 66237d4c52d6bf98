"""Self-improving rounds as one command: sample -> score -> pairs -> train -> evaluate, per round (conf/rounds.yaml).

    python scripts/rounds.py                                   # the demo: 3 rounds of on-policy CPO
    python scripts/rounds.py loss=dpo train.optim.lr=3e-4      # iterative DPO (reference: the previous round)
    python scripts/rounds.py pool=offline                      # the offline baseline on the same schedule

Exit status: 0 finished (finished stages reused); 2 a bad setting, bad input or a changed setting refused
naming the keys (one sentence); 3 a round's training diverged; 128 + N stopped by signal N (run the same
command again to resume at the stage it was in). The logic is cpo.rounds.
"""
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cpo.cli import run_app
from cpo.console import quiet_libraries


@hydra.main(config_path="../conf", config_name="rounds", version_base="1.3")
def main(cfg: DictConfig) -> None:
    quiet_libraries()
    from cpo.cli import fail, one_sentence_errors
    from cpo.rounds.run import RoundsRun, StageInterrupted
    from cpo.runs import RunInterrupted
    from cpo.train.guards import Diverged

    hc = HydraConfig.get()

    def go():
        return RoundsRun(cfg, hc.runtime.output_dir, list(hc.overrides.task)).execute()

    try:
        summary = one_sentence_errors(go)()
    except Diverged as e:
        fail(f"{e}; nothing was saved as finished (lower train.optim.lr, then rerun=true)", code=3)
    except (RunInterrupted, StageInterrupted) as e:
        from cpo.console import note_in_log_file

        print(f"error: {e}", file=sys.stderr, flush=True)
        note_in_log_file(f"error: {e}")
        raise
    print(f"{len(summary['rounds'])} round(s) finished in {hc.runtime.output_dir} (summary.md, rounds.json)")


if __name__ == "__main__":
    run_app(main)
