"""`ganpaint inpaint` on real image files: any size, RGBA, greyscale, folders, blending, bad input."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from skimage import data

from ganpaint import config as config_lib
from ganpaint.cli import main
from ganpaint.data.captions import build_tokenizer
from ganpaint.infer.blend import poisson_blend
from ganpaint.infer.export import save_export
from ganpaint.infer.images import EXIF_ORIENTATION, decode_image
from ganpaint.models import build_nets, registry

TINY = ["model.width=8", "model.disc_width=8"]
FAMILY_OVERRIDES = {
    "glcic": [
        "model.fc_features=16",
        "data.image_px=32",
        "data.resize_min_px=32",
        "data.resize_max_px=32",
        "masks.local_px=16",
        "masks.hole_min_px=4",
        "masks.hole_max_px=12",
    ],
    "context_encoder": [
        "data.image_px=32",
        "data.resize_min_px=32",
        "data.resize_max_px=32",
        "masks.kind=center",
        "masks.local_px=16",
        "masks.hole_min_px=16",
        "masks.hole_max_px=16",
    ],
    "dcgan": ["data.image_px=64", "data.resize_min_px=64", "data.resize_max_px=64"],
}
FAMILY_OVERRIDES["wgan_unet_caption"] = [
    *FAMILY_OVERRIDES["context_encoder"],
    "data.captions=true",
    "model.vocabulary_size=64",
]


def make_run(run_dir: Path, family: str) -> Path:
    """A 'trained' run dir: freshly initialised tiny nets, exported as training would."""
    overrides = [f"model.family={family}", f"run.dir={run_dir}", *TINY, *FAMILY_OVERRIDES[family]]
    config = config_lib.load(None, overrides)
    torch.manual_seed(0)
    nets = build_nets(config.model, config.data.image_px, config.masks.local_px)
    run_dir.mkdir(parents=True)
    config_lib.save(config, run_dir / "config.yaml")
    tokenizer = None
    if registry.get(family).captions:
        tokenizer = build_tokenizer(["a red circle", "a blue square"]).to_str()
    save_export(
        run_dir / "export",
        nets.generator,
        nets.discriminator,
        config,
        (0.4, 0.5, 0.6),
        7,
        tokenizer,
    )
    return run_dir


@pytest.fixture(scope="module")
def glcic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("glcic") / "run", "glcic")


def photo(height: int, width: int) -> np.ndarray:
    """A real photo crop, BGR uint8 [height, width, 3]."""
    return np.ascontiguousarray(data.astronaut()[40 : 40 + height, 150 : 150 + width, ::-1])


def write(path: Path, pixels: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), pixels)
    return path


def read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def blob_mask(height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cv2.circle(mask, (width // 2, height // 2), min(height, width) // 4, 255, -1)
    return mask


def run_inpaint(*args: str) -> int:
    return main(["inpaint", "--device", "cpu", *args])


@pytest.mark.parametrize("blend", ["poisson", "none"])
def test_odd_sized_rgb_keeps_known_pixels(tmp_path: Path, glcic_run: Path, blend: str) -> None:
    original = photo(37, 53)
    mask = blob_mask(37, 53)
    image = write(tmp_path / "photo.jpg", original)  # the decoded JPEG is the reference
    decoded = read(image)
    mask_file = write(tmp_path / "mask.png", mask)
    out = tmp_path / "out.png"
    assert (
        run_inpaint(
            "--run",
            str(glcic_run),
            "--image",
            str(image),
            "--mask",
            str(mask_file),
            "--output",
            str(out),
            "--blend",
            blend,
        )
        == 0
    )
    result = read(out)
    hole = mask > 127
    assert result.shape == decoded.shape and result.dtype == np.uint8
    np.testing.assert_array_equal(result[~hole], decoded[~hole])
    assert (result[hole] != decoded[hole]).any()


def test_rgba_alpha_preserved_and_hole_on_border(tmp_path: Path, glcic_run: Path) -> None:
    bgr = photo(30, 41)
    alpha = np.tile(np.linspace(0, 255, 41).astype(np.uint8), (30, 1))
    original = np.dstack([bgr, alpha])
    image = write(tmp_path / "rgba.png", original)
    out = tmp_path / "out" / "rgba.png"
    # The rect touches the left and top borders: the blend must still fill all of it.
    assert (
        run_inpaint(
            "--weights",
            str(glcic_run / "export" / "generator.safetensors"),
            "--image",
            str(image),
            "--rect",
            "0,0,12,9",
            "--output",
            str(out),
        )
        == 0
    )
    result = read(out)
    hole = np.zeros((30, 41), bool)
    hole[:9, :12] = True
    assert result.shape == (30, 41, 4)
    np.testing.assert_array_equal(result[..., 3], alpha)
    np.testing.assert_array_equal(result[~hole], original[~hole])


def test_greyscale_returns_greyscale(tmp_path: Path, glcic_run: Path) -> None:
    original = cv2.cvtColor(photo(33, 29), cv2.COLOR_BGR2GRAY)
    image = write(tmp_path / "grey.png", original)
    out = tmp_path / "grey_out.png"
    assert (
        run_inpaint(
            "--run",
            str(glcic_run),
            "--image",
            str(image),
            "--rect",
            "5,6,10,8",
            "--output",
            str(out),
        )
        == 0
    )
    result = read(out)
    hole = np.zeros_like(original, bool)
    hole[6:14, 5:15] = True
    assert result.shape == original.shape
    np.testing.assert_array_equal(result[~hole], original[~hole])


def test_folders_matched_by_stem(tmp_path: Path, glcic_run: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    originals = {"a": photo(24, 40), "b": photo(44, 36)}
    for stem, pixels in originals.items():
        write(images / f"{stem}.png", pixels)
        write(masks / f"{stem}.bmp", blob_mask(*pixels.shape[:2]))
    assert (
        run_inpaint(
            "--run",
            str(glcic_run),
            "--image",
            str(images),
            "--mask",
            str(masks),
            "--output",
            str(tmp_path / "out"),
        )
        == 0
    )
    for stem, pixels in originals.items():
        hole = blob_mask(*pixels.shape[:2]) > 127
        np.testing.assert_array_equal(read(tmp_path / "out" / f"{stem}.png")[~hole], pixels[~hole])


@pytest.mark.parametrize("rect", ["30,20,10,12", "0,0,8,8", "60,38,10,12"])
def test_centre_family_fills_a_hole_anywhere(tmp_path: Path, rect: str) -> None:
    """The centre net runs on a square around the hole (mirrored past the border), so a hole
    off the image's centre, in a corner or on an edge is filled, and only the hole changes."""
    run = make_run(tmp_path / "ce", "context_encoder")
    original = photo(50, 70)
    image = write(tmp_path / "photo.png", original)
    out = tmp_path / "out.png"
    assert (
        run_inpaint("--run", str(run), "--image", str(image), "--rect", rect, "--output", str(out))
        == 0
    )
    x, y, w, h = (int(part) for part in rect.split(","))
    hole = np.zeros((50, 70), bool)
    hole[y : y + h, x : x + w] = True
    result = read(out)
    np.testing.assert_array_equal(result[~hole], original[~hole])
    assert (result[hole] != original[hole]).any()


