"""Rolling a run back to its newest checkpoint when its weights or optimiser state went inf/NaN.

A checkpoint is never written with non-finite tensors: `checkpoint.save` checks them first and
raises WeightsNotFinite on every rank. The loop then calls `Rollbacks.roll_back`, which does what a
resume does, on every rank: the newest complete checkpoint is loaded (integrity record checked,
damaged ones set aside), the health counters start again from its counts, stats.jsonl and
TensorBoard are rewound to its step, and training goes on from there, with one line saying so.

The data order, the holes and the latents are functions of the step, so a divergence that is
deterministic comes back at the same place; the budget, run.max_rollbacks, makes such a run stop
with one line (exit status 2, like a run of non-finite losses) keeping its last good checkpoint.
A run with no checkpoint to go back to stops at once; the export is never written.
"""

from __future__ import annotations

from pathlib import Path

from ganpaint.config import TrainConfig
from ganpaint.errors import UserError, WeightsNotFinite
from ganpaint.training import checkpoint
from ganpaint.training.backend import TrainState
from ganpaint.training.distributed import main_process_value
from ganpaint.training.log import RunLogger

ADVICE = "lower the learning rate or check the data"


class WeightsDiverged(UserError):
    """Weights went non-finite and no rollback is left (or there is no checkpoint to go to)."""


class Rollbacks:
    """The rollbacks of one run: at most run.max_rollbacks of them."""

    def __init__(
        self, state: TrainState, config: TrainConfig, run_dir: Path, logger: RunLogger
    ) -> None:
        self.state, self.config, self.run_dir, self.logger = state, config, run_dir, logger
        self.used = 0

    def roll_back(self, error: WeightsNotFinite) -> tuple[int, Path]:
        """Reload the newest checkpoint on every rank (collective): (its step, its path).

        WeightsDiverged (one line) when the budget is spent, when there is no checkpoint, or
        when that checkpoint is non-finite too (one written before ganpaint checked)."""
        budget = self.config.run.max_rollbacks
        newest = checkpoint.latest(self.run_dir)
        # Rank 0's view decides, so that every rank takes the same branch.
        if not main_process_value(self.state.accelerator, int(newest is not None)):
            raise WeightsDiverged(
                f"{error} and there is no checkpoint to roll back to: {ADVICE}; nothing was saved"
            )
        if self.used >= budget:
            kept = newest.name if newest else "the newest checkpoint"
            raise WeightsDiverged(
                f"{error} again after {self.used} rollback(s) (run.max_rollbacks={budget}): "
                f"{ADVICE}; the last good checkpoint {kept} is kept"
            )
        self.used += 1
        step, _ = checkpoint.resume(self.state, self.config, self.run_dir)
        if step == 0:  # every checkpoint was found damaged and set aside meanwhile
            raise WeightsDiverged(f"{error} and no usable checkpoint is left: {ADVICE}")
        path = checkpoint.checkpoint_root(self.run_dir) / f"{checkpoint.PREFIX}{step:08d}"
        self.state.health.restart()
        try:
            checkpoint.check_finite(self.state, f"in {path.name}")
        except WeightsNotFinite as again:
            raise WeightsDiverged(
                f"{error}; rolling back did not help: {again} (saved before ganpaint checked): "
                "resume from an older checkpoint with --resume-from, or use a new run.dir"
            ) from None
        self.logger.rewind(step)
        self.logger.message(
            f"{error}: not saved; rolled back to {path.name} (rollback {self.used} of {budget})"
        )
        return step, path
