"""Evaluation: metric values against hand-derived cases, baselines, FID/KID mechanics, `ganpaint eval`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rich.console
import torch
from skimage import data
from skimage.metrics import structural_similarity
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ganpaint import config as config_lib
from ganpaint.baselines import mean_fill, telea_fill
from ganpaint.cli import main
from ganpaint.data.stream import iterate_split, read_manifest
from ganpaint.errors import UserError
from ganpaint.eval import metrics
from ganpaint.eval.evaluate import evaluate
from ganpaint.eval.fid import frechet_distance, kernel_inception_distance, load_inception
from ganpaint.eval.report import print_table
from ganpaint.infer.export import load_generator, save_export
from ganpaint.models import build_nets


def photo_batch(count: int = 2, side: int = 48) -> torch.Tensor:
    """Real photo crops, float [count, 3, side, side] in [0, 1]."""
    astronaut = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
    return torch.stack(
        [astronaut[:, 60 + 70 * i : 60 + 70 * i + side, 180 : 180 + side] for i in range(count)]
    )


def square_hole(count: int, side: int, top: int, left: int, size: int) -> torch.Tensor:
    hole = torch.zeros(count, 1, side, side)
    hole[..., top : top + size, left : left + size] = 1
    return hole


# --- metrics -----------------------------------------------------------------------------------


def test_psnr_and_l1_of_a_known_error_hole_vs_image() -> None:
    target = torch.full((2, 3, 16, 16), 0.5)
    hole = square_hole(2, 16, 4, 4, 8)  # a quarter of the image
    everywhere = target + 0.1
    assert torch.allclose(metrics.psnr(everywhere, target), torch.tensor(20.0))
    in_hole_only = target + 0.1 * hole
    torch.testing.assert_close(metrics.psnr(in_hole_only, target, hole), torch.full((2,), 20.0))
    # MSE over the image is a quarter of the hole's: +10 log10(4) dB.
    torch.testing.assert_close(
        metrics.psnr(in_hole_only, target), torch.full((2,), 20 + 10 * math.log10(4))
    )
    torch.testing.assert_close(metrics.l1(in_hole_only, target, hole), torch.full((2,), 0.1))
    torch.testing.assert_close(metrics.l1(in_hole_only, target), torch.full((2,), 0.025))
    assert metrics.psnr(target, target)[0] == 100  # capped, finite


def _skimage_ssim(prediction: torch.Tensor, target: torch.Tensor) -> tuple[float, np.ndarray]:
    """skimage's Wang et al. settings: mean SSIM and the full map averaged over channels."""
    value, full = structural_similarity(
        prediction.permute(1, 2, 0).double().numpy(),
        target.permute(1, 2, 0).double().numpy(),
        channel_axis=2,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        full=True,
    )
    return value, full.mean(2)


def test_ssim_matches_skimage_on_a_photo() -> None:
    target = photo_batch(2)
    noisy = (
        target + 0.08 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    ).clamp(0, 1)
    ours = metrics.ssim(noisy, target)
    ours_map = metrics.ssim_map(noisy, target)
    hole = square_hole(2, 48, 0, 10, 20)  # touches the top border: the padding counts
    for index in range(2):
        reference, reference_map = _skimage_ssim(noisy[index], target[index])
        assert abs(float(ours[index]) - reference) < 1e-4
        np.testing.assert_allclose(ours_map[index, 0].numpy(), reference_map, atol=5e-4)
        hole_pixels = hole[index, 0].bool().numpy()
        hole_reference = reference_map[hole_pixels].mean()
        assert abs(float(metrics.ssim(noisy, target, hole)[index]) - hole_reference) < 1e-4
    assert torch.allclose(metrics.ssim(target, target), torch.ones(2))


