"""Train like rank_digest.py, with the second masked-MSE call of rank 1 only returning NaN.

Used by tests/test_distributed.py: every rank must skip that update (the decision is agreed on the
device), so the ranks stay identical. Usage: accelerate launch ... nan_on_one_rank.py CONFIG [k=v ...]
"""

import os
import sys

import rank_digest  # noqa: F401  (beside this script: parameter digests at every checkpoint)

from ganpaint import config as config_lib
from ganpaint import losses
from ganpaint.training.distributed import shutdown
from ganpaint.training.loop import train

real_mse, calls = losses.masked_mse, [0]


def mse_with_one_nan(prediction, target, hole_mask=None):
    calls[0] += 1
    value = real_mse(prediction, target, hole_mask)
    return value * float("nan") if calls[0] == 2 and os.environ["RANK"] == "1" else value


losses.masked_mse = mse_with_one_nan
train(config_lib.load(sys.argv[1], sys.argv[2:]))
shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
