"""The web application: the page, the model list and the fill endpoint (Starlette, ASGI), and the
guards that make it safe to leave running.

GET  /             the page (static/index.html; its JS and CSS under /static/)
GET  /api/models   [{name, family, step, conditioning, image_px, hole_px}, ...]
POST /api/fill     multipart: image (the photo file as uploaded), mask (PNG, white = hole),
                   model (a name from /api/models), caption (caption-conditioned models only)
                   -> {width, height, windows, timings_ms, notes, images: {model, telea, pyramid,
                                                           harmonic, biharmonic, tension}}
                   with each image a data: URL of a PNG; any error -> 4xx/5xx {"error": one line}

Guards, each answered with one line of JSON while the server keeps serving:
- a Host header that names no allowed host is refused (400) before any route runs: a web page
  the user visits may send requests to 127.0.0.1 under its own name (DNS rebinding);
- an upload is judged by its Content-Length before a byte is read (411 without one, 413 above
  what a --max-megapixels photo can take), and its body must keep arriving (408 after
  body_idle_s of silence, or body_total_s in all);
- at most `queue` fills wait behind the running one; more are refused at once (503);
- a client that goes away is dropped silently (no traceback), and its fill is skipped if it had
  not started.
Fills run one at a time in a worker thread (the net already uses every core), so the event loop
stays responsive. No answer holds a path of the machine: models are listed by name.
"""

from __future__ import annotations

import asyncio
import base64
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ganpaint.errors import UserError
from ganpaint.serve.fills import ServedModel, fill_upload
from ganpaint.serve.limits import (
    BODY_IDLE_S,
    BODY_TOTAL_S,
    DEFAULT_QUEUE,
    LOOPBACK_HOSTS,
    Limits,
    host_name,
    upload_limit_bytes,
)

STATIC = Path(__file__).parent / "static"
MAX_ERROR_CHARS = 300  # errors may quote what the client sent: one readable line, whatever it was


def _one_line(message: str) -> dict:
    """{"error": message} on one line of at most MAX_ERROR_CHARS."""
    line = " ".join(message.split())
    if len(line) > MAX_ERROR_CHARS:
        line = line[: MAX_ERROR_CHARS - 3] + "..."
    return {"error": line}


def _error(message: str, status: int, close: bool = False) -> JSONResponse:
    """The one-line JSON error; `close` ends the connection after it (a body that will not
    arrive is not waited for)."""
    headers = {"Connection": "close"} if close else None
    return JSONResponse(_one_line(message), status_code=status, headers=headers)


class EarlyAnswer(JSONResponse):
    """An error answered before the body it refuses is read (413, 503).

    The answer is sent whole at once (its Content-Length lets the client read it), then what the
    client still sends is read and dropped, for at most the body time limits, and the connection
    is closed. Closing at once would reset a connection the client is still writing to, and a
    client that sends its whole body before it reads (urllib, curl) would see no answer at all.
    """

    def __init__(self, message: str, status: int, limits: Limits) -> None:
        super().__init__(_one_line(message), status, headers={"Connection": "close"})
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        deadline = time.monotonic() + self.limits.body_total_s
        while True:
            wait = max(0.0, min(self.limits.body_idle_s, deadline - time.monotonic()))
            try:
                message = await asyncio.wait_for(receive(), wait)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                break
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class HostCheck:
    """ASGI middleware answering only requests whose Host header names one of `allowed` (any
    host when None). The port is not compared: an SSH tunnel may forward another local port."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str] | None) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.allowed is not None:
            host = Headers(scope=scope).get("host", "")
            if host_name(host) not in self.allowed:
                names = ", ".join(sorted(self.allowed))
                response = _error(
                    f"this server answers requests for {names}, not {host[:80]!r} "
                    "(ganpaint serve --allowed-hosts adds names)",
                    400,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class FillQueue:
    """Fills one at a time, at most `waiting` requests queued behind the running one. A request
    takes its place before its body is read, so the queue also bounds the uploads held in memory."""

    def __init__(self, waiting: int) -> None:
        self.capacity = waiting + 1
        self.admitted = 0
        self._turn: asyncio.Lock | None = None

    def enter(self) -> bool:
        """Take a place (False when full); leave() gives it back."""
        if self.admitted >= self.capacity:
            return False
        self.admitted += 1
        return True

    def leave(self) -> None:
        self.admitted -= 1

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait until no other fill runs (made in the serving loop: the lock binds to it)."""
        if self._turn is None:
            self._turn = asyncio.Lock()
        async with self._turn:
            yield


