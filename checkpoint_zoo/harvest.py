"""Harvest a checkpoint zoo; the same as `gpt-params harvest`.

python checkpoint_zoo/harvest.py --task mnist-mlp --runs 5000 --ckpts-per-run 50 --out data/mnist-mlp.h5
accelerate launch --num_processes 4 checkpoint_zoo/harvest.py --task cartpole --runs 500 --out data/cartpole.h5
gpt-params zoo merge data/cartpole.shard*of4.h5 --out data/cartpole-merged.h5
"""

import sys

from gpt_params.cli import main as cli_main


def main() -> int:
    return cli_main(["harvest", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
