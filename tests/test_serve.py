"""`ganpaint serve` over real HTTP (no browser): the page, the model list, fills, and every kind of
bad input answered in one line while the server keeps serving."""

from __future__ import annotations

import base64
import io
import json
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from test_inpaint import make_run, photo
from test_input_guards import BOMB

from ganpaint.cli import main

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from serve_page import multipart, serving  # noqa: E402

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

LIMIT_ARGS = ["--max-megapixels", "1"]  # small enough to test the limit with small files


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """(url, printed lines, {name: run path}) of one server holding three models."""
    root = tmp_path_factory.mktemp("serve")
    glcic, centre = make_run(root / "glcic", "glcic"), make_run(root / "ce", "context_encoder")
    captioned = make_run(root / "captioned", "wgan_unet_caption")
    runs = {"glcic": glcic, "centre": centre, "captioned": captioned}
    with serving(list(runs.values()), *LIMIT_ARGS) as (url, lines):
        yield url, lines, {name: str(path) for name, path in runs.items()}


def request(url: str, body: bytes | None = None, content_type: str | None = None):
    """(status, body bytes) of one GET or POST; HTTP errors are answers too."""
    headers = {"Content-Type": content_type} if content_type else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def png(pixels: np.ndarray) -> bytes:
    return cv2.imencode(".png", pixels)[1].tobytes()


def post_fill(url: str, **fields) -> tuple[int, dict]:
    body, content_type = multipart(fields)
    status, answer = request(url + "api/fill", body, content_type)
    return status, json.loads(answer)


def decode(data_url: str) -> np.ndarray:
    encoded = base64.b64decode(data_url.split(",", 1)[1])
    return cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_UNCHANGED)


