"""Training phases as data: which step kind runs at a given step, derived from the step alone.

A family declares its phases in order (its `FAMILY` in ganpaint/models/); each has a length read
from the schedule config (`PhasePlan.length`), the last one runs until schedule.total_steps.
GLCIC (Iizuka et al. 2017, Sec. 3.3) trains the completion network alone for Tc steps, the
discriminators alone for Td, then both jointly until T; the other families train jointly from
step 0. schedule.reconstruction_only makes any inpainting run one phase of the generator alone on
its reconstruction loss (the WGAN U-Net write-up's "L2 only"). Nothing here is stored in a
checkpoint: the phase is recomputed from the step on resume.
"""

from __future__ import annotations

from dataclasses import dataclass

from ganpaint.config import ScheduleConfig
from ganpaint.models.family import Family, StepKind


@dataclass(frozen=True)
class Phase:
    number: int  # 1-based, as in the paper
    name: str  # used in log keys: "completion", "discriminator", "joint"
    kind: StepKind  # the step function that runs it (see steps.STEP_FUNCTIONS)
    start_step: int  # first step of the phase
    end_step: int  # first step after the phase

    @property
    def steps(self) -> int:
        return self.end_step - self.start_step


def phases(family: Family, schedule: ScheduleConfig) -> tuple[Phase, ...]:
    """The phases of a run, in order, covering [0, total_steps). Empty phases are dropped."""
    if schedule.reconstruction_only:  # no adversary: an inpainting family's "L2 only" ablation
        return (Phase(1, "completion", StepKind.COMPLETION, 0, schedule.total_steps),)
    candidates, start = [], 0
    for number, plan in enumerate(family.phases, start=1):
        end = start + plan.length(schedule) if plan.length else schedule.total_steps
        end = min(end, schedule.total_steps)
        candidates.append(Phase(number, plan.name, plan.kind, start, end))
        start = end
    return tuple(phase for phase in candidates if phase.steps > 0)


def phase_at(step: int, run_phases: tuple[Phase, ...]) -> Phase:
    """The phase that trains step `step` (0-based). Past the end: the last phase."""
    for phase in run_phases:
        if step < phase.end_step:
            return phase
    return run_phases[-1]


def boundaries(run_phases: tuple[Phase, ...]) -> set[int]:
    """Steps at which a phase ends: a checkpoint is written at each."""
    return {phase.end_step for phase in run_phases}
