"""Shared test fixtures: a tiny real shard directory and a tiny training config built on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ganpaint import config as config_module
from ganpaint.data.shards import pack

# 128 synthetic 64-px images: 96 train in 6 shards of 16, 16 val, 16 test.
SYNTHETIC_COUNT, SYNTHETIC_PX, SHARD_IMAGES = 128, 64, 16


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory) -> Path:
    """A packed synthetic shard directory (real tars + manifest.json); treat it as read-only."""
    output = tmp_path_factory.mktemp("synthetic_shards")
    pack(
        "synthetic",
        output,
        size=SYNTHETIC_PX,
        count=SYNTHETIC_COUNT,
        val_fraction=0.125,
        split_max_count=SHARD_IMAGES,
        workers=1,
        progress=False,
    )
    return output


TINY_DEFAULTS = {
    "data.image_px": 32,
    "data.resize_min_px": 32,
    "data.resize_max_px": 40,
    "data.batch_size": 4,
    "data.workers": 0,
    "masks.local_px": 16,
    "masks.hole_min_px": 8,
    "masks.hole_max_px": 12,
    "model.width": 8,
    "model.disc_width": 8,
}
# Each family's own settings at the same tiny scale (a family refuses the others' keys).
TINY_FAMILY_SETTINGS = {"glcic": {"model.fc_features": 32}}


@pytest.fixture
def make_config(tmp_path):
    """make_config(shards_dir, **{"dotted.key": value}) -> TrainConfig with tiny nets and images.

    run.dir defaults to a fresh tmp dir. Overriding data.image_px alone also moves the resize range
    to [image_px, 1.25 * image_px] so the config stays valid (e.g. dcgan's 64 px).
    """

    def build(shards_dir, **overrides) -> config_module.TrainConfig:
        family = str(overrides.get("model.family", config_module.ModelConfig.family))
        values = {
            **TINY_DEFAULTS,
            **TINY_FAMILY_SETTINGS.get(family, {}),
            "data.shards": str(shards_dir),
            "run.dir": str(tmp_path / "run"),
        }
        if (
            "data.image_px" in overrides
            and not {"data.resize_min_px", "data.resize_max_px"} & overrides.keys()
        ):
            image_px = int(overrides["data.image_px"])
            values.update({"data.resize_min_px": image_px, "data.resize_max_px": image_px * 5 // 4})
        values.update(overrides)
        return config_module.load(None, [f"{key}={value}" for key, value in values.items()])

    return build
