"""`ganpaint bench`: img/s, ms per step, counted FLOPs, TFLOP/s, MFU and peak memory per phase.

Each phase's real step function runs on fixed batches already on the device (`--data synthetic`)
or on the real loader (`--data SHARD_DIR`, end to end); `--compare` runs both in one process and
gives end to end over synthetic per phase. The first `--warmup` steps are timed apart (they hold
torch.compile's tracing and code generation, cuDNN autotuning and first allocations) and kept out
of the rates; what they took beyond the steady rate is reported as compile_s. FLOPs are counted by
torch's FlopCounterMode over one whole step (forward and backward of every net it runs), not
typed in. `--profile FILE` appends each phase's top operators (torch.profiler) to FILE.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from ganpaint import config as config_lib
from ganpaint.config import TrainConfig, micro_batch_size
from ganpaint.data.masks import hole_generator
from ganpaint.data.remote import mask
from ganpaint.errors import UserError
from ganpaint.models import Family, registry
from ganpaint.training import schedule
from ganpaint.training.backend import Backend, TrainState
from ganpaint.training.feed import DataFeed, device_batch
from ganpaint.training.setup import build_state, compiles, make_backend, step_settings
from ganpaint.training.steps import (
    STEP_FUNCTIONS,
    Batch,
    StepSettings,
    critic_steps,
    micro_batches_per_step,
)

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

    def __init__(self, config: TrainConfig, family: Family, device: torch.device, local_batch: int):
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
        self.batch = device_batch(config, family, raw, generator, device)

    def batches(self, step: int, count: int) -> list[Batch]:
        return [self.batch] * count


class ShardFeed:
    """The training loop's own feed (loader, decode, masks): end to end from shards."""

    def __init__(self, config: TrainConfig, family: Family, state: TrainState, run_phases):
        accelerator = state.accelerator
        self.feed = DataFeed(
            config,
            family,
            accelerator.process_index,
            accelerator.num_processes,
            accelerator.device,
            run_phases,
        )

    def batches(self, step: int, count: int) -> list[Batch]:
        return self.feed.batches(step)


StepRunner = Callable[[int], None]  # runs one step, numbered from the phase's start


def _step_runner(
    state: TrainState, settings: StepSettings, phase: schedule.Phase, feed, micro: int
) -> StepRunner:
    # Steps are numbered from the phase's start, so the loader feed draws that phase's batches.
    def run_step(index: int) -> None:
        step = phase.start_step + index
        STEP_FUNCTIONS[phase.kind](state, settings, feed.batches(step, micro))

    return run_step


def _time_phase(run_step: StepRunner, steps: int, warmup: int, device: torch.device) -> dict:
    started = time.perf_counter()
    for index in range(warmup):
        run_step(index)
    _synchronize(device)
    warmup_s = time.perf_counter() - started
    # Counted eagerly: under a dispatch mode a compiled net would trace (and compile) again.
    with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
        run_step(warmup)
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _synchronize(device)
    started = time.perf_counter()
    for index in range(warmup + 1, warmup + 1 + steps):
        run_step(index)
    _synchronize(device)
    elapsed = time.perf_counter() - started
    return {
        "warmup_s": warmup_s,
        "compile_s": max(0.0, warmup_s - warmup * elapsed / steps),
        "step_ms": 1000 * elapsed / steps,
        "flops_per_step": flops,
        "peak_mem_gib": (
            torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        ),
    }