class UploadStalled(Exception):
    """The body stopped arriving (or took too long in all)."""


async def _read_body(request: Request, idle_s: float, total_s: float) -> bytes:
    """The request body; UploadStalled when nothing arrives for idle_s, or after total_s."""
    chunks, stream = [], request.stream().__aiter__()
    deadline = time.monotonic() + total_s
    while True:
        wait = max(0.0, min(idle_s, deadline - time.monotonic()))
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), wait)
        except StopAsyncIteration:
            return b"".join(chunks)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise UploadStalled from None
        chunks.append(chunk)


def _replayed(request: Request, body: bytes) -> Request:
    """A request over the same scope whose body is `body`, already received."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        return messages.pop() if messages else {"type": "http.disconnect"}

    return Request(request.scope, receive)


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
        f"window(s), model {result.timings_ms['model']:.0f} ms, request {total_ms:.0f} ms"
        + "".join(f"; {note}" for note in result.notes),
        flush=True,
    )
    response = result.describe()
    response["timings_ms"]["request"] = round(total_ms, 1)
    response["images"] = {
        name: "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        for name, png in result.images.items()
    }
    return response


FillHandler = Callable[[Request], Awaitable[Response]]


async def _answer_fill(
    request: Request, models: dict[str, ServedModel], queue: FillQueue, limits: Limits
) -> Response:
    """Read the body (its client keeps its place in `queue` meanwhile), then fill in turn."""
    try:
        body = await _read_body(request, limits.body_idle_s, limits.body_total_s)
        image, mask, name, caption = await _read_form(_replayed(request, body))
        if name not in models:
            raise UserError(f"unknown model {name[:80]!r}; this server has {len(models)}")
        async with queue.turn():
            if await request.is_disconnected():  # gone while waiting: skip its fill
                return Response(status_code=499)
            answer = await run_in_threadpool(
                _fill_response, models[name], image, mask, caption, limits.max_megapixels
            )
        return JSONResponse(answer)
    except ClientDisconnect:  # nobody to answer, nothing to log
        return Response(status_code=499)
    except UploadStalled:
        length = request.headers["content-length"]
        return _error(f"the upload stalled: {length} bytes announced, not sent", 408, close=True)
    except UserError as error:
        return _error(str(error), 400)
    except HTTPException as error:  # a malformed multipart body
        return _error(f"malformed upload: {error.detail}", error.status_code)
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        return _error(f"the fill failed ({type(error).__name__}: {first_line})", 500)


def _fill_handler(models: list[ServedModel], queue: FillQueue, limits: Limits) -> FillHandler:
    """POST /api/fill: refused unread when too large or the queue is full, else _answer_fill."""
    by_name = {model.name: model for model in models}
    max_megapixels = limits.max_megapixels
    limit = upload_limit_bytes(max_megapixels)

    async def fill(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return _error("the upload has no Content-Length; send it as a form from the page", 411)
        if int(length) > limit:
            return EarlyAnswer(
                f"the upload is {int(length) / 1e6:.0f} MB, more than a "
                f"{max_megapixels:g} MP photo can be; resize the photo first",
                413,
                limits,
            )
        if not queue.enter():
            message = f"busy: {queue.capacity - 1} fills are waiting already; try again in a minute"
            return EarlyAnswer(message, 503, limits)
        try:
            return await _answer_fill(request, by_name, queue, limits)
        finally:
            queue.leave()

    return fill


def create_app(
    models: list[ServedModel],
    max_megapixels: float,
    allowed_hosts: frozenset[str] | None = LOOPBACK_HOSTS,
    queue: int = DEFAULT_QUEUE,
    body_idle_s: float = BODY_IDLE_S,
    body_total_s: float = BODY_TOTAL_S,
) -> ASGIApp:
    """The ASGI app serving `models` (opened by load_models) to requests naming `allowed_hosts`
    (None: any), with at most `queue` fills waiting."""

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def list_models(request: Request) -> Response:
        return JSONResponse([model.describe() for model in models])

    limits = Limits(max_megapixels, body_idle_s, body_total_s)
    fill = _fill_handler(models, FillQueue(queue), limits)
    app = Starlette(
        routes=[
            Route("/", page),
            Route("/api/models", list_models),
            Route("/api/fill", fill, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )
    return HostCheck(app, allowed_hosts)
