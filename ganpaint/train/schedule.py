"""Training phases as data: which step function runs at a given step, derived from the step alone.

GLCIC (Iizuka et al. 2017, Sec. 3.3) trains in three phases: the completion network alone on the
masked MSE for Tc steps, the discriminators alone against the frozen completion network for Td
steps, then both jointly until T. The other families train jointly from step 0 (WGAN U-Net with
`critic_steps` critic updates per generator update). `reconstruction_only` makes any inpainting
run one phase of the generator alone on its reconstruction loss. Nothing here is stored in a
checkpoint: the phase is recomputed from the step on resume.
"""

from __future__ import annotations

from dataclasses import dataclass

from ganpaint.config import ScheduleConfig


@dataclass(frozen=True)
class Phase:
    number: int  # 1-based, as in the paper
    name: str  # used in log keys: "completion", "discriminator", "joint"
    kind: str  # the step function that runs it (see steps.STEP_FUNCTIONS)
    start_step: int  # first step of the phase
    end_step: int  # first step after the phase

    @property
    def steps(self) -> int:
        return self.end_step - self.start_step


# The joint step of each family; GLCIC adds two phases before it.
JOINT_KIND = {
    "glcic": "glcic_joint",
    "context_encoder": "adversarial_joint",
    "wgan_unet": "wgan_joint",
    "dcgan": "dcgan",
}


def phases(family: str, schedule: ScheduleConfig) -> tuple[Phase, ...]:
    """The phases of a run, in order, covering [0, total_steps). Empty phases are dropped."""
    if schedule.reconstruction_only:  # no adversary: an inpainting family's "L2 only" ablation
        return (Phase(1, "completion", "reconstruction", 0, schedule.total_steps),)
    if family == "glcic":
        completion_end = schedule.completion_steps
        discriminator_end = completion_end + schedule.discriminator_steps
        candidates = (
            Phase(1, "completion", "reconstruction", 0, completion_end),
            Phase(2, "discriminator", "discriminator", completion_end, discriminator_end),
            Phase(3, "joint", JOINT_KIND[family], discriminator_end, schedule.total_steps),
        )
    else:
        candidates = (Phase(1, "joint", JOINT_KIND[family], 0, schedule.total_steps),)
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
