"""`ganpaint bench` on the CPU: synthetic and end-to-end rows of the real steps, their ratio, the
compile time kept apart, and the profile file."""

from __future__ import annotations

import json

from conftest import TINY_DEFAULTS

from ganpaint.cli import main


def test_bench_compares_end_to_end_with_synthetic(synthetic_shards, tmp_path, capsys):
    # run.compile is a GPU preset's setting: the CPU ignores it.
    overrides = [f"{key}={value}" for key, value in TINY_DEFAULTS.items()] + ["run.compile=true"]
    out, profile = tmp_path / "bench.json", tmp_path / "profile.txt"
    arguments = ["--phases", "3", "--steps", "1", "--warmup", "1", "--data", str(synthetic_shards)]
    arguments += ["--compare", "--json", str(out), "--profile", str(profile)]
    assert main(["bench", "--config", "configs/demo.yaml", *overrides, *arguments]) == 0
    synthetic, end_to_end = json.loads(out.read_text())
    assert (synthetic["phase"], synthetic["data"]) == (3, "synthetic")
    assert (end_to_end["phase"], end_to_end["data"]) == (3, str(synthetic_shards))
    assert "vs_synthetic" not in synthetic
    ratio = end_to_end["img_per_s"] / synthetic["img_per_s"]
    assert abs(end_to_end["vs_synthetic"] - ratio) < 1e-9
    for row in (synthetic, end_to_end):
        assert row["compile"] is False and row["compile_s"] >= 0 and row["batch"] == 4
        assert row["gflop_per_img"] > 0 and row["step_ms"] > 0
    assert profile.read_text().count("== phase 3 joint") == 2
    assert "vs synthetic" in capsys.readouterr().out


def test_compare_needs_a_shard_directory(capsys):
    assert main(["bench", "--config", "configs/demo.yaml", "--compare"]) == 2
    assert "--compare needs --data SHARD_DIR" in capsys.readouterr().err
