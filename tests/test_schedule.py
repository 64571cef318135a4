"""Phases are a pure function of the step; boundaries fall where the paper puts them."""

from ganpaint.config import ScheduleConfig
from ganpaint.models import StepKind, registry
from ganpaint.training.schedule import boundaries, phase_at, phases


def test_glcic_three_phases_at_paper_boundaries():
    paper = phases(
        registry.get("glcic"),
        ScheduleConfig(completion_steps=90_000, discriminator_steps=10_000, total_steps=500_000),
    )
    assert [(p.number, p.name, p.start_step, p.end_step) for p in paper] == [
        (1, "completion", 0, 90_000),
        (2, "discriminator", 90_000, 100_000),
        (3, "joint", 100_000, 500_000),
    ]
    assert phase_at(0, paper).number == 1
    assert phase_at(89_999, paper).number == 1
    assert phase_at(90_000, paper).number == 2
    assert phase_at(99_999, paper).number == 2
    assert phase_at(100_000, paper).kind == StepKind.ADVERSARIAL
    assert phase_at(10**9, paper).number == 3
    assert boundaries(paper) == {90_000, 100_000, 500_000}


def test_empty_phases_are_dropped():
    only_joint = phases(
        registry.get("glcic"),
        ScheduleConfig(completion_steps=0, discriminator_steps=0, total_steps=5),
    )
    assert [p.name for p in only_joint] == ["joint"]


def test_other_families_train_jointly_from_step_zero():
    schedule = ScheduleConfig(completion_steps=50, discriminator_steps=5, total_steps=100)
    for family, kind in [
        ("context_encoder", StepKind.ADVERSARIAL),
        ("wgan_unet", StepKind.CRITIC),
        ("dcgan", StepKind.GENERATION),
    ]:
        (phase,) = phases(registry.get(family), schedule)
        assert (phase.kind, phase.start_step, phase.end_step) == (kind, 0, 100)
