"""`ganpaint serve` over real HTTP (no browser): the page, the model list, fills, and every kind of
bad input answered in one line while the server keeps serving."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from test_inpaint import make_run, photo
from test_input_guards import BOMB

from ganpaint.cli import main
from ganpaint.completion import biharmonic_fill, harmonic_fill, tension_fill
from ganpaint.errors import UserError
from ganpaint.infer.inpaint import tensor_to_uint8
from ganpaint.infer.windows import Window

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from serve_page import multipart, serving  # noqa: E402

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
from ganpaint.serve import app as app_module  # noqa: E402
from ganpaint.serve.app import create_app  # noqa: E402
from ganpaint.serve.fills import SmoothWindowFill, load_models, model_names  # noqa: E402
from ganpaint.serve.limits import allowed_hosts, host_name  # noqa: E402

LIMIT_ARGS = ["--max-megapixels", "1"]  # small enough to test the limit with small files


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """(url, printed lines, {kind: the name the page lists}) of one server holding three models."""
    root = tmp_path_factory.mktemp("serve")
    glcic, centre = make_run(root / "glcic", "glcic"), make_run(root / "ce", "context_encoder")
    captioned = make_run(root / "captioned", "wgan_unet_caption")
    runs = {"glcic": glcic, "centre": centre, "captioned": captioned}
    with serving(list(runs.values()), *LIMIT_ARGS) as (url, lines):
        yield url, lines, {kind: path.name for kind, path in runs.items()}


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
    """Listed by the run directory's name: no answer reveals where the runs lie."""
    url, _, runs = server
    status, answer = request(url + "api/models")
    listed = {model["name"]: model for model in json.loads(answer)}
    assert status == 200 and set(listed) == {"glcic", "ce", "captioned"}
    assert b"/" not in answer and tempfile.gettempdir().encode() not in answer
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


# The guards that make the page safe to leave running (ganpaint/serve/app.py, limits.py, fills.py)


