"""Train a translator with CPO (or DPO, SFT and the ablations): `python train.py loss=cpo beta=0.1`."""
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cpo.config import ConfigError
from cpo.io import DataError, Unavailable


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from cpo.training import run

    try:
        run(cfg, HydraConfig.get().runtime.output_dir)
    except (ConfigError, DataError, FileNotFoundError, Unavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
