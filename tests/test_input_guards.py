"""One line, no traceback, nothing allocated: oversized images (refused from their header) and
exports whose metadata does not describe their weights."""

from __future__ import annotations

import json
import shutil
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_inpaint import make_run, photo, run_inpaint, write

from ganpaint.errors import UserError
from ganpaint.infer.images import decode_image


@pytest.fixture(scope="module")
def glcic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("glcic") / "run", "glcic")


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of width x height zeros: a few kB that decode to width*height
    bytes (OpenCV expands it to 8 bits)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is edited to claim width x height."""
    ok, encoded = cv2.imencode(".jpg", photo(16, 16))
    data = bytearray(encoded.tobytes())
    frame = data.index(b"\xff\xc0")
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_png_bomb_is_refused_from_its_header() -> None:
    assert len(BOMB) < 200_000
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"bomb.png: more than 179 MP, above the 40 MP limit"):
        decode_image(BOMB, "bomb.png")
    assert time.perf_counter() - started < 1
    # under the limit the same kind of file decodes: the guard, not the decoder, refused it
    assert decode_image(png_bomb(300, 200), "small.png").shape == (200, 300)


BOMB = png_bomb(20000, 20000)
GUARD_CASES = {
    # case -> (image bytes or None for the photo, mask bytes or None, extra args, expected text)
    "10000x10000 jpeg": (jpeg_claiming(10000, 10000), None, [], "10000x10000 px (100.0 MP)"),
    "20000x20000 png": (BOMB, None, [], "image.png: more than 179 MP"),
    "bomb as the mask": (None, BOMB, [], "mask.png: more than 179 MP"),
    "8000x6000 png": (png_bomb(8000, 6000), None, [], "8000x6000 px (48.0 MP)"),
    "limit lowered": (None, None, ["--max-megapixels", "0.0005"], "above the 0.0005 MP limit"),
}


@pytest.mark.parametrize("case", sorted(GUARD_CASES))
def test_inpaint_refuses_large_images_in_one_line(
    tmp_path: Path, glcic_run: Path, capsys, case: str
) -> None:
    image_bytes, mask_bytes, extra, expected = GUARD_CASES[case]
    run = glcic_run
    image = write(tmp_path / "image.png", photo(24, 32))
    if image_bytes is not None:
        image.write_bytes(image_bytes)
    hole = ["--rect", "2,2,4,4"]
    if mask_bytes is not None:
        (tmp_path / "mask.png").write_bytes(mask_bytes)
        hole = ["--mask", str(tmp_path / "mask.png")]
    out = tmp_path / "out.png"
    code = run_inpaint(
        "--run", str(run), "--image", str(image), *hole, "--output", str(out), *extra
    )
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and expected in error, error
    assert not out.exists()


def edit_metadata(file: Path, edit) -> None:
    """Rewrite an export file with its 'ganpaint' metadata passed through edit(dict) -> dict|str."""
    tensors = load_file(str(file))
    with safe_open(str(file), framework="pt") as handle:
        meta = json.loads(handle.metadata()["ganpaint"])
    edited = edit(meta)
    save_file(
        tensors,
        str(file),
        metadata={"ganpaint": edited if isinstance(edited, str) else json.dumps(edited)},
    )


def _set(meta: dict, path: str, value) -> dict:
    *parents, last = path.split(".")
    node = meta
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return meta


EXPORT_CASES = {
    # case -> (edit of the metadata, text the one line must contain)
    "other width": (lambda m: _set(m, "config.model.width", 16), "do not fit the glcic net"),
    "unknown family": (lambda m: _set(m, "config.model.family", "vae"), "'model.family'"),
    "no mean colour": (lambda m: _set(m, "mean_rgb", KeyError), "'mean_rgb'"),
    "mean colour not a colour": (lambda m: _set(m, "mean_rgb", [0.5, "red", 2]), "'mean_rgb'"),
    "no config": (lambda m: _set(m, "config", KeyError), "no training config"),
    "unknown config key": (lambda m: _set(m, "config.model.colour", 1), "metadata config"),
    "step not a number": (lambda m: _set(m, "step", "seven"), "'step'"),
    "tokenizer not a tokenizer": (
        lambda m: _set(m, "tokenizer", "{broken"),
        "'tokenizer' is not a tokenizer",
    ),
    "not json": (lambda m: "{broken", "not a JSON object"),
    # sizes that allocated until the machine ran out, and megabytes quoted in the error line
    "width 100000": (
        lambda m: _set(m, "config.model.width", 100_000),
        "glcic generator of 14,785,029,950,019 parameters, above the 2,000,000,000",
    ),
    "fc_features 1e9": (
        lambda m: _set(m, "config.model.fc_features", 10**9),
        "glcic discriminator of 772,000,020,726 parameters",
    ),
    "fill iterations 1e9": (
        lambda m: _set(m, "config.model.fill_iterations", 10**9),
        "model.fill_iterations=1000000000 is above 10,000: no ganpaint model",
    ),
    "a 1 MB family name": (
        lambda m: _set(m, "config.model.family", "x" * 1_000_000),
        "'model.family'",
    ),
    "a 1 MB key": (lambda m: _set(m, "config.model." + "y" * 1_000_000, 1), "metadata config"),
}
# An error line quotes what the metadata holds: "ganpaint: error: " and at most 300 characters.
MAX_ERROR_LINE = len("ganpaint: error: ") + 300


@pytest.mark.parametrize("case", [*sorted(EXPORT_CASES), "discriminator file"])
def test_bad_export_is_one_line(tmp_path: Path, glcic_run: Path, capsys, case: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(glcic_run, run)
    weights = run / "export" / "generator.safetensors"
    if case == "discriminator file":
        weights, expected = run / "export" / "discriminator.safetensors", "is a discriminator"
    else:
        edit, expected = EXPORT_CASES[case]
        edit_metadata(weights, edit)
    image = write(tmp_path / "image.png", photo(24, 32))
    code = run_inpaint(
        "--weights", str(weights), "--image", str(image), "--rect", "2,2,4,4",
        "--output", str(tmp_path / "out.png"),
    )  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1, error[:1000]
    assert str(weights) in error and expected in error, error[:1000]
    assert len(error) <= MAX_ERROR_LINE, error[:1000]


def test_unedited_export_still_loads(tmp_path: Path, glcic_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(glcic_run, run)
    weights = run / "export" / "generator.safetensors"
    edit_metadata(weights, lambda meta: meta)
    image = write(tmp_path / "image.png", photo(24, 32))
    out = tmp_path / "out.png"
    code = run_inpaint(
        "--weights", str(weights), "--image", str(image), "--rect", "2,2,4,4", "--output", str(out)
    )
    assert code == 0 and cv2.imread(str(out)).shape == (24, 32, 3)
    assert np.array_equal(cv2.imread(str(out))[0, 0], photo(24, 32)[0, 0])


def test_non_finite_weights_are_refused_in_one_line(tmp_path: Path, glcic_run: Path, capsys):
    """A diverged export (NaN or infinite weights) used to fill every hole with black."""
    run = tmp_path / "run"
    shutil.copytree(glcic_run, run)
    weights = run / "export" / "generator.safetensors"
    tensors = load_file(str(weights))
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
    names = sorted(name for name, tensor in tensors.items() if tensor.is_floating_point())
    for name, value in zip(names[:3], (float("nan"), float("inf"), -float("inf")), strict=True):
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = value
    save_file(tensors, str(weights), metadata=metadata)
    image = write(tmp_path / "image.png", photo(24, 32))
    out = tmp_path / "out.png"
    code = run_inpaint(
        "--weights", str(weights), "--image", str(image), "--rect", "2,2,4,4", "--output", str(out)
    )
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1, error
    assert f"{weights}: 3 of {len(tensors)} tensors hold NaN or infinite values" in error, error
    assert not out.exists()
