"""Train a translator with CPO (or DPO, SFT and the ablations): `python train.py loss=cpo beta=0.1`.

Exit status: 0 finished (or already finished with this configuration); 2 a bad setting or bad input,
said in one sentence; 3 training diverged (nothing is saved as finished); 128 + N stopped by signal N
after saving a checkpoint (run the same command again to resume).
"""
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cpo.cli import run_app
from cpo.console import quiet_libraries


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    quiet_libraries()  # before the libraries below print their import-time warnings
    from cpo.cli import fail, one_sentence_errors
    from cpo.train.guards import Diverged
    from cpo.runs import RunInterrupted
    from cpo.train.run import run

    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        # The run accepts its folder (writes Hydra's record and its log there) once it has decided to train in it.
        one_sentence_errors(run, accept="app")(cfg, HydraConfig.get().runtime.output_dir)
    except MisconfigurationException as e:  # a trainer.* setting Lightning refuses
        fail(f"a trainer setting is refused by Lightning: {str(e).strip().splitlines()[0]} "
             "(see conf/train.yaml, trainer:)")
    except Diverged as e:
        fail(f"{e}; nothing was saved as finished (lower optim.lr or check the data, then rerun=true)", code=3)
    except RunInterrupted as e:
        from cpo.console import note_in_log_file

        print(f"error: {e}", file=sys.stderr, flush=True)
        note_in_log_file(f"error: {e}")
        raise


if __name__ == "__main__":
    run_app(main)
