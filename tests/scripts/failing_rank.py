"""train.py with one rank failing part-way, for the fault tests: the other rank must not hang.

Usage: FAIL_RANK=1 FAIL_STEP=3 FAIL_KIND=user|bug accelerate launch ... failing_rank.py CONFIG ...
Rank FAIL_RANK raises at its FAIL_STEP-th training step: a UserError (bad input found on one
rank only) or a RuntimeError (a bug). Everything else is train.py, run as the launcher would.
"""

import os
import runpy
import sys
from pathlib import Path

from ganpaint.errors import UserError
from ganpaint.training import loop

TRAIN_PY = Path(__file__).parent.parent.parent / "train.py"
fail_rank, fail_step = int(os.environ["FAIL_RANK"]), int(os.environ["FAIL_STEP"])
calls = [0]


def failing(step_function):
    def step(*arguments):
        calls[0] += 1
        if int(os.environ.get("RANK", 0)) == fail_rank and calls[0] == fail_step:
            if os.environ.get("FAIL_KIND") == "user":
                raise UserError(f"injected failure on rank {fail_rank}")
            raise RuntimeError(f"injected bug on rank {fail_rank}")
        return step_function(*arguments)

    return step


for kind, function in list(loop.STEP_FUNCTIONS.items()):
    loop.STEP_FUNCTIONS[kind] = failing(function)
sys.argv = [str(TRAIN_PY), *sys.argv[1:]]
runpy.run_path(str(TRAIN_PY), run_name="__main__")
