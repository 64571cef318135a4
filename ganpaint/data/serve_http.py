"""Serving a local shard directory over HTTP on this machine, with Range requests: the loader
benchmark's server for its HTTP-beside-disk figure (ganpaint/data/throughput.py), and the server
the tests inject faults into. Read-only, one directory, bound to 127.0.0.1 unless told otherwise;
it is a measuring and testing tool, not a production file server.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

COPY_BLOCK = 1 << 20
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class ShardRequestHandler(SimpleHTTPRequestHandler):
    """GET and HEAD of the directory's files, with single byte ranges (`bytes=a-b`, `bytes=a-`,
    `bytes=-n`) answered 206; HTTP/1.1 keep-alive. Subclasses may override `send_body`."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.answer(body=True)

    def do_HEAD(self) -> None:
        self.answer(body=False)

    def answer(self, body: bool) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404, "not found")
            return
        size = path.stat().st_size
        span = self.requested_span(size)
        if span is None:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = span
        self.send_response(206 if "Range" in self.headers else 200)
        if "Range" in self.headers:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if body:
            with path.open("rb") as stream:
                stream.seek(start)
                self.send_body(stream, end - start)

    def requested_span(self, size: int) -> tuple[int, int] | None:
        """[start, end) of the Range header (the whole file without one); None if unsatisfiable."""
        header = self.headers.get("Range")
        if header is None:
            return 0, size
        match = _RANGE.fullmatch(header.strip())
        if match is None or match.groups() == ("", ""):
            return None
        first, last = match.groups()
        if first == "":  # the last `last` bytes
            start, end = max(0, size - int(last)), size
        else:
            start, end = int(first), size if last == "" else min(size, int(last) + 1)
        return (start, end) if start < end else None

    def send_body(self, stream: BinaryIO, length: int) -> None:
        shutil.copyfileobj(_Limited(stream, length), self.wfile, COPY_BLOCK)

    def log_message(self, format: str, *args) -> None:
        pass  # quiet: a benchmark and tests read its answers, not its log


class _Limited:
    """The next `length` bytes of a stream, as a readable object."""

    def __init__(self, stream: BinaryIO, length: int):
        self.stream, self.left = stream, length

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.stream.read(size)
        self.left -= len(data)
        return data


@contextmanager
def serve(
    directory: str | os.PathLike,
    handler: type[ShardRequestHandler] = ShardRequestHandler,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Iterator[tuple[ThreadingHTTPServer, str]]:
    """Serve `directory` in a background thread: (server, base URL) while the block runs."""
    server = ThreadingHTTPServer((host, port), partial(handler, directory=str(directory)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="shard server", daemon=True)
    thread.start()
    try:
        yield server, f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