def test_poisson_blend_removes_a_colour_shift() -> None:
    """NORMAL_CLONE keeps the prediction's gradients and the surroundings' colours: a prediction
    that is the photo plus a constant comes back as the photo, also where the hole meets the border."""
    rows, columns = np.mgrid[0:40, 0:60]
    original = np.dstack([rows * 3 + 40, columns * 2 + 50, rows + columns + 30]).astype(np.uint8)
    prediction = (original.astype(int) + 40).astype(np.uint8)
    # inside; in a corner; a full-height strip on the left; a full-width strip at the bottom
    boxes = (np.s_[10:25, 20:40], np.s_[0:12, 45:60], np.s_[:, 0:10], np.s_[30:40, :])
    for hole_box in boxes:
        hole = np.zeros((40, 60), bool)
        hole[hole_box] = True
        blended = poisson_blend(prediction, original, hole, "test")
        assert blended.shape == original.shape and blended.dtype == np.uint8
        error = np.abs(blended[hole].astype(int) - original[hole]).max()
        assert error <= 2, error  # the unblended prediction is off by 40


def test_centre_family_refuses_an_image_too_small_to_mirror(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "ce", "context_encoder")  # trained on 32 px: needs a 32 px square
    image = write(tmp_path / "photo.png", photo(10, 10))
    out = tmp_path / "out.png"
    code = run_inpaint(
        "--run", str(run), "--image", str(image), "--rect", "2,2,4,4", "--output", str(out)
    )
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and "too small" in error, error
    assert not out.exists()


