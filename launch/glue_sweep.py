"""GLUE sweep driver, the same as `bipft sweep` (see `bipft_jax/train/sweep.py`).

    python launch/glue_sweep.py --config configs/glue/sweep_example.py --workdir DIR \
        [--emit-commands | --aggregate-only] [--config.key=value ...]
"""

import sys

from bipft_jax.train.sweep import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
