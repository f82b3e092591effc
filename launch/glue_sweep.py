"""GLUE sweep driver, the same as `bipft sweep` (see `bipft_jax/glue/sweep.py`).

    python launch/glue_sweep.py --config configs/glue/sweep_example.py --workdir DIR \
        [--emit-commands | --aggregate-only] [--config.key=value ...]
"""

import sys

from bipft_jax import cli

if __name__ == "__main__":
    sys.exit(cli.main(["sweep", *sys.argv[1:]]))  # user errors: one line, exit 2
