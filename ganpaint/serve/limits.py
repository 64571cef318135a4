"""What `ganpaint serve` accepts, as plain values without web code: the Host names it answers, how
many fills may wait, and how large and how slow an upload may be.

Host names: a page the user visits elsewhere can make the browser send requests to 127.0.0.1:PORT
under a name of its own (DNS rebinding) and read the answers. A server started on a loopback
address therefore answers the loopback names only; --host NAME adds that name; --host 0.0.0.0 (or
::) listens on every interface, where anyone may reach it under any name, and answers any
(--allowed-hosts narrows or widens either).
"""

from __future__ import annotations

from dataclasses import dataclass

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
EVERY_INTERFACE = ("0.0.0.0", "::", "")
DEFAULT_QUEUE = 4  # fills waiting behind the running one; more are answered 503 at once
MAX_QUEUE = 64
# A browser on a slow link sends a 40 MP photo in far less; a client that stops sending holds a
# place in the queue until then, no longer.
BODY_IDLE_S = 20.0
BODY_TOTAL_S = 300.0
# An uncompressed 8-bit RGBA photo at the pixel limit, and a mask of at most a byte per pixel:
# a larger body cannot hold a photo the size guard would accept.
UPLOAD_BYTES_PER_PIXEL = 4 + 1
FORM_FRAMING_BYTES = 1 << 20


def upload_limit_bytes(max_megapixels: float) -> int:
    return int(max_megapixels * 1e6 * UPLOAD_BYTES_PER_PIXEL) + FORM_FRAMING_BYTES


@dataclass(frozen=True)
class Limits:
    """What one fill request may ask of the server."""

    max_megapixels: float  # the photo's pixels (its upload's bytes follow)
    body_idle_s: float = BODY_IDLE_S  # the longest silence while the body arrives
    body_total_s: float = BODY_TOTAL_S  # the longest the body may take in all


def host_name(header: str) -> str:
    """The host a Host header (or --host) names, without port: 'LocalHost:7860' -> 'localhost',
    '[::1]:7860' -> '::1', '::1' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    if header.count(":") == 1:
        header = header.split(":")[0]
    return header.rstrip(".")


def allowed_hosts(host: str, extra: str | None) -> frozenset[str] | None:
    """The host names requests may carry (None: any), for a server listening on --host.

    The loopback names always; --host itself when it names one address; any name when --host
    listens on every interface and --allowed-hosts names none. --allowed-hosts "a,b" adds names,
    "*" allows any."""
    names = {host_name(name) for name in (extra or "").split(",") if name.strip()}
    if "*" in names or (host in EVERY_INTERFACE and not names):
        return None
    if host not in EVERY_INTERFACE:
        names.add(host_name(host))
    return LOOPBACK_HOSTS | names