def port_of(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


def raw_exchange(url: str, data: bytes, close_after_s: float | None = None) -> tuple[bytes, float]:
    """Send `data` on a raw socket; (the answer, seconds until all of it came: b"" when none
    came in 10 s). With close_after_s the client hangs up that long after sending instead."""
    with socket.create_connection(("127.0.0.1", port_of(url)), timeout=10) as connection:
        started = time.perf_counter()
        connection.sendall(data)
        if close_after_s is not None:
            time.sleep(close_after_s)
            return b"", time.perf_counter() - started
        answer = b""
        with contextlib.suppress(TimeoutError):
            while not answer_complete(answer):
                chunk = connection.recv(65536)
                if not chunk:
                    break
                answer += chunk
        return answer, time.perf_counter() - started


def answer_complete(answer: bytes) -> bool:
    head, separator, body = answer.partition(b"\r\n\r\n")
    if not separator:
        return False
    length = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    return bool(length) and len(body) >= int(length[0].split(b":")[1])


def fill_head(url: str, length: int, host: str | None = None) -> bytes:
    host = host or f"127.0.0.1:{port_of(url)}"
    return (
        f"POST /api/fill HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n"
        "Content-Type: multipart/form-data; boundary=zz\r\n\r\n"
    ).encode()


def new_lines(lines: list[str], start: int, wait_s: float = 1.0) -> str:
    time.sleep(wait_s)  # what the server logs about a request comes after its answer
    return "\n".join(lines[start:])


def get(url: str, host: str) -> tuple[int, bytes]:
    request_with_host = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request_with_host, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.parametrize(
    "host", ["evil.example.com", "evil.example.com:{port}", "127.0.0.1.nip.io"]
)
def test_requests_naming_another_host_are_refused(server, host: str) -> None:
    """A page elsewhere may reach 127.0.0.1 under its own name (DNS rebinding): refused."""
    url, _, runs = server
    host = host.format(port=port_of(url))
    for path in ("", "api/models", "static/app.js"):
        status, answer = get(url + path, host)
        error = json.loads(answer)["error"]
        assert status == 400 and host.split(":")[0] in error and "\n" not in error, error
    body, content_type = multipart({"image": png(photo(40, 40)), "mask": png(stroke_mask(40, 40))})
    fill_request = urllib.request.Request(
        url + "api/fill", body, {"Content-Type": content_type, "Host": host}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(fill_request, timeout=30)
    assert refused.value.code == 400


def test_the_loopback_names_are_answered(server) -> None:
    url, _, _ = server
    port = port_of(url)
    for host in (
        f"localhost:{port}",
        f"127.0.0.1:{port}",
        f"[::1]:{port}",
        "LOCALHOST",
        "localhost.",
    ):
        assert get(url + "api/models", host)[0] == 200, host


def test_allowed_hosts_follow_the_listening_address() -> None:
    loopback = {"localhost", "127.0.0.1", "::1"}
    assert allowed_hosts("127.0.0.1", None) == loopback
    assert allowed_hosts("::1", None) == loopback
    assert allowed_hosts("gpu-node.lab", None) == loopback | {"gpu-node.lab"}
    assert allowed_hosts("0.0.0.0", None) is None  # every interface: any name reaches it anyway
    assert allowed_hosts("0.0.0.0", "gpu-node, 10.0.0.5:7860") == loopback | {
        "gpu-node",
        "10.0.0.5",
    }
    assert allowed_hosts("127.0.0.1", "*") is None
    assert [host_name(h) for h in ("[::1]:80", "Example.COM.", "::1", "a:1")] == [
        "::1", "example.com", "::1", "a"
    ]  # fmt: skip


def test_models_are_named_without_their_paths(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "demo", tmp_path / "b" / "demo"
    for run in (a, b):
        (run / "export").mkdir(parents=True)
        (run / "export" / "generator.safetensors").write_bytes(b"")
    assert model_names([str(a), str(tmp_path / "c" / "other")]) == ["demo", "other"]
    assert model_names([str(a), str(b)]) == ["a/demo", "b/demo"]
    with pytest.raises(UserError, match="the same run is given twice"):
        model_names([str(a), str(a / "export" / "generator.safetensors")])


def test_a_false_content_length_is_answered_413_at_once(server) -> None:
    """Judged from Content-Length before a byte of the body is read; no traceback when the
    client then hangs up (it used to hold the connection until the client gave up)."""
    url, lines, _ = server
    start = len(lines)
    answer, seconds = raw_exchange(url, fill_head(url, 999_999_999_999))
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert seconds < 2 and b"resize the photo first" in answer
    assert "Traceback" not in new_lines(lines, start)


def test_a_client_that_hangs_up_mid_upload_leaves_no_traceback(server) -> None:
    url, lines, runs = server
    start = len(lines)
    raw_exchange(url, fill_head(url, 5000) + b"--zz\r\n" + b"x" * 100, close_after_s=0.2)
    assert "Traceback" not in new_lines(lines, start)
    good = {"image": png(photo(40, 40)), "mask": png(stroke_mask(40, 40)), "model": runs["glcic"]}
    assert post_fill(url, **good)[0] == 200


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> list:
    """The glcic test model, opened as `ganpaint serve` opens it, for apps served in-process."""
    run = make_run(tmp_path_factory.mktemp("in_process") / "glcic", "glcic")
    return load_models([str(run)], torch.device("cpu"))


@contextlib.contextmanager
def serving_app(app) -> Iterator[str]:
    """Serve an ASGI app with uvicorn (h11, as `ganpaint serve` does) on a thread; yield its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", access_log=False, http="h11")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def test_a_stalled_upload_is_answered_408(served, capfd) -> None:
    with serving_app(create_app(served, 1, body_idle_s=0.5)) as url:
        answer, seconds = raw_exchange(url, fill_head(url, 1000) + b"--zz\r\nabc")
        assert answer.startswith(b"HTTP/1.1 408 ") and b"stalled" in answer, answer
        assert 0.4 < seconds < 5
    assert "Traceback" not in capfd.readouterr().err


def slow_fill(*args) -> dict:
    time.sleep(1.5)
    return {"slow": True}


def test_a_full_queue_is_answered_503_at_once(served, monkeypatch) -> None:
    """One fill runs, one waits (--queue 1), the others are refused at once; the model list
    answers at once meanwhile."""
    monkeypatch.setattr(app_module, "_fill_response", slow_fill)
    fields = {"image": png(photo(40, 40)), "mask": png(stroke_mask(40, 40)), "model": "glcic"}
    body, content_type = multipart(fields)
    answers = []

    def fill(url: str) -> None:
        started = time.perf_counter()
        status, answer = request(url + "api/fill", body, content_type)
        answers.append((status, json.loads(answer), time.perf_counter() - started))

    with serving_app(create_app(served, 1, queue=1)) as url:
        threads = [threading.Thread(target=fill, args=(url,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        started = time.perf_counter()
        assert request(url + "api/models")[0] == 200
        assert time.perf_counter() - started < 0.5
        for thread in threads:
            thread.join()
    assert sorted(status for status, _, _ in answers) == [200, 200, 503, 503]
    for status, answer, seconds in answers:
        if status == 503:
            assert seconds < 1 and "busy: 1 fills are waiting" in answer["error"], answer


def test_large_holes_are_solved_on_a_reduced_grid(server) -> None:
    url, _, runs = server
    original = cv2.resize(photo(120, 120), (400, 400), interpolation=cv2.INTER_CUBIC)
    mask = np.zeros((400, 400), np.uint8)
    mask[10:-10, 10:-10] = 255  # the hole reaches to 10 px of every edge
    status, answer = post_fill(url, image=png(original), mask=png(mask), model=runs["glcic"])
    assert status == 200, answer
    notes = " ".join(answer["notes"])
    assert "harmonic, biharmonic, tension fills were solved on a grid 1.5x coarser" in notes
    for name in ("harmonic", "biharmonic", "tension"):
        filled = decode(answer["images"][name])
        np.testing.assert_array_equal(filled[mask == 0], original[mask == 0])


def window_tensors(rgb: np.ndarray, hole: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    return image, torch.from_numpy(hole)[None, None].float()


@pytest.mark.parametrize("fill", [harmonic_fill, biharmonic_fill, tension_fill])
def test_small_windows_are_solved_as_before(fill) -> None:
    rgb, hole = np.ascontiguousarray(photo(120, 160)[..., ::-1]), stroke_mask(120, 160) > 127
    smooth = SmoothWindowFill(fill)
    result = smooth(rgb, hole, Window(0, 120, 0, 160, 1.0))
    np.testing.assert_array_equal(result, tensor_to_uint8(fill(*window_tensors(rgb, hole))))
    assert smooth.smallest_scale == 1


@pytest.mark.parametrize("fill", [harmonic_fill, biharmonic_fill, tension_fill])
def test_a_reduced_solve_is_as_close_as_the_full_one(fill) -> None:
    """Across a hole in a colour ramp every smooth fill's exact answer is the ramp. Solved 3x
    coarser and enlarged back, each fill comes no farther from it than its full-size solve
    (whose fixed number of steps leaves more of a large hole unsettled)."""
    rows, columns = np.mgrid[0:160, 0:160]
    rgb = np.dstack([40 + rows * 0.9, 60 + columns * 0.75, 200 - (rows + columns) * 0.4])
    rgb = np.ascontiguousarray(rgb.round().astype(np.uint8))
    hole = np.zeros((160, 160), bool)
    hole[10:-10, 10:-10] = True
    smooth = SmoothWindowFill(fill, budget_px=50 * 50)
    reduced = smooth(rgb, hole, Window(0, 160, 0, 160, 1.0))
    assert 0.3 < smooth.smallest_scale < 0.35
    np.testing.assert_array_equal(reduced[~hole], rgb[~hole])
    full = tensor_to_uint8(fill(*window_tensors(rgb, hole)))
    reduced_error = np.abs(reduced[hole].astype(int) - rgb[hole]).mean()
    assert reduced_error <= np.abs(full[hole].astype(int) - rgb[hole]).mean(), reduced_error


def test_queue_out_of_range_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "glcic", "glcic")
    code = main(["serve", "--run", str(run), "--port", "0", "--queue", "-1", "--device", "cpu"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and "--queue -1" in error, error
