"""Packing images of every PIL mode and bit depth: each is stored as 8-bit RGB whose mean is the
source's mean on an 8-bit scale (the scales of ganpaint/data/pixels.py), never clipped or
saturated; and the shared conversion of arrays (to_uint8) for any reader of user images."""

from __future__ import annotations

import tarfile
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ganpaint.data.pixels import to_uint8
from ganpaint.data.shards import pack

HEIGHT, WIDTH = 24, 32  # packed at --size 24: stored without resampling, so means are exact


def pattern(low: float, high: float, seed: int = 7) -> np.ndarray:
    """[H, W] float values spread over [low, high] (a ramp plus noise: not one flat colour)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, WIDTH)[None, :] * np.ones((HEIGHT, 1))
    mixed = 0.5 * ramp + 0.5 * rng.random((HEIGHT, WIDTH))
    return low + (high - low) * mixed


def sixteen_bit(path: Path, mode: str, suffix: str) -> float:
    """A 16-bit grey image in `mode`, mean about 127 on the 8-bit scale (~32700 in 16 bits)."""
    values = pattern(2000, 63000).round()
    order = ">u2" if mode == "I;16B" else "<u2"
    Image.frombytes(mode, (WIDTH, HEIGHT), values.astype(order).tobytes()).save(path, suffix)
    return values.mean() * 255 / 65535


def palette(path: Path, transparent: bool) -> float:
    rgb = np.stack([pattern(0, 255), pattern(40, 200, seed=1), pattern(90, 120)], 2)
    image = Image.fromarray(rgb.astype(np.uint8)).quantize(colors=16)
    if transparent:
        image.info["transparency"] = 3
    image.save(path, "PNG", **({"transparency": 3} if transparent else {}))
    colours = np.array(image.getpalette()[: 16 * 3]).reshape(-1, 3)
    return colours[np.asarray(image)].mean()  # alpha dropped: the palette colours themselves


def write_source(path: Path, case: str) -> float:
    """Write the case's image to path; return its mean on the 8-bit scale (alpha dropped)."""
    grey = pattern(10, 245)
    if case == "1":
        bits = grey > 128
        Image.fromarray(bits).save(path, "PNG")
        return bits.mean() * 255
    if case in ("L", "LA"):
        channels = [grey.astype(np.uint8)] + ([pattern(0, 255, seed=2)] * (case == "LA"))
        pixels = np.stack(channels, 2).astype(np.uint8).squeeze()
        Image.fromarray(pixels, case).save(path, "PNG")
        return grey.astype(np.uint8).mean()
    if case.startswith("P"):
        return palette(path, transparent=case == "P transparent")
    if case in ("I;16", "I;16B", "I;16L"):
        return sixteen_bit(path, case, "PNG" if case == "I;16" else "TIFF")
    if case == "I":
        values = pattern(1000, 64000).round().astype(np.int32)
        Image.fromarray(values, "I").save(path, "TIFF")
        return values.mean() * 255 / 65535
    if case == "F":
        values = pattern(0.05, 0.95).astype(np.float32)
        Image.fromarray(values, "F").save(path, "TIFF")
        return values.mean() * 255
    if case == "CMYK":
        cmyk = np.stack([pattern(0, 200), pattern(20, 90), pattern(0, 255), pattern(0, 60)], 2)
        cmyk = cmyk.astype(np.uint8)
        Image.fromarray(cmyk, "CMYK").save(path, "TIFF")
        ink = 255 - cmyk[..., :3].astype(float)
        return (ink * (255 - cmyk[..., 3:].astype(float)) / 255).mean()
    if case == "RGBA":
        rgba = np.stack([grey, pattern(0, 100), pattern(100, 255), pattern(0, 255)], 2)
        Image.fromarray(rgba.astype(np.uint8), "RGBA").save(path, "PNG")
        return rgba.astype(np.uint8)[..., :3].mean()
    assert case == "RGB 16-bit"
    values = np.stack([pattern(0, 65535), pattern(9000, 30000), pattern(30000, 65535)], 2).round()
    cv2.imwrite(str(path), values.astype(np.uint16))
    return values.mean() * 255 / 65535


MODES = [
    "1",
    "L",
    "LA",
    "P",
    "P transparent",
    "I;16",
    "I;16B",
    "I;16L",
    "I",
    "F",
    "CMYK",
    "RGBA",
    "RGB 16-bit",
]


@pytest.mark.parametrize("case", MODES)
def test_every_mode_is_stored_as_8_bit_rgb_with_its_mean(tmp_path: Path, case: str) -> None:
    folder = tmp_path / "in" / "train"
    folder.mkdir(parents=True)
    suffix = ".tif" if case in ("I;16B", "I;16L", "I", "F", "CMYK") else ".png"
    source = folder / f"image{suffix}"
    expected = write_source(source, case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty val and test splits
        manifest = pack(
            "folder", tmp_path / "out", input=tmp_path / "in", size=HEIGHT, image_format="png",
            workers=1, progress=False,
        )  # fmt: skip
    assert manifest["skipped"] == [] and manifest["splits"]["train"]["count"] == 1
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        data = tar.extractfile("train_image.png").read()  # key: the relative path, made safe
    stored = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint8 and stored.shape == (HEIGHT, WIDTH, 3)
    assert 5 < expected < 250  # the case is a real test of the scale, not all black or white
    assert abs(stored.mean() - expected) < 1.0, (case, stored.mean(), expected)


def test_to_uint8_scales_by_dtype() -> None:
    assert to_uint8(np.array([0, 128, 65535], np.uint16)).tolist() == [0, 0, 255]
    assert to_uint8(np.array([32768, 257 * 127], ">u2")).tolist() == [128, 127]
    assert to_uint8(np.array([-5, 65535, 10**6], np.int32)).tolist() == [0, 255, 255]
    floats = np.array([-1, 0.5, 2, np.nan, np.inf], np.float32)
    assert to_uint8(floats).tolist() == [0, 128, 255, 0, 255]
    assert to_uint8(np.array([True, False])).tolist() == [255, 0]
    pixels = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert to_uint8(pixels) is pixels
