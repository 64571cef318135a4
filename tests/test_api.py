"""The public API: train, load and inpaint from Python, as the README shows."""

from __future__ import annotations

import importlib

import numpy as np

import ganpaint
from ganpaint import api
from ganpaint.models import registry


def test_train_load_inpaint_from_python(synthetic_shards, make_config, tmp_path):
    config = make_config(
        synthetic_shards,
        **{
            "schedule.total_steps": 2,
            "schedule.completion_steps": 1,
            "schedule.discriminator_steps": 1,
        },
    )
    run_dir = ganpaint.train(config)
    for submodule in (
        "ganpaint.infer.inpaint",
        "ganpaint.training.loop",
    ):  # must not shadow the API
        importlib.import_module(submodule)
    assert (ganpaint.train, ganpaint.load, ganpaint.inpaint) == (api.train, api.load, api.inpaint)

    run_again = ganpaint.train(config)  # resumes at the end: nothing left to train
    assert run_again == run_dir
    model = ganpaint.load(run_dir, device="cpu")
    assert model.family is registry.get("glcic")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    hole = np.zeros((70, 90), bool)
    hole[20:40, 30:60] = True
    filled = ganpaint.inpaint(model, image, hole, blend="none")
    assert filled.shape == image.shape and filled.dtype == np.uint8
    assert np.array_equal(filled[~hole], image[~hole]) and not np.array_equal(
        filled[hole], image[hole]
    )
    assert ganpaint.__version__ and callable(ganpaint.load)
