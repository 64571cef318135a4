"""`ganpaint bench`: img/s, ms per step, counted FLOPs, TFLOP/s, MFU and peak memory per phase.

Each phase's real step function runs on fixed batches already on the device (`--data synthetic`)
or on the real loader (`--data SHARD_DIR`, end to end). The first `--warmup` steps are timed
apart (they hold torch.compile and cuDNN autotuning) and excluded from the rates. FLOPs are
counted by torch's FlopCounterMode over one whole step (forward and backward of every net it
runs), not typed in.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from ganpaint import config as config_lib
from ganpaint.config import TrainConfig, micro_batch_size
from ganpaint.data.masks import hole_generator
from ganpaint.errors import UserError
from ganpaint.train import schedule
from ganpaint.train.backend import TrainState
from ganpaint.train.feed import DataFeed, device_batch
from ganpaint.train.setup import build_state, make_backend, step_settings
from ganpaint.train.steps import STEP_FUNCTIONS, Batch, StepSettings, micro_batches_per_step

# Dense bf16 / fp16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device name.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def device_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SyntheticFeed:
    """Fixed random batches on the device: the step alone, with no input pipeline."""

    def __init__(self, config: TrainConfig, device: torch.device, local_batch: int):
        px = config.data.image_px
        generator = hole_generator(config.run.seed, 0, 0, device)
        raw = torch.randint(
            0, 256, (local_batch, 3, px, px), dtype=torch.uint8, device=device, generator=generator
        )
        if config.data.captions:  # random words, every caption full length
            shape = (local_batch, config.data.caption_tokens)
            vocabulary = config.model.vocabulary_size
            words = torch.randint(2, vocabulary, shape, device=device, generator=generator)
            raw = (raw, words)
        self.batch = device_batch(config, raw, generator, device)

    def batches(self, step: int, count: int) -> list[Batch]:
        return [self.batch] * count


class ShardFeed:
    """The training loop's own feed (loader, decode, masks): end to end from shards."""

    def __init__(self, config: TrainConfig, state: TrainState, run_phases):
        accelerator = state.accelerator
        self.feed = DataFeed(
            config,
            accelerator.process_index,
            accelerator.num_processes,
            accelerator.device,
            run_phases,
        )

    def batches(self, step: int, count: int) -> list[Batch]:
        return self.feed.batches(step)


def _time_phase(
    state: TrainState,
    settings: StepSettings,
    kind,
    feed,
    micro: int,
    steps: int,
    warmup: int,
    device: torch.device,
) -> dict:
    def step_function(step: int) -> None:
        STEP_FUNCTIONS[kind](state, settings, feed.batches(step, micro))

    started = time.perf_counter()
    for step in range(warmup):
        step_function(step)
    _synchronize(device)
    warmup_s = time.perf_counter() - started
    with FlopCounterMode(display=False) as counter:
        step_function(warmup)
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _synchronize(device)
    started = time.perf_counter()
    for step in range(warmup + 1, warmup + 1 + steps):
        step_function(step)
    _synchronize(device)
    elapsed = time.perf_counter() - started
    return {
        "warmup_s": warmup_s,
        "step_ms": 1000 * elapsed / steps,
        "flops_per_step": flops,
        "peak_mem_gib": (
            torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        ),
    }


def run_bench(
    config: TrainConfig, phase_numbers: list[int], steps: int, warmup: int, data: str
) -> list[dict]:
    """Measure each requested phase of `config`; one row per phase."""
    if data != "synthetic":
        config = replace(config, data=replace(config.data, shards=data))
    backend = make_backend(config.run)
    device = backend.accelerator.device
    state = build_state(config, backend)
    settings = step_settings(config, torch.full((3,), 0.5), device)
    run_phases = schedule.phases(settings.family, config.schedule)
    local_batch = micro_batch_size(config, backend.accelerator.num_processes)
    feed = (
        SyntheticFeed(config, device, local_batch)
        if data == "synthetic"
        else ShardFeed(config, state, run_phases)
    )
    peak = device_peak_tflops(device)
    rows = []
    for phase in run_phases:
        if phase_numbers and phase.number not in phase_numbers:
            continue
        micro = micro_batches_per_step(
            phase.kind, config.schedule.critic_steps, config.optim.grad_accum_steps
        )
        timing = _time_phase(state, settings, phase.kind, feed, micro, steps, warmup, device)
        images_per_step = config.data.batch_size
        tflops = timing["flops_per_step"] / (timing["step_ms"] / 1000) / 1e12
        rows.append(
            {
                "phase": phase.number,
                "name": phase.name,
                "kind": phase.kind.value,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "batch": images_per_step,
                "precision": config.run.mixed_precision,
                "compile": config.run.compile,
                "data": data,
                "img_per_s": images_per_step / (timing["step_ms"] / 1000),
                "step_ms": timing["step_ms"],
                "warmup_s": timing["warmup_s"],
                "gflop_per_img": timing["flops_per_step"] / images_per_step / 1e9,
                "tflops": tflops,
                "mfu": tflops / peak if peak else None,
                "peak_mem_gib": timing["peak_mem_gib"],
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    table = Table(title="ganpaint bench")
    for column in (
        "phase",
        "device",
        "batch",
        "img/s",
        "ms/step",
        "warm-up s",
        "GFLOP/img",
        "TFLOP/s",
        "MFU",
        "peak GiB",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            f"{row['phase']} {row['name']}",
            row["device"],
            str(row["batch"]),
            f"{row['img_per_s']:.1f}",
            f"{row['step_ms']:.1f}",
            f"{row['warmup_s']:.1f}",
            f"{row['gflop_per_img']:.2f}",
            f"{row['tflops']:.3f}",
            f"{row['mfu']:.1%}" if row["mfu"] is not None else "-",
            f"{row['peak_mem_gib']:.1f}" if row["peak_mem_gib"] is not None else "-",
        )
    Console(width=max(Console().width, 132)).print(table)  # wide enough not to wrap the figures


def bench_command(
    config: str,
    overrides: list[str],
    phases: str,
    steps: int,
    warmup: int,
    data: str,
    loader_only: bool,
    workers: str,
    json_out: str | None,
) -> int:
    train_config = config_lib.load(config, overrides)
    if loader_only:
        if data == "synthetic":
            raise UserError("--loader-only needs --data SHARD_DIR")
        from ganpaint.data.throughput import measure_loader

        rows = [
            measure_loader(
                data,
                train_config.data.image_px,
                int(count),
                batches=steps,
                batch_size=train_config.data.batch_size,
                resize_max_px=train_config.data.resize_max_px,
            )
            for count in workers.split(",")
        ]
        Console().print_json(json.dumps(rows))
    else:
        try:
            numbers = [int(part) for part in phases.split(",") if part.strip()]
        except ValueError:
            raise UserError(
                f"--phases takes comma-separated phase numbers, got {phases!r}"
            ) from None
        rows = run_bench(train_config, numbers, steps, warmup, data)
        print_table(rows)
    if json_out:
        with open(json_out, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 0
