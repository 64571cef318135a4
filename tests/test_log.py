"""What a run shows: plain progress lines with elapsed time and ETA, stats.jsonl without duplicates."""

from __future__ import annotations

import json

import torch

from ganpaint.config import LogConfig
from ganpaint.training.log import RunLogger


def _logger(run_dir, start_step: int = 0) -> RunLogger:
    plain = LogConfig(every_steps=1, progress="plain")
    return RunLogger(run_dir, plain, True, 10, start_step, torch.device("cpu"))


def _steps(run_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "stats.jsonl").read_text().splitlines()]


def test_plain_lines_give_elapsed_eta_and_learning_rate(tmp_path, capsys):
    logger = _logger(tmp_path)
    for step in (1, 2):
        logger.record({"generator_loss": torch.tensor(0.5)}, images=4)
        logger.tick(step, "completion", {"lr/generator": 1.0})
    logger.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("step 2/10 [completion]")
    assert " elapsed 0:00:0" in lines[-1] and " eta 0:00:" in lines[-1]
    row = json.loads((tmp_path / "stats.jsonl").read_text().splitlines()[-1])
    assert row["lr/generator"] == 1.0 and row["completion/generator_loss"] == 0.5


def test_a_resumed_run_rewrites_no_step_twice(tmp_path):
    logger = _logger(tmp_path)
    for step in range(1, 8):  # the run got to step 7, its last checkpoint is at 5
        logger.record({"generator_loss": torch.tensor(1.0)}, images=4)
        logger.tick(step, "completion")
    logger.close()
    with (tmp_path / "stats.jsonl").open("a") as stats:
        stats.write('{"step": 8, "pha')  # torn by a kill -9
    resumed = _logger(tmp_path, start_step=5)
    for step in range(6, 9):
        resumed.record({"generator_loss": torch.tensor(1.0)}, images=4)
        resumed.tick(step, "completion")
    resumed.close()
    assert _steps(tmp_path) == list(range(1, 9))
