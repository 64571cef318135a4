"""`python -m ganpaint`: the same console script as `ganpaint`."""

from ganpaint.cli import run

run()
