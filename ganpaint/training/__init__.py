"""The training engine: schedule, steps, backends, the loop, checkpoints, logging, the step benchmark.

`ganpaint.train(config, overrides)` (ganpaint/api.py) runs its loop from Python.
"""
