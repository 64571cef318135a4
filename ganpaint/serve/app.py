"""The web application: the page, the model list and the fill endpoint (Starlette, ASGI).

GET  /             the page (static/index.html; its JS and CSS under /static/)
GET  /api/models   [{name, family, step, conditioning, image_px, hole_px}, ...]
POST /api/fill     multipart: image (the photo file as uploaded), mask (PNG, white = hole),
                   model (a name from /api/models), caption (caption-conditioned models only)
                   -> {width, height, windows, timings_ms, images: {model, telea, pyramid, harmonic,
                                                                  biharmonic, tension}}
                   with each image a data: URL of a PNG; any error -> 4xx/5xx {"error": one line}

Every error answers the request with one line and leaves the server serving. Fills run one at a
time in a worker thread (the net already uses every core), so the event loop stays responsive.
"""

from __future__ import annotations

import base64
import sys
import threading
import time
import traceback
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ganpaint.errors import UserError
from ganpaint.serve.fills import ServedModel, fill_upload

STATIC = Path(__file__).parent / "static"
# An uncompressed 8-bit RGBA photo at the pixel limit, and a mask of at most a byte per pixel:
# a larger body cannot hold a photo the size guard would accept.
UPLOAD_BYTES_PER_PIXEL = 4 + 1
FORM_FRAMING_BYTES = 1 << 20


def upload_limit_bytes(max_megapixels: float) -> int:
    return int(max_megapixels * 1e6 * UPLOAD_BYTES_PER_PIXEL) + FORM_FRAMING_BYTES


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_form(request: Request) -> tuple[bytes, bytes, str, str | None]:
    """(photo, mask, model name, caption) of a fill request; UserError for a missing part."""
    async with request.form(max_files=2, max_fields=4, max_part_size=64 * 1024) as form:
        image, mask = form.get("image"), form.get("mask")
        image = await image.read() if isinstance(image, UploadFile) else None
        mask = await mask.read() if isinstance(mask, UploadFile) else None
        name, caption = form.get("model"), form.get("caption")
    if not image:
        raise UserError("no photo: choose or drop a photo first")
    if not mask:
        raise UserError("no mask sent with the photo")
    return image, mask, str(name), caption if isinstance(caption, str) else None


def _fill_response(
    model: ServedModel, image: bytes, mask: bytes, caption: str | None, max_megapixels: float
) -> dict:
    """Run one fill (in a worker thread) and shape the JSON answer; logs one line."""
    started = time.perf_counter()
    result = fill_upload(model, image, mask, caption, max_megapixels)
    total_ms = (time.perf_counter() - started) * 1000
    print(
        f"fill: {model.name}, {result.width}x{result.height} px, {len(result.windows)} "
        f"window(s), model {result.timings_ms['model']:.0f} ms, request {total_ms:.0f} ms",
        flush=True,
    )
    response = result.describe()
    response["timings_ms"]["request"] = round(total_ms, 1)
    response["images"] = {
        name: "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        for name, png in result.images.items()
    }
    return response


def create_app(models: list[ServedModel], max_megapixels: float) -> Starlette:
    """The ASGI app serving `models` (opened by load_models)."""
    by_name = {model.name: model for model in models}
    limit = upload_limit_bytes(max_megapixels)
    one_fill_at_a_time = threading.Lock()

    def locked_fill(model: ServedModel, image: bytes, mask: bytes, caption: str | None) -> dict:
        with one_fill_at_a_time:
            return _fill_response(model, image, mask, caption, max_megapixels)

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def list_models(request: Request) -> Response:
        return JSONResponse([model.describe() for model in models])

    async def fill(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return _error("the upload has no Content-Length; send it as a form from the page", 411)
        if int(length) > limit:
            # read it to the end (discarding it): a client cut off mid-send sees no answer at all
            async for _ in request.stream():
                pass
            return _error(
                f"the upload is {int(length) / 1e6:.0f} MB, more than a "
                f"{max_megapixels:g} MP photo can be; resize the photo first",
                413,
            )
        try:
            image, mask, name, caption = await _read_form(request)
            if name not in by_name:
                raise UserError(f"unknown model {name[:80]!r}; this server has {len(models)}")
            answer = await run_in_threadpool(locked_fill, by_name[name], image, mask, caption)
            return JSONResponse(answer)
        except UserError as error:
            return _error(str(error), 400)
        except HTTPException as error:  # a malformed multipart body
            return _error(f"malformed upload: {error.detail}", error.status_code)
        except Exception as error:
            traceback.print_exc(file=sys.stderr)
            first_line = (str(error).strip().splitlines() or [""])[0][:200]
            return _error(f"the fill failed ({type(error).__name__}: {first_line})", 500)

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/models", list_models),
            Route("/api/fill", fill, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )
