"""The family registry: every family is declared once, and a new one trains without touching ganpaint."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from ganpaint import config as config_lib
from ganpaint.config import ConfigError
from ganpaint.infer.export import load_generator
from ganpaint.models import Family, Nets, PhasePlan, StepKind, registry
from ganpaint.training.loop import train

PACKAGE = Path(__file__).parent.parent / "ganpaint"


class OneLayerGenerator(nn.Module):
    """(image_filled, hole_mask) -> image: a single convolution of side `kernel`."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 3, kernel, padding=kernel // 2)

    def forward(self, image_filled: torch.Tensor, hole_mask: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(torch.cat([image_filled, hole_mask], dim=1)))


class PatchCritic(nn.Module):
    """local_patch [N,3,L,L] -> one logit per image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, local_patch: torch.Tensor) -> torch.Tensor:
        return self.conv(local_patch).mean(dim=(1, 2, 3))


@dataclass(frozen=True)
class ToySettings:
    """The toy family's own key: model.kernel."""

    kernel: int = 3


TOY = Family(
    name="toy",
    summary="one conv layer, for the registry test",
    build=lambda model, image_px, local_px: Nets(OneLayerGenerator(model.kernel), PatchCritic()),
    phases=(
        PhasePlan("warmup", StepKind.COMPLETION, lambda schedule: schedule.completion_steps),
        PhasePlan("joint", StepKind.ADVERSARIAL),
    ),
    model_settings=ToySettings,
)


@pytest.fixture
def toy_family():
    registry.register(TOY)  # from the test itself, as a plugin would; for this test only
    yield TOY
    registry.unregister(TOY.name)


def test_a_new_family_trains_through_its_phases_and_exports(
    toy_family, synthetic_shards, make_config
):
    config = make_config(
        synthetic_shards,
        **{
            "model.family": "toy",
            "model.kernel": 5,
            "schedule.completion_steps": 2,
            "schedule.total_steps": 4,
            "log.every_steps": 1,
        },
    )
    assert config.model.kernel == 5
    run_dir = train(config)
    rows = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    phases = {row["phase"] for row in rows}
    assert phases == {"warmup", "joint"}
    joint_keys = {key for row in rows if row["phase"] == "joint" for key in row}
    assert {"joint/generator_adversarial", "joint/discriminator_real_logit"} <= joint_keys
    exported = load_generator(run_dir)
    assert exported.family is TOY and isinstance(exported.generator, OneLayerGenerator)
    assert exported.generator.conv.kernel_size == (5, 5)


def test_a_family_refuses_the_keys_of_others_in_one_line(toy_family, synthetic_shards, make_config):
    with pytest.raises(ConfigError) as caught:
        make_config(synthetic_shards, **{"model.family": "toy", "model.fc_features": 16})
    assert str(caught.value) == (
        "config key 'model.fc_features': toy has no such setting; its settings are model.kernel"
    )
    with pytest.raises(ConfigError, match=r"'model.kernel': glcic has no such setting; its settin"):
        make_config(synthetic_shards, **{"model.kernel": 5})
    with pytest.raises(ConfigError, match=r"'schedule.critic_steps': dcgan has no such setting"):
        config_lib.load("dcgan_celeba", ["schedule.critic_steps=2"])


def test_saved_configs_of_earlier_versions_drop_other_families_keys(tmp_path):
    """Before families declared their settings every config held all of them: a run's saved
    config.yaml, a checkpoint's or an export's copy still load, without the keys of the others."""
    config = config_lib.load("dcgan_celeba")
    legacy = config_lib.to_dict(config)
    legacy["model"] |= {"fc_features": 1024, "vocabulary_size": 10_000, "dilations": [2, 4, 8, 16]}
    legacy["schedule"]["critic_steps"] = 1
    assert config_lib.from_dict(legacy) == config
    saved = tmp_path / "config.yaml"
    saved.write_text(json.dumps(legacy))  # JSON is YAML
    assert config_lib.load(saved, saved=True) == config
    with pytest.raises(ConfigError, match="'model.dilations': dcgan has no such setting"):
        config_lib.load(saved)  # a config the user wrote is held to its family's keys


def test_unknown_family_is_one_line_naming_the_known_ones(synthetic_shards, make_config):
    with pytest.raises(ConfigError, match=r"model.family.*'nope'.*glcic, context_encoder"):
        make_config(synthetic_shards, **{"model.family": "nope"})


def test_phase_lengths_are_checked_for_any_family(toy_family, synthetic_shards, make_config):
    with pytest.raises(ConfigError, match=r"total_steps.*9 steps of toy's.*\(warmup 9\), got 4"):
        make_config(
            synthetic_shards,
            **{"model.family": "toy", "schedule.completion_steps": 9, "schedule.total_steps": 4},
        )


def test_no_family_name_outside_the_registry():
    """Only a family's own declaration (`name="glcic"`) and the config's embedded default may name
    a family."""
    names = "|".join(registry.names())
    literal = re.compile(rf"[\"']({names})[\"']")
    declaration = re.compile(rf"name=[\"']({names})[\"'],$")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            allowed = line.lstrip().startswith("family: str =") or (
                path.parent.name == "models" and declaration.fullmatch(line.strip())
            )
            if literal.search(line) and not allowed:
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offenders == []
    declared = {family.name: family.build.__module__ for family in registry.FAMILIES}
    assert all(module.startswith("ganpaint.models.") for module in declared.values())


def test_no_deepspeed_branch_in_steps_checkpoint_or_loop():
    for name in ("steps.py", "checkpoint.py", "loop.py", "feed.py"):
        text = (PACKAGE / "training" / name).read_text()
        assert (
            "import deepspeed" not in text and "from ganpaint.training import deepspeed" not in text
        )
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
