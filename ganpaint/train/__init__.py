"""The training engine: schedule, steps, backends, the loop, checkpoints, logging.

`ganpaint.train(config, overrides)` (ganpaint/api.py) trains; this package is callable as that.
"""

from ganpaint.callable_module import make_callable

make_callable(__name__, "train")