def stroke_mask(height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cv2.line(mask, (width // 4, height // 2), (3 * width // 4, height // 2 + 6), 255, 9)
    return mask


def test_page_and_its_files(server) -> None:
    url, lines, _ = server
    status, page = request(url)
    assert status == 200 and b'id="mask"' in page and b'id="fill"' in page
    assert request(url + "static/app.js")[0] == 200 and request(url + "static/style.css")[0] == 200
    assert "127.0.0.1" in lines[0] and "ssh -L" in lines[1]


def test_models_are_listed_with_their_conditioning(server) -> None:
    url, _, runs = server
    status, answer = request(url + "api/models")
    listed = {model["name"]: model for model in json.loads(answer)}
    assert status == 200 and set(listed) == set(runs.values())
    assert listed[runs["centre"]]["family"] == "context_encoder"
    assert listed[runs["glcic"]]["conditioning"] == "none"
    assert listed[runs["captioned"]]["conditioning"] == "caption"


LAYOUTS = {
    "bgr": lambda pixels: pixels,
    "grey": lambda pixels: cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY),
    "bgra": lambda pixels: np.dstack([pixels, np.arange(160, dtype=np.uint8)[None].repeat(120, 0)]),
}


@pytest.mark.parametrize(
    ("model", "layout"), [("glcic", "bgr"), ("centre", "bgr"), ("glcic", "grey"), ("glcic", "bgra")]
)
def test_fill_changes_only_the_hole(server, model: str, layout: str) -> None:
    """Every fill comes back in the upload's layout (alpha kept), changed only inside the hole."""
    url, _, runs = server
    original = LAYOUTS[layout](photo(120, 160))
    mask = stroke_mask(120, 160)
    status, answer = post_fill(url, image=png(original), mask=png(mask), model=runs[model])
    assert status == 200, answer
    hole = mask > 127
    for name in ("model", "telea", "pyramid", "harmonic", "biharmonic", "tension"):
        filled = decode(answer["images"][name])
        assert filled.shape == original.shape, name
        np.testing.assert_array_equal(filled[~hole], original[~hole])
        assert (filled[hole] != original[hole]).mean() > 0.3, name
        assert answer["timings_ms"][name] > 0
    assert answer["width"] == 160 and len(answer["windows"]) == 1


def test_exif_rotated_photo_is_filled_upright(server) -> None:
    """Browsers show a photo turned by its EXIF orientation, and the mask is painted that way."""
    url, _, runs = server
    stored = Image.fromarray(photo(60, 90)[..., ::-1])  # 90 wide, 60 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: 60 wide, 90 high
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", exif=exif, quality=95)
    mask = stroke_mask(90, 60)
    status, answer = post_fill(url, image=buffer.getvalue(), mask=png(mask), model=runs["glcic"])
    assert status == 200, answer
    assert decode(answer["images"]["model"]).shape[:2] == (90, 60)


BAD_UPLOADS = {
    # case -> (fields, status, text the one-line error must contain)
    "not an image": (
        lambda runs: {"image": b"plain text", "mask": png(stroke_mask(40, 40)), "model": runs["glcic"]},
        400,
        "the photo: not a readable image",
    ),
    "too large": (
        lambda runs: {"image": png(np.zeros((1000, 1200), np.uint8)), "mask": b"x", "model": runs["glcic"]},
        400,
        "1200x1000 px (1.2 MP) is above the 1 MP limit",
    ),
    "decompression bomb": (
        lambda runs: {"image": BOMB, "mask": b"x", "model": runs["glcic"]},
        400,
        "more than 179 MP",
    ),
    "no hole painted": (
        lambda runs: {"image": png(photo(40, 40)), "mask": png(np.zeros((40, 40), np.uint8)), "model": runs["glcic"]},
        400,
        "no hole painted",
    ),
    "everything painted": (
        lambda runs: {"image": png(photo(40, 40)), "mask": png(np.full((40, 40), 255, np.uint8)), "model": runs["glcic"]},
        400,
        "whole photo is painted",
    ),
    "mask of another size": (
        lambda runs: {"image": png(photo(40, 40)), "mask": png(stroke_mask(30, 40)), "model": runs["glcic"]},
        400,
        "mask is 40x30 px, image is 40x40",
    ),
    "hole the model cannot fill": (
        lambda runs: {"image": png(photo(10, 10)), "mask": png(stroke_mask(10, 10)), "model": runs["centre"]},
        400,
        "too small to mirror",
    ),
    "unknown model": (
        lambda runs: {"image": png(photo(40, 40)), "mask": png(stroke_mask(40, 40)), "model": "nope"},
        400,
        "unknown model 'nope'",
    ),
    "no photo": (lambda runs: {"mask": png(stroke_mask(40, 40)), "model": runs["glcic"]}, 400, "no photo"),
    "caption model without a caption": (
        lambda runs: {"image": png(photo(40, 40)), "mask": png(stroke_mask(40, 40)), "model": runs["captioned"]},
        400,
        "conditioned on captions",
    ),
    "caption for a model that takes none": (
        lambda runs: {"image": png(photo(40, 40)), "mask": png(stroke_mask(40, 40)), "model": runs["glcic"], "caption": "a cat"},
        400,
        "not conditioned on captions",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_upload_one_line_and_the_server_keeps_serving(server, case: str) -> None:
    url, _, runs = server
    fields, expected_status, expected = BAD_UPLOADS[case]
    status, answer = post_fill(url, **fields(runs))
    assert status == expected_status and set(answer) == {"error"}, answer
    assert expected in answer["error"] and "\n" not in answer["error"], answer
    good = {"image": png(photo(40, 40)), "mask": png(stroke_mask(40, 40)), "model": runs["glcic"]}
    assert post_fill(url, **good)[0] == 200


def test_malformed_and_oversized_bodies(server) -> None:
    url, _, _ = server
    status, answer = request(url + "api/fill", b"garbage", "multipart/form-data; boundary=zz")
    assert status == 400 and b"malformed upload" in answer
    status, answer = request(url + "api/fill", b"0" * 7_000_000, "multipart/form-data; boundary=zz")
    assert status == 413 and b"resize the photo first" in answer


@pytest.mark.parametrize("case", ["missing run", "port in use", "not an inpainting model"])
def test_serve_refuses_in_one_line(tmp_path: Path, capsys, case: str) -> None:
    run, port = tmp_path / "nothing", "0"
    if case == "not an inpainting model":
        run = make_run(tmp_path / "dcgan", "dcgan")
    busy = socket.create_server(("127.0.0.1", 0))
    if case == "port in use":
        run, port = make_run(tmp_path / "glcic", "glcic"), str(busy.getsockname()[1])
    with busy:
        code = main(["serve", "--run", str(run), "--port", port, "--device", "cpu"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1, error
    assert (port if case == "port in use" else str(run)) in error


def test_a_caption_model_fills_with_its_caption(server) -> None:
    url, _, runs = server
    original, mask = photo(48, 48), stroke_mask(48, 48)
    fields = {"image": png(original), "mask": png(mask), "model": runs["captioned"]}
    status, answer = post_fill(url, **fields, caption="a red circle")
    assert status == 200, answer
    filled = decode(answer["images"]["model"])
    np.testing.assert_array_equal(filled[mask <= 127], original[mask <= 127])