def _profile_phase(path: Path, label: str, run_step: StepRunner, first: int, device) -> None:
    """Append the top operators of 3 steps (self time on the device, or on the CPU) to `path`."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        for index in range(first, first + 3):
            run_step(index)
        _synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = profiler.key_averages().table(sort_by=sort, row_limit=25)
    with path.open("a") as handle:
        handle.write(f"== {label} (3 steps)\n{table}\n")


def _row(
    config: TrainConfig,
    phase: schedule.Phase,
    data: str,
    timing: dict,
    backend: Backend,
    peak: float | None,
) -> dict:
    device, compiled = backend.accelerator.device, compiles(config, backend)
    images_per_step = config.data.batch_size
    tflops = timing["flops_per_step"] / (timing["step_ms"] / 1000) / 1e12
    return {
        "phase": phase.number,
        "name": phase.name,
        "kind": phase.kind.value,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch": images_per_step,
        "precision": config.run.mixed_precision,
        "compile": compiled,
        "compile_mode": config.run.compile_mode if compiled else None,
        "data": data,
        "img_per_s": images_per_step / (timing["step_ms"] / 1000),
        "step_ms": timing["step_ms"],
        "warmup_s": timing["warmup_s"],
        "compile_s": timing["compile_s"],
        "gflop_per_img": timing["flops_per_step"] / images_per_step / 1e9,
        "tflops": tflops,
        "mfu": tflops / peak if peak else None,
        "peak_mem_gib": timing["peak_mem_gib"],
    }


def run_bench(
    config: TrainConfig,
    phase_numbers: list[int],
    steps: int,
    warmup: int,
    data: str,
    compare: bool = False,
    profile: str | None = None,
) -> list[dict]:
    """Measure each requested phase of `config`; one row per phase and data source (synthetic,
    the shard directory `data`, or both with `compare`, the end-to-end row then holding
    vs_synthetic: its img/s over the synthetic one)."""
    if compare and data == "synthetic":
        raise UserError("--compare needs --data SHARD_DIR (it runs that and synthetic)")
    if data != "synthetic":
        config = replace(config, data=replace(config.data, shards=data))
    backend = make_backend(config.run)
    device = backend.accelerator.device
    family = registry.get(config.model.family)
    state = build_state(config, backend)
    settings = step_settings(config, family, torch.full((3,), 0.5), device)
    run_phases = schedule.phases(family, config.schedule)
    local_batch = micro_batch_size(config, backend.accelerator.num_processes)
    feeds = {}
    if data == "synthetic" or compare:
        feeds["synthetic"] = SyntheticFeed(config, family, device, local_batch)
    if data != "synthetic":
        feeds[mask(data)] = ShardFeed(
            config, family, state, run_phases
        )  # a URL's credentials masked
    peak = device_peak_tflops(device)
    rows = []
    for phase in run_phases:
        if phase_numbers and phase.number not in phase_numbers:
            continue
        micro = micro_batches_per_step(
            phase.kind, critic_steps(config.schedule), config.optim.grad_accum_steps
        )
        for label, feed in feeds.items():
            run_step = _step_runner(state, settings, phase, feed, micro)
            timing = _time_phase(run_step, steps, warmup, device)
            rows.append(_row(config, phase, label, timing, backend, peak))
            if profile:
                title = f"phase {phase.number} {phase.name}, {label}, compile {rows[-1]['compile']}"
                _profile_phase(Path(profile), title, run_step, warmup + 1 + steps, device)
        if compare:
            synthetic, end_to_end = rows[-2], rows[-1]
            end_to_end["vs_synthetic"] = end_to_end["img_per_s"] / synthetic["img_per_s"]
    return rows


def print_table(rows: list[dict]) -> None:
    devices = ", ".join(sorted({row["device"] for row in rows}))
    table = Table(title=f"ganpaint bench on {devices}")
    columns = ("phase", "data", "compiled", "batch", "img/s", "ms/step", "compile s")
    columns += ("GFLOP/img", "TFLOP/s", "MFU", "peak GiB", "vs synthetic")
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        ratio = row.get("vs_synthetic")
        table.add_row(
            f"{row['phase']} {row['name']}",
            "synthetic" if row["data"] == "synthetic" else Path(row["data"]).name,
            row["compile_mode"] or "no",
            str(row["batch"]),
            f"{row['img_per_s']:.1f}",
            f"{row['step_ms']:.1f}",
            f"{row['compile_s']:.1f}",
            f"{row['gflop_per_img']:.2f}",
            f"{row['tflops']:.3f}",
            f"{row['mfu']:.1%}" if row["mfu"] is not None else "-",
            f"{row['peak_mem_gib']:.1f}" if row["peak_mem_gib"] is not None else "-",
            f"{ratio:.3f}" if ratio is not None else "-",
        )
    Console(width=max(Console().width, 140)).print(table)  # wide enough not to wrap the figures


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
    compare: bool = False,
    profile: str | None = None,
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
        if steps < 1 or warmup < 0:
            raise UserError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
        rows = run_bench(train_config, numbers, steps, warmup, data, compare, profile)
        print_table(rows)
    if json_out:
        with open(json_out, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 0
