"""The family registry: every family is declared once, and a new one trains without touching ganpaint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from ganpaint.config import ConfigError
from ganpaint.export import load_generator
from ganpaint.models import Family, Nets, PhasePlan, StepKind, registry
from ganpaint.train.loop import train

PACKAGE = Path(__file__).parent.parent / "ganpaint"


class OneLayerGenerator(nn.Module):
    """(image_filled, hole_mask) -> image: a single 3x3 convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, image_filled: torch.Tensor, hole_mask: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(torch.cat([image_filled, hole_mask], dim=1)))


class PatchCritic(nn.Module):
    """local_patch [N,3,L,L] -> one logit per image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, local_patch: torch.Tensor) -> torch.Tensor:
        return self.conv(local_patch).mean(dim=(1, 2, 3))


TOY = Family(
    name="toy",
    summary="one conv layer, for the registry test",
    build=lambda model, image_px, local_px: Nets(OneLayerGenerator(), PatchCritic()),
    phases=(
        PhasePlan("warmup", StepKind.COMPLETION, "completion_steps"),
        PhasePlan("joint", StepKind.ADVERSARIAL),
    ),
)


@pytest.fixture
def toy_family(monkeypatch):
    monkeypatch.setitem(registry._FAMILIES, TOY.name, TOY)  # registered for this test only
    return TOY


def test_a_new_family_trains_through_its_phases_and_exports(
    toy_family, synthetic_shards, make_config
):
    config = make_config(
        synthetic_shards,
        **{
            "model.family": "toy",
            "schedule.completion_steps": 2,
            "schedule.total_steps": 4,
            "log.every_steps": 1,
        },
    )
    run_dir = train(config)
    rows = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    phases = {row["phase"] for row in rows}
    assert phases == {"warmup", "joint"}
    joint_keys = {key for row in rows if row["phase"] == "joint" for key in row}
    assert {"joint/generator_adversarial", "joint/discriminator_real_logit"} <= joint_keys
    exported = load_generator(run_dir)
    assert exported.family is TOY and isinstance(exported.generator, OneLayerGenerator)


def test_unknown_family_is_one_line_naming_the_known_ones(synthetic_shards, make_config):
    with pytest.raises(ConfigError, match=r"model.family.*'nope'.*glcic, context_encoder"):
        make_config(synthetic_shards, **{"model.family": "nope"})


def test_phase_lengths_are_checked_for_any_family(toy_family, synthetic_shards, make_config):
    with pytest.raises(ConfigError, match=r"total_steps.*completion_steps for toy"):
        make_config(
            synthetic_shards,
            **{"model.family": "toy", "schedule.completion_steps": 9, "schedule.total_steps": 4},
        )


def test_no_family_name_outside_the_registry():
    """Only the registry (and the config's embedded default) may name a family."""
    names = "|".join(registry.names())
    literal = re.compile(rf"[\"']({names})[\"']")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "registry.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if literal.search(line) and not line.lstrip().startswith("family: str ="):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offenders == []


def test_no_deepspeed_branch_in_steps_checkpoint_or_loop():
    for name in ("steps.py", "checkpoint.py", "loop.py", "feed.py"):
        text = (PACKAGE / "train" / name).read_text()
        assert "import deepspeed" not in text and "from ganpaint.train import deepspeed" not in text
        assert ".deepspeed" not in text, name


def test_a_ddp_run_never_imports_deepspeed(synthetic_shards, tmp_path):
    """DeepSpeed is imported only by runs that use it (importing it prints its accelerator banner)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from ganpaint.cli import main\n"
        f"main(['train', '--config', 'demo', 'data.shards={synthetic_shards}', 'run.dir={tmp_path}',\n"
        "      'data.image_px=32', 'data.resize_min_px=32', 'data.resize_max_px=32', 'data.workers=0',\n"
        "      'masks.local_px=16', 'masks.hole_min_px=8', 'masks.hole_max_px=12', 'model.width=8',\n"
        "      'model.disc_width=8', 'model.fc_features=16', 'data.batch_size=4', 'data.val_images=2',\n"
        "      'schedule.completion_steps=1', 'schedule.discriminator_steps=1', 'schedule.total_steps=3',\n"
        "      'log.progress=none'])\n"
        "assert 'deepspeed' not in sys.modules, 'deepspeed was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Setting accelerator" not in done.stdout + done.stderr
