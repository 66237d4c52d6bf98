"""Train a translator with CPO (or DPO, SFT and the ablations): `python train.py loss=cpo beta=0.1`.

Exit status: 0 finished (or already finished with this configuration); 2 a bad setting or bad input,
said in one sentence; 3 training diverged (nothing is saved as finished); 128 + N stopped by signal N
after saving a checkpoint (the message gives the command that resumes it). TRL's option names
(`learning_rate=1e-4`, `loss_type=simpo`, ...) are read as this project's keys, with a note (cpo.train.aliases).
"""
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cpo.cli import run_app
from cpo.console import quiet_libraries

ALIAS_NOTES: list[str] = []


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    quiet_libraries()  # before the libraries below print their import-time warnings
    from cpo.cli import fail, one_sentence_errors
    from cpo.console import say
    from cpo.train.guards import Diverged
    from cpo.runs import RunInterrupted
    from cpo.train.run import run

    from lightning.fabric.utilities.exceptions import MisconfigurationException

    for note in ALIAS_NOTES:
        say(note)
    try:
        # The run accepts its folder (writes Hydra's record and its log there) once it has decided to train in it.
        one_sentence_errors(run, accept="app")(cfg, HydraConfig.get().runtime.output_dir)
    except MisconfigurationException as e:  # a trainer.* setting Lightning refuses
        fail(f"a trainer setting is refused by Lightning: {str(e).strip().splitlines()[0]} "
             "(see conf/train.yaml, trainer:)")
    except Diverged as e:
        fail(f"{e}; nothing was saved as finished (lower optim.lr or check the data, then rerun=true)", code=3)
    except RunInterrupted as e:
        from hydra.types import RunMode

        from cpo.console import note_in_log_file
        from cpo.train.sigterm import resume_command

        hc = HydraConfig.get()
        e.resume = resume_command(sys.argv, hc.runtime.output_dir,
                                  hc.sweep.dir if hc.mode == RunMode.MULTIRUN else None)
        print(f"error: {e}", file=sys.stderr, flush=True)
        note_in_log_file(f"error: {e}")
        raise


def rewrite_trl_aliases() -> None:
    """TRL's option names on the command line become this project's keys before Hydra reads them."""
    from cpo.cli import fail
    from cpo.errors import ConfigError
    from cpo.train.aliases import rewrite
    from cpo.train.keys import top_level_keys

    try:
        done = rewrite(sys.argv[1:], top_level_keys(Path(__file__).resolve().parent / "conf"))
    except ConfigError as e:
        fail(str(e))
    sys.argv[1:] = done.argv
    ALIAS_NOTES[:] = done.notes


if __name__ == "__main__":
    rewrite_trl_aliases()
    run_app(main)