def test_image_metrics_keys_and_area_buckets() -> None:
    side = 20  # 400 pixels: holes of 20, 40, 100 and 200 pixels
    hole = torch.zeros(4, 1, side, side)
    for index, rows in enumerate((1, 2, 5, 10)):
        hole[index, :, :rows] = 1
    torch.testing.assert_close(metrics.hole_area(hole), torch.tensor([0.05, 0.1, 0.25, 0.5]))
    buckets = metrics.area_bucket(hole)
    assert buckets.tolist() == [0, 1, 2, 3]  # exactly 10% falls in "10-20%"
    assert metrics.bucket_names() == ["<10%", "10-20%", "20-30%", ">=30%"]
    target = torch.rand(4, 3, side, side, generator=torch.Generator().manual_seed(1))
    per_image = metrics.image_metrics(target * (1 - hole) + 0.5 * hole, target, hole)
    assert sorted(per_image) == sorted(
        ["hole_psnr", "hole_ssim", "hole_l1", "image_psnr", "image_ssim", "image_l1"]
    )
    summary = metrics.summarize(per_image, buckets)
    assert summary["hole_l1"] == pytest.approx(float(per_image["hole_l1"].mean()))
    assert {label: bucket["count"] for label, bucket in summary["buckets"].items()} == {
        "<10%": 1,
        "10-20%": 1,
        "20-30%": 1,
        ">=30%": 1,
    }
    assert summary["buckets"][">=30%"]["hole_psnr"] == pytest.approx(
        float(per_image["hole_psnr"][3])
    )


# --- baselines ---------------------------------------------------------------------------------


def test_mean_fill_is_exact() -> None:
    images = photo_batch(2, 32)
    hole = square_hole(2, 32, 5, 7, 12)
    colour = torch.tensor([0.2, 0.4, 0.6])
    filled = mean_fill(images, hole, colour)
    inside = hole[:, 0].bool()
    assert torch.equal(filled.permute(0, 2, 3, 1)[inside], colour.expand(int(inside.sum()), 3))
    assert torch.equal(filled.permute(0, 2, 3, 1)[~inside], images.permute(0, 2, 3, 1)[~inside])


def test_telea_beats_mean_fill_on_a_smooth_gradient() -> None:
    rows, columns = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    gradient = torch.stack([rows / 39, columns / 39, (rows + columns) / 78])[None]
    images = (gradient * 255).round() / 255  # exactly representable in uint8, as eval images are
    hole = square_hole(1, 40, 12, 10, 14)
    telea = telea_fill(images, hole)
    mean = mean_fill(images, hole, images.mean((0, 2, 3)))
    assert torch.equal(telea * (1 - hole), images * (1 - hole))
    telea_psnr = float(metrics.psnr(telea, images, hole)[0])
    mean_psnr = float(metrics.psnr(mean, images, hole)[0])
    assert telea_psnr > mean_psnr + 5, (telea_psnr, mean_psnr)  # measured: 26.4 vs 19.2 dB


# --- FID / KID ---------------------------------------------------------------------------------


def gaussian_features(count: int = 400, dims: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(
        count, dims, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def test_fid_identical_shifted_and_scaled_sets() -> None:
    features = gaussian_features()
    assert abs(frechet_distance(features, features)) < 1e-6
    shift = torch.tensor([0.5, -1.0, 0.0, 2.0, 0.0, 0.25], dtype=torch.float64)
    # Same covariance, means apart by `shift`: FID = |shift|^2.
    assert frechet_distance(features, features + shift) == pytest.approx(
        float(shift.square().sum()), rel=1e-6
    )
    # B = 2A + 0.5: cov_B = 4 cov_A, sqrt(cov_A cov_B) = 2 cov_A, so FID = |mu_A - mu_B|^2 + Tr(cov_A).
    scaled = features * 2 + 0.5
    expected = float((features.mean(0) + 0.5).square().sum() + features.var(0).sum())
    assert frechet_distance(features, scaled) == pytest.approx(expected, rel=1e-6)


def test_kid_hand_value_and_subsets() -> None:
    # k(u, v) = (u v + 1)^3 in one dimension: k_xx(0,1) = 1, k_yy(1,2) = 27,
    # k_xy = {1, 1, 8, 27} -> MMD^2_u = 1 + 27 - 2 * 37 / 4 = 9.5.
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[1.0], [2.0]])
    assert kernel_inception_distance(x, y) == (pytest.approx(9.5), 0.0)
    same_a, same_b = gaussian_features(300, seed=1), gaussian_features(300, seed=2)
    near, _ = kernel_inception_distance(same_a, same_b, subset_size=100, subsets=20)
    far, spread = kernel_inception_distance(same_a, same_b + 1.0, subset_size=100, subsets=20)
    assert abs(near) < 0.05 and far > 0.5 and spread > 0