BAD_INPUTS = {
    # case -> (arguments after --image, text the one error line must contain)
    "missing image": (["{tmp}/nothing.png", "--rect", "1,1,4,4"], "nothing.png"),
    "undecodable image": (["{tmp}/garbage.png", "--rect", "1,1,4,4"], "garbage.png"),
    "mask size mismatch": (["{tmp}/photo.png", "--mask", "{tmp}/small_mask.png"], "small_mask.png"),
    "empty mask": (["{tmp}/photo.png", "--mask", "{tmp}/empty_mask.png"], "empty_mask.png"),
    "all-hole mask": (["{tmp}/photo.png", "--mask", "{tmp}/full_mask.png"], "full_mask.png"),
    "missing mask": (["{tmp}/photo.png", "--mask", "{tmp}/no_mask.png"], "no_mask.png"),
    "rect out of bounds": (["{tmp}/photo.png", "--rect", "20,20,30,5"], "--rect"),
    "rect malformed": (["{tmp}/photo.png", "--rect", "1,2,three"], "--rect"),
    "rect whole image": (["{tmp}/photo.png", "--rect", "0,0,32,24"], "--rect"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_exit_2(tmp_path: Path, glcic_run: Path, capsys, case: str) -> None:
    write(tmp_path / "photo.png", photo(24, 32))
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    write(tmp_path / "small_mask.png", np.full((10, 10), 255, np.uint8))
    write(tmp_path / "empty_mask.png", np.zeros((24, 32), np.uint8))
    write(tmp_path / "full_mask.png", np.full((24, 32), 255, np.uint8))
    arguments, expected = BAD_INPUTS[case]
    arguments = [argument.format(tmp=tmp_path) for argument in arguments]
    code = run_inpaint(
        "--run", str(glcic_run), "--image", *arguments, "--output", str(tmp_path / "o.png")
    )
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert len(error.splitlines()) == 1 and expected in error, error
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("family", ["dcgan", "missing"])
def test_unusable_model_one_line_exit_2(tmp_path: Path, capsys, family: str) -> None:
    run = tmp_path / "run"
    if family != "missing":
        make_run(run, family)
    image = write(tmp_path / "photo.png", photo(24, 32))
    code = run_inpaint(
        "--run",
        str(run),
        "--image",
        str(image),
        "--rect",
        "1,1,4,4",
        "--output",
        str(tmp_path / "o.png"),
    )
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and str(run) in error, error


def test_a_hole_far_larger_than_the_trained_ones_is_warned(tmp_path: Path, glcic_run: Path, capsys):
    image = write(tmp_path / "photo.png", photo(120, 160))
    common = ["--run", str(glcic_run), "--image", str(image), "--blend", "none", "--output"]
    assert run_inpaint(*common, str(tmp_path / "small.png"), "--rect", "70,50,10,10") == 0
    assert "warning" not in capsys.readouterr().err  # the tiny net was trained on <= 12 px holes
    assert run_inpaint(*common, str(tmp_path / "large.png"), "--rect", "20,20,100,80") == 0
    assert (
        "the size of those the model was trained on (masks.hole_max_px=12)"
        in capsys.readouterr().err
    )


def exif_jpeg(path: Path, pixels: np.ndarray, orientation: int) -> Path:
    """Save BGR or grey pixels as a JPEG whose EXIF orientation says how to show them."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    rgb = pixels if pixels.ndim == 2 else pixels[..., ::-1]
    Image.fromarray(rgb).save(path, "JPEG", exif=exif, quality=95)
    return path


@pytest.mark.parametrize("layout", ["colour", "grey"])
def test_exif_rotated_photo_is_filled_as_a_viewer_shows_it(
    tmp_path: Path, glcic_run: Path, layout: str
) -> None:
    """A phone photo stored 120x80 with orientation 6 shows 80x120: the mask is drawn on that,
    and the output is written upright, with no tag to turn it again."""
    stored = (
        photo(80, 120) if layout == "colour" else cv2.cvtColor(photo(80, 120), cv2.COLOR_BGR2GRAY)
    )
    image = exif_jpeg(tmp_path / "phone.jpg", stored, 6)
    shown = cv2.imread(str(image), cv2.IMREAD_COLOR)  # OpenCV turns colour decodes itself
    assert shown.shape[:2] == (120, 80)
    mask = np.zeros((120, 80), np.uint8)
    mask[70:90, 20:45] = 255
    out = tmp_path / "out.png"
    code = run_inpaint(
        "--run", str(glcic_run), "--image", str(image),
        "--mask", str(write(tmp_path / "mask.png", mask)), "--output", str(out),
    )  # fmt: skip
    assert code == 0
    result, hole = read(out), mask > 127
    expected = shown if layout == "colour" else cv2.cvtColor(shown, cv2.COLOR_BGR2GRAY)
    assert result.shape == expected.shape
    np.testing.assert_array_equal(result[~hole], expected[~hole])
    assert EXIF_ORIENTATION not in Image.open(out).getexif()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_turned_as_pil_turns_it(orientation: int) -> None:
    pixels = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), np.uint8)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", exif=exif)  # lossless: the same pixels back
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))))
    decoded = decode_image(buffer.getvalue(), "turned.png")[..., ::-1]  # BGR -> RGB
    np.testing.assert_array_equal(decoded, shown)


@pytest.mark.parametrize("layout", ["grey", "colour"])
def test_16_bit_image_is_filled_at_8_bits(tmp_path: Path, glcic_run: Path, layout: str) -> None:
    """16-bit PNGs (grey or colour) are scaled to 8 bits (v * 255 / 65535), greyscale kept."""
    eight = photo(33, 29) if layout == "colour" else cv2.cvtColor(photo(33, 29), cv2.COLOR_BGR2GRAY)
    sixteen = eight.astype(np.uint16) * 257 + np.uint16(100)  # not a plain multiple of 257
    image = write(tmp_path / "deep.png", sixteen)
    assert read(image).dtype == np.uint16
    out = tmp_path / "out.png"
    rect = ["--rect", "5,6,10,8"]
    assert (
        run_inpaint("--run", str(glcic_run), "--image", str(image), *rect, "--output", str(out))
        == 0
    )
    result = read(out)
    hole = np.zeros((33, 29), bool)
    hole[6:14, 5:15] = True
    assert result.dtype == np.uint8 and result.shape == eight.shape
    expected = np.rint(sixteen / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(result[~hole], expected[~hole])