def test_inception_weights_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_inception(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    torch.save({"conv.weight": torch.zeros(1)}, junk)
    with pytest.raises(UserError, match="junk.pth"):
        load_inception(junk)


@pytest.mark.slow
def test_inception_extractor_from_a_local_file(tmp_path: Path) -> None:
    """A randomly initialised torchvision inception_v3 saved like the official file loads, and
    yields 2048-d pool3 features of any input size."""
    from torchvision.models import inception_v3

    path = tmp_path / "inception_v3_google-test.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), path)
    extract = load_inception(path)
    features = extract(torch.rand(2, 3, 40, 56))
    assert features.shape == (2, 2048) and torch.isfinite(features).all()


# --- `ganpaint eval` end to end ------------------------------------------------------------------


def make_run(config, mean_rgb=(0.5, 0.5, 0.5)) -> Path:
    """A 'trained' run dir: freshly initialised tiny nets, exported as training would."""
    run_dir = Path(config.run.dir)
    torch.manual_seed(0)
    nets = build_nets(config.model, config.data.image_px, config.masks.local_px)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_lib.save(config, run_dir / "config.yaml")
    save_export(run_dir / "export", nets.generator, nets.discriminator, config, mean_rgb, 11)
    return run_dir


def run_eval(run: Path, shards: Path, *extra: str) -> int:
    return main(
        [
            "eval",
            "--run",
            str(run),
            "--shards",
            str(shards),
            "--split",
            "val",
            "--count",
            "6",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            *extra,
        ]
    )


def test_eval_reproducible_reuses_holes_and_logs(
    synthetic_shards, make_config, tmp_path, capsys
) -> None:
    run = make_run(make_config(synthetic_shards))
    results = tmp_path / "results"
    assert run_eval(run, synthetic_shards, "--json", str(results / "a.json"), "--seed", "3") == 0
    first_output = capsys.readouterr().out
    holes_file = run / "eval" / "holes-rect-32px-6-seed3.pt"  # beside the run, not the json
    assert f"holes: saved {holes_file}" in first_output and "FID/KID skipped" in first_output
    assert "hole PSNR" in first_output and "Telea" in first_output
    assert run_eval(run, synthetic_shards, "--json", str(results / "b.json"), "--seed", "3") == 0
    assert f"holes: reused {holes_file}" in capsys.readouterr().out
    first = json.loads((results / "a.json").read_text())
    assert first == json.loads((results / "b.json").read_text())
    assert first["images"] == 6 and first["step"] == 11

    # The mean-fill figures, recomputed here in numpy from the saved holes and the raw images.
    holes = torch.load(holes_file, weights_only=True)
    assert holes.dtype == torch.bool and holes.shape == (6, 1, 32, 32)
    images = torch.cat(list(iterate_split(synthetic_shards, "val", 32, 6, limit=6))).numpy() / 255
    hole = holes.numpy()[:, 0]
    mean_rgb = np.array(read_manifest(synthetic_shards)["mean_rgb"])
    hole_l1 = [
        np.abs(image.transpose(1, 2, 0)[inside] - mean_rgb).mean()
        for image, inside in zip(images, hole, strict=True)
    ]
    assert first["results"]["mean_fill"]["hole_l1"] == pytest.approx(np.mean(hole_l1), rel=1e-5)
    assert first["results"]["telea"]["hole_psnr"] > first["results"]["mean_fill"]["hole_psnr"]

    events = EventAccumulator(str(run / "tb")).Reload()
    assert "eval/val/model/hole_psnr" in events.Tags()["scalars"]
    assert events.Scalars("eval/val/telea/hole_l1")[0].value == pytest.approx(
        first["results"]["telea"]["hole_l1"]
    )
    assert events.Tags()["images"] == ["eval/val/original_input_model_telea"]


def test_eval_other_seed_other_holes_and_no_json(
    synthetic_shards, make_config, tmp_path, capsys
) -> None:
    run = make_run(make_config(synthetic_shards))
    for seed in (0, 1):
        assert run_eval(run, synthetic_shards, "--seed", str(seed), "--masks", "thick") == 0
    capsys.readouterr()
    zero, one = (
        torch.load(run / "eval" / f"holes-thick-32px-6-seed{seed}.pt", weights_only=True)
        for seed in (0, 1)
    )
    assert zero.any() and not torch.equal(zero, one)


def test_centre_family_evaluated_on_centre_holes(synthetic_shards, make_config, capsys) -> None:
    config = make_config(
        synthetic_shards,
        **{
            "model.family": "context_encoder",
            "masks.kind": "center",
            "masks.hole_min_px": 16,
            "masks.hole_max_px": 16,
        },
    )
    run = make_run(config)
    assert run_eval(run, synthetic_shards) == 0
    assert "using --masks center" in capsys.readouterr().out
    holes = torch.load(run / "eval" / "holes-center-32px-6-seed0.pt", weights_only=True)
    assert holes[:, :, 8:24, 8:24].all() and holes.sum() == 6 * 16 * 16


def test_injected_feature_extractor_gives_fid_and_kid(synthetic_shards, make_config) -> None:
    config = make_config(synthetic_shards)
    exported = load_generator(make_run(config))
    batches = list(iterate_split(synthetic_shards, "val", 32, 4, limit=8))
    holes = square_hole(8, 32, 8, 8, 12).bool()
    mean_rgb = torch.tensor([0.3, 0.3, 0.3])

    def extractor(images: torch.Tensor) -> torch.Tensor:  # a tiny stand-in for Inception
        return torch.nn.functional.avg_pool2d(images, 16).flatten(1)

    results, preview = evaluate(
        exported,
        mean_rgb,
        batches,
        holes,
        torch.device("cpu"),
        extractor,
    )
    images = torch.cat(batches).float() / 255
    expected = frechet_distance(
        extractor(images), extractor(mean_fill(images, holes.float(), mean_rgb))
    )
    assert results["mean_fill"]["fid"] == pytest.approx(expected)
    assert {"fid", "kid", "kid_std"} <= results["model"].keys() and results["telea"]["fid"] >= 0
    assert preview.shape == (4 * 4, 3, 32, 32)  # 4 images of the first batch x 4 columns


def test_eval_bad_inputs_one_line_exit_2(synthetic_shards, make_config, tmp_path, capsys) -> None:
    run = make_run(make_config(synthetic_shards))
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    holes = run / "eval" / "holes-rect-32px-6-seed0.pt"
    holes.parent.mkdir(exist_ok=True)
    torch.save(torch.zeros(3, dtype=torch.bool), holes)
    cases = [
        ((tmp_path / "no_run", synthetic_shards), "no_run"),
        ((empty_run, synthetic_shards), "empty_run"),
        ((run, tmp_path / "no_shards"), "no_shards"),
        ((run, synthetic_shards, "--split", "nosuchsplit"), "nosuchsplit"),
        ((run, synthetic_shards, "--json", str(tmp_path / "r.json")), holes.name),
        (
            (run, synthetic_shards, "--inception", str(tmp_path / "no_inception.pth")),
            "no_inception.pth",
        ),
    ]
    for (run_dir, shards, *extra), expected in cases:
        assert run_eval(run_dir, shards, *extra) == 2, expected
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and expected in error, error


def test_the_table_has_a_row_per_method_and_bolds_each_columns_best(capsys, monkeypatch):
    def scores(psnr: float, l1: float) -> dict:
        values = {"hole_psnr": psnr, "hole_ssim": psnr / 40, "hole_l1": l1}
        return values | {"buckets": {"<10%": {"count": 3, **values}}}

    report = {"family": "glcic", "step": 7, "images": 3, "split": "val", "masks": "rect", "seed": 0}
    report["results"] = {
        "model": scores(25.0, 0.05),  # best PSNR (higher is better)
        "telea": scores(20.0, 0.04),  # best L1 (lower is better)
        "harmonic_fill": scores(22.0, 0.06),
    }
    print_table(report)
    lines = capsys.readouterr().out.splitlines()
    rows = {}  # method -> its row of the first table (the bucket table repeats the labels)
    for line in lines:
        if line.count("│") > 2:
            rows.setdefault(line.split("│")[1].strip(), line)
    assert {"model", "Telea", "harmonic fill"} <= rows.keys()
    assert "25.00" in rows["model"] and "0.0400" in rows["Telea"]
    assert "hole <10% (n=3)" in "\n".join(lines)

    console = rich.console.Console(record=True, width=200, force_terminal=True)
    monkeypatch.setattr("rich.console.Console", lambda width=None: console)
    print_table(report)
    text = console.export_text(styles=True)
    assert "\x1b[1m25.00" in text and "\x1b[1m0.0400" in text  # bold: the best of each column
    assert "\x1b[1m0.0500" not in text and "\x1b[1m20.00" not in text
