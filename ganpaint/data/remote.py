"""Shard directories on a web server or in an object store (https://, http://, s3://, gs://): their
locations (parsed, joined, shown with credentials masked), reading their manifest, and fetching
their shards through fsspec with per-request timeouts, retries and ranged resumes, each shard
checked against the manifest's sha256 before a sample of it is read, plus the optional local cache
of verified shards.

Reading a shard: its bytes are fetched with ranged requests (over HTTP one GET streamed block by
block; from S3 or GCS chunks of CHUNK_BYTES), hashed as they arrive and written to a local spool
file (in memory up to SPOOL_IN_MEMORY_BYTES, then on disk) or into data.cache_dir. A request that
fails (connection refused or dropped, timeout, HTTP 5xx or 429, a truncated answer) is retried
with exponential backoff and jitter, asking again from the first byte not delivered (from an
object store, from the start of the broken chunk; a timed-out chunk is halved, so a slow store
still makes progress). A read that goes data.remote_timeout_s without receiving a byte ends with
RemoteUnavailable, one line naming the URL; a permanent answer (not found, access denied) ends at
once. Once all the bytes are in,
their sha256 must be the manifest's: only then is the shard handed to the tar reader, so a
tampered shard never yields a sample. With data.on_bad_shard=fail (the default) a mismatch ends
the run; with skip it is counted like a corrupt sample and, in the training stream, the next good
shard of the split is read in its place, so batch positions (and a resume) keep their meaning.

A shard is fetched while the one before it is read (one per reader, in a background thread). The
manifest itself is the root of trust: fetch it over https (or from a bucket you control).

Nothing here builds a URL from manifest text other than the manifest's checked shard names joined
under the directory the user gave: no `pipe:`, no shell, no path outside the prefix. Credentials
come from each library's own sources (aiohttp: ~/.netrc and proxy variables; s3fs: the AWS
environment, ~/.aws, instance roles; gcsfs: Google's application default credentials); a URL that
embeds them (https://user:pass@host/...) works, but is only ever shown masked.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import os
import random
import re
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ganpaint.config.sections import ON_BAD_SHARD
from ganpaint.errors import UserError

if TYPE_CHECKING:
    from ganpaint.config import DataConfig

# scheme -> (the module fsspec needs for it, the ganpaint extra that installs it)
SCHEMES = {
    "http": ("aiohttp", "http"),
    "https": ("aiohttp", "http"),
    "s3": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
}
CHUNK_BYTES = 8 << 20  # one ranged request: a broken one is asked again from its last byte
MIN_CHUNK_BYTES = 256 << 10  # timed-out requests halve the chunk down to this
REQUEST_TIMEOUT_S = 30.0  # one request's limit (and at most a third of data.remote_timeout_s)
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.25, 10.0  # retry pauses double from the first to the max
SPOOL_IN_MEMORY_BYTES = 64 << 20  # a fetched shard beyond this spills to a temporary file
HASH_BLOCK = 1 << 20
MASK = "***"
_URL_CREDENTIALS = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@")
_JITTER = random.Random()  # a private generator: retries never touch the seeded global ones


class RemoteUnavailable(UserError):
    """A remote read that got no byte for data.remote_timeout_s, retries included."""


class BadShard(UserError):
    """A fetched shard whose bytes are not the ones its manifest lists (sha256 or size)."""


# --- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteSettings:
    """The data.* keys that govern remote reads (see DataConfig)."""

    timeout_s: float = 300.0
    on_bad_shard: str = "fail"
    cache_dir: str = ""
    cache_max_gb: float = 50.0


def settings_of(data: DataConfig) -> RemoteSettings:
    """The remote-read settings of a data config; ConfigError (one line) for a bad value."""
    from ganpaint.errors import ConfigError

    if data.on_bad_shard not in ON_BAD_SHARD:
        raise ConfigError(
            f"config key 'data.on_bad_shard': expected one of {', '.join(ON_BAD_SHARD)}, "
            f"got {data.on_bad_shard!r}"
        )
    for key in ("remote_timeout_s", "cache_max_gb"):
        if not getattr(data, key) > 0:
            raise ConfigError(f"config key 'data.{key}': must be > 0, got {getattr(data, key)}")
    return RemoteSettings(
        float(data.remote_timeout_s), data.on_bad_shard, data.cache_dir, float(data.cache_max_gb)
    )


_settings = RemoteSettings()


def configure(data: DataConfig) -> None:
    """Use `data`'s settings for this process's remote reads from now on (shards listed from a
    manifest carry the settings in force when they were listed into DataLoader workers)."""
    global _settings
    _settings = settings_of(data)


def current_settings() -> RemoteSettings:
    return _settings


# --- locations --------------------------------------------------------------------------------


def is_remote(location: Any) -> bool:
    """Whether a shard directory is a URL (scheme://...) rather than a local path."""
    return (
        isinstance(location, str) and re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", location) is not None
    )


def mask(text: Any) -> str:
    """`text` with the credentials of every URL in it replaced by ***."""
    return _URL_CREDENTIALS.sub(rf"\g<1>{MASK}@", str(text))


@dataclass(frozen=True)
class Location:
    """A remote shard directory: the URL as given (credentials and all) and as shown."""

    scheme: str
    url: str  # no trailing slash
    shown: str

    def child(self, name: str) -> tuple[str, str]:
        """(URL, shown URL) of a file of the directory; `name` is a checked plain file name."""
        return f"{self.url}/{name}", f"{self.shown}/{name}"


def parse(text: str) -> Location:
    """A remote shard directory's location; UserError (one line) for a URL ganpaint cannot use."""
    shown = mask(text).rstrip("/")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        schemes = ", ".join(f"{name}://" for name in SCHEMES)
        raise UserError(f"{shown}: unsupported scheme; a shard directory is a path or {schemes}")
    if not parts.hostname or parts.query or parts.fragment:
        raise UserError(f"{shown}: expected {scheme}://HOST/PATH without a query or fragment")
    segments = [segment for segment in parts.path.split("/") if segment]
    if any(segment in (".", "..") for segment in segments):
        raise UserError(f"{shown}: '.' and '..' are refused in a shard directory URL")
    if parts.username == MASK:
        raise UserError(
            f"{shown}: the credentials were masked when this URL was saved; give the URL with "
            "them again (data.shards=...) or keep them in ~/.netrc"
        )
    url = urlunsplit((scheme, parts.netloc, "/".join(["", *segments]), "", ""))
    return Location(scheme, url, mask(url))


def display(shard_dir: Any, name: str) -> str:
    """A file of a shard directory as messages show it (remote: masked URL)."""
    if is_remote(shard_dir):
        return mask(str(shard_dir)).rstrip("/") + "/" + name
    return str(Path(shard_dir) / name)


# --- file systems and requests ----------------------------------------------------------------

_filesystems: dict[tuple[int, str], Any] = {}  # per process: fsspec's event loop is not fork-safe


def filesystem(scheme: str):
    """This process's fsspec file system for `scheme`; UserError naming the extra to install."""
    key = (os.getpid(), scheme)
    if key not in _filesystems:
        module, extra = SCHEMES[scheme]
        try:
            importlib.import_module(module)
        except ImportError:
            raise UserError(
                f"{scheme}:// shards need {module}: pip install 'ganpaint[{extra}]'"
            ) from None
        _filesystems[key] = _new_filesystem(scheme)
    return _filesystems[key]


def _new_filesystem(scheme: str):
    # Retries are ours (bounded by data.remote_timeout_s): the libraries' own are turned down.
    if scheme in ("http", "https"):
        from fsspec.implementations.http import HTTPFileSystem

        # trust_env: proxies from the environment and credentials from ~/.netrc
        return HTTPFileSystem(skip_instance_cache=True, client_kwargs={"trust_env": True})
    if scheme == "s3":
        import s3fs

        system = s3fs.S3FileSystem(
            skip_instance_cache=True,
            use_listings_cache=False,
            config_kwargs={"retries": {"max_attempts": 1}},
        )
        system.retries = 1
        return system
    import gcsfs

    return gcsfs.GCSFileSystem(skip_instance_cache=True, use_listings_cache=False)


def call(scheme: str, method: str, *args, timeout: float, **kwargs):
    """One file-system coroutine (`_cat_file`, `_put_file`, ...) run to completion, or
    FSTimeoutError after `timeout` seconds: a hard limit, whatever the library retries inside."""
    from fsspec.asyn import sync

    system = filesystem(scheme)
    return sync(system.loop, getattr(system, method), *args, timeout=timeout, **kwargs)


def _status(error: BaseException) -> int | None:
    """The HTTP status an error carries: aiohttp's ClientResponseError, gcsfs's HttpError,
    botocore's ClientError."""
    response = getattr(error, "response", None)
    if isinstance(getattr(error, "status", None), int):
        value = error.status  # aiohttp's (whose `code` is deprecated)
    elif isinstance(response, dict):
        value = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    else:
        value = getattr(error, "code", None)
    return value if isinstance(value, int) and 100 <= value < 600 else None


def _permanent(error: BaseException) -> bool:
    """An answer that retrying will not change: not found, access denied, a bad request."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, ValueError)):
        return True
    if isinstance(error, (UserError, TypeError, AttributeError, ImportError)):
        return True
    status = _status(error)
    return status is not None and 400 <= status < 500 and status not in (408, 429)


def _beyond_end(error: BaseException) -> bool:
    """A ranged request past the object's end (HTTP 416; s3fs says EINVAL)."""
    if _status(error) == 416:
        return True
    return (
        isinstance(error, OSError) and error.errno == errno.EINVAL and "range" in str(error).lower()
    )


def _reason(error: BaseException) -> str:
    if isinstance(error, FileNotFoundError):
        return "not found"
    if isinstance(error, PermissionError) or _status(error) in (401, 403):
        return "access denied (check the credentials: docs/remote_shards.md)"
    text = " ".join(str(error).split())[:200]
    return mask(f"{type(error).__name__}: {text}" if text else type(error).__name__)


def _retry_after(error: BaseException) -> float:
    headers = getattr(error, "headers", None) or {}
    try:
        return float(headers.get("Retry-After", 0))
    except (TypeError, ValueError):
        return 0.0


class Budget:
    """The retries of one remote read: pauses that double with jitter, and at most
    `timeout_s` seconds without progress before RemoteUnavailable."""

    def __init__(self, shown: str, timeout_s: float):
        self.shown, self.timeout_s = shown, timeout_s
        self.progressed()

    def progressed(self) -> None:
        self.deadline, self.failures = time.monotonic() + self.timeout_s, 0

    def request_timeout(self, longest: float = REQUEST_TIMEOUT_S) -> float:
        left = self.deadline - time.monotonic()
        return max(0.05, min(longest, self.timeout_s / 3, left))

    def failed(self, error: BaseException) -> None:
        """Pause before the next try; raise when the error is permanent or time is up."""
        if _permanent(error):
            raise UserError(f"{self.shown}: {_reason(error)}") from None
        self.failures += 1
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RemoteUnavailable(
                f"{self.shown}: no answer for {self.timeout_s:g} s (data.remote_timeout_s) after "
                f"{self.failures} tries; last: {_reason(error)}"
            ) from None
        pause = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self.failures - 1))
        pause = max(pause * _JITTER.uniform(0.5, 1.0), _retry_after(error))
        time.sleep(min(pause, left))


def read_bytes(scheme: str, url: str, shown: str, settings: RemoteSettings) -> bytes | None:
    """A whole remote file (retried like a shard); None when it does not exist."""
    budget = Budget(shown, settings.timeout_s)
    while True:
        try:
            return call(scheme, "_cat_file", url, timeout=budget.request_timeout())
        except FileNotFoundError:
            return None
        except Exception as error:  # classified: permanent ones raise, the rest are retried
            budget.failed(error)


def read_text(shard_dir: str, name: str) -> str | None:
    """A small file of a remote shard directory (manifest.json, tokenizer.json) as text; None
    when it does not exist. ValueError if it is not UTF-8."""
    location = parse(shard_dir)
    url, shown = location.child(name)
    data = read_bytes(location.scheme, url, shown, _settings)
    return None if data is None else data.decode()


# --- shards -----------------------------------------------------------------------------------


class RemoteShard(str):
    """A shard of a remote directory. Its text is its URL with credentials masked (what every
    message shows); its attributes are what fetching needs: url, scheme, name, sha256, size and
    the settings in force when it was listed. A str, so the readers' code takes it unchanged,
    and picklable into DataLoader workers."""

    url: str
    scheme: str
    name: str
    sha256: str
    size: int
    settings: RemoteSettings

    def __new__(cls, shown: str, **fields):
        shard = super().__new__(cls, shown)
        shard.__dict__.update(fields)
        return shard


def remote_shards(shard_dir: str, entries: list[dict]) -> list[tuple[RemoteShard, int]]:
    """(shard, sample count) of the manifest entries that hold samples, in order. The names are
    already checked (ganpaint's own `split-NNNNNN.tar`); sha256 and bytes are checked here."""
    location = parse(shard_dir)
    shards = []
    for entry in entries:
        name, sha256, size = entry["name"], entry.get("sha256"), entry.get("bytes")
        if not (isinstance(sha256, str) and re.fullmatch(r"[0-9a-f]{64}", sha256)):
            raise UserError(f"{location.shown}/manifest.json: shard {name} has no sha256")
        if not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
            raise UserError(f"{location.shown}/manifest.json: shard {name} has no byte size")
        if entry["count"]:
            url, shown = location.child(name)
            fields = dict(url=url, scheme=location.scheme, name=name, sha256=sha256, size=size)
            shards.append((RemoteShard(shown, **fields, settings=_settings), entry["count"]))
    return shards


class Received:
    """The bytes of a shard received so far: hashed and written to the sink as they arrive."""

    def __init__(self, sink: IO[bytes]):
        self.sink, self.digest, self.offset = sink, hashlib.sha256(), 0

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self.sink.write(data)
        self.offset += len(data)


async def _get_range(system, url: str, received: Received, end: int, read_timeout: float):
    """GET bytes [received.offset, end) of `url` on fsspec's HTTP session, each block handed to
    `received` as it arrives: a body that breaks off keeps what it delivered."""
    import aiohttp

    session = await system.set_session()
    headers = {"Range": f"bytes={received.offset}-{end - 1}"}
    timeout = aiohttp.ClientTimeout(
        total=None, connect=read_timeout, sock_connect=read_timeout, sock_read=read_timeout
    )
    address = system.encode_url(url) if hasattr(system, "encode_url") else url  # fsspec < 2023.9
    async with session.get(address, headers=headers, timeout=timeout) as response:
        if response.status == 404:
            raise FileNotFoundError(url)
        response.raise_for_status()
        skip = received.offset if response.status == 200 else 0  # a server ignoring Range
        async for block in response.content.iter_chunked(HASH_BLOCK):
            cut = min(skip, len(block))
            skip -= cut
            received.write(block[cut : cut + end - received.offset])
            if received.offset >= end:
                break


def _request_more(shard: RemoteShard, received: Received, chunk: int, timeout: float) -> None:
    """One request for the shard's next bytes: over HTTP a ranged GET streamed to its end, from
    an object store one chunk (fsspec's _cat_file)."""
    if shard.scheme in ("http", "https"):
        from fsspec.asyn import sync

        system = filesystem(shard.scheme)
        # no overall limit: aiohttp's connect and per-read timeouts end a stalled request
        sync(system.loop, _get_range, system, shard.url, received, shard.size, timeout)
        return
    end = min(received.offset + chunk, shard.size)
    start = received.offset
    data = call(shard.scheme, "_cat_file", shard.url, start=start, end=end, timeout=timeout)
    if len(data) > end - start:  # the whole object, not the range
        data = data[start:end]
    received.write(data)


def download(shard: RemoteShard, sink: IO[bytes]) -> tuple[str, int]:
    """Write the shard's bytes into `sink`, hashing them as they arrive: (sha256, bytes). A
    request that breaks off is asked again from the first byte it did not deliver (from an
    object store: from the start of its chunk)."""
    received, chunk = Received(sink), CHUNK_BYTES
    budget = Budget(shard, shard.settings.timeout_s)
    while received.offset < shard.size:
        before = received.offset
        try:
            _request_more(shard, received, chunk, budget.request_timeout())
        except Exception as error:  # classified: permanent ones raise, the rest are retried
            if _beyond_end(error):
                break  # the object is shorter than the manifest says
            if received.offset > before:
                budget.progressed()
            if isinstance(error, TimeoutError):  # a slow store: smaller requests
                chunk = max(MIN_CHUNK_BYTES, chunk // 2)
            budget.failed(error)
            continue
        if received.offset == before:
            break  # an empty answer: the object ends early
        budget.progressed()
    return received.digest.hexdigest(), received.offset


def _mismatch(shard: RemoteShard, digest: str, size: int) -> str:
    if size != shard.size:
        return f"{shard}: {size} bytes, the manifest lists {shard.size}"
    return f"{shard}: sha256 {digest[:16]}..., the manifest lists {shard.sha256[:16]}..."


def file_digest(stream: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: stream.read(HASH_BLOCK), b""):
        digest.update(block)
    return digest.hexdigest()


# --- the local cache of verified shards -------------------------------------------------------

_CACHED_NAME = re.compile(r"[0-9a-f]{64}\.tar")
_PART_NAME = re.compile(r"[0-9a-f]{64}\.part-(\d+)-\d+")


class ShardCache:
    """Verified shards kept under data.cache_dir as SHA256.tar, at most data.cache_max_gb in all,
    the least recently used removed first. The processes of one machine share it: a file
    appears by rename, and one removed while another process reads it stays readable there. Only
    files named like its own are ever removed."""

    def __init__(self, directory: str, max_gb: float):
        self.directory = Path(directory).expanduser()
        self.max_bytes = int(max_gb * 1e9)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, shard: RemoteShard) -> Path:
        return self.directory / f"{shard.sha256}.tar"

    def open(self, shard: RemoteShard) -> IO[bytes] | None:
        """The cached copy, hashed again (a disk can damage it too), or None."""
        path = self.path(shard)
        try:
            stream = open(path, "rb")
        except OSError:
            return None
        if file_digest(stream) != shard.sha256:
            stream.close()
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # recently used: trimmed last
        stream.seek(0)
        return stream

    def spool(self, shard: RemoteShard) -> IO[bytes]:
        name = f"{shard.sha256}.part-{os.getpid()}-{threading.get_ident()}"
        return open(self.directory / name, "w+b")

    def keep(self, shard: RemoteShard, spool: IO[bytes]) -> None:
        """Name the verified spool file as cached (unless the shard alone exceeds the bound),
        then trim the cache to its bound."""
        part = Path(spool.name)
        if shard.size > self.max_bytes:
            part.unlink(missing_ok=True)  # the open file stays readable
            return
        os.replace(part, self.path(shard))
        self.trim()

    def trim(self) -> None:
        cached = []
        for path in self.directory.iterdir():
            part = _PART_NAME.fullmatch(path.name)
            try:
                if part and not _alive(int(part.group(1))):
                    path.unlink()  # left by a process that was killed
                elif _CACHED_NAME.fullmatch(path.name):
                    status = path.stat()
                    cached.append((status.st_mtime, status.st_size, path))
            except FileNotFoundError:
                continue  # another process trimmed it first
        total = sum(size for _, size, _ in cached)
        for _, size, path in sorted(cached):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_caches: dict[tuple[str, float], ShardCache] = {}


def _cache(settings: RemoteSettings) -> ShardCache | None:
    if not settings.cache_dir:
        return None
    key = (settings.cache_dir, settings.cache_max_gb)
    if key not in _caches:
        _caches[key] = ShardCache(*key)
    return _caches[key]


# --- fetching ---------------------------------------------------------------------------------


def fetch(shard: RemoteShard) -> IO[bytes]:
    """The shard's bytes as a local file at offset 0, verified against the manifest (from the
    cache when it holds them); BadShard when they are not the manifest's."""
    cache = _cache(shard.settings)
    if cache is not None and (cached := cache.open(shard)) is not None:
        return cached
    if cache is not None:
        sink = cache.spool(shard)
    else:
        sink = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY_BYTES, "w+b")
    try:
        digest, size = download(shard, sink)
        if (digest, size) != (shard.sha256, shard.size):
            raise BadShard(_mismatch(shard, digest, size))
        if cache is not None:
            cache.keep(shard, sink)
    except BaseException:
        sink.close()
        if cache is not None:
            Path(sink.name).unlink(missing_ok=True)
        raise
    sink.seek(0)
    return sink


class Fetcher:
    """One process's shard fetches: those running ahead (one thread each), the verified ones
    waiting to be read, and the shards found bad, skipped from then on."""

    def __init__(self):
        self.running: dict[str, Future] = {}
        self.ready: dict[str, IO[bytes]] = {}
        self.bad: dict[str, str] = {}

    def prefetch(self, shard: RemoteShard) -> None:
        if shard.url in self.running or shard.url in self.ready or shard.url in self.bad:
            return
        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(fetch(shard))
            except BaseException as error:  # handed to whoever takes the shard
                future.set_exception(error)

        threading.Thread(target=run, name=f"fetch {shard.name}", daemon=True).start()
        self.running[shard.url] = future

    def verify(self, shard: RemoteShard) -> None:
        """Fetch and check the shard unless that is done. A mismatch raises UserError with
        data.on_bad_shard=fail, BadShard (remembered) with skip."""
        if shard.url in self.ready:
            return
        if shard.url in self.bad:
            raise BadShard(self.bad[shard.url])
        future = self.running.pop(shard.url, None)
        try:
            self.ready[shard.url] = future.result() if future else fetch(shard)
        except BadShard as error:
            if shard.settings.on_bad_shard == "fail":
                raise UserError(
                    f"{error}: the shard was changed or damaged; data.on_bad_shard=skip reads on "
                    "without it"
                ) from None
            self.bad[shard.url] = str(error)
            raise

    def open(self, shard: RemoteShard) -> IO[bytes]:
        self.verify(shard)
        return self.ready.pop(shard.url)


_fetchers: dict[int, Fetcher] = {}


def _fetcher() -> Fetcher:
    """This process's fetcher (a DataLoader worker gets its own, not its parent's threads)."""
    return _fetchers.setdefault(os.getpid(), Fetcher())


# --- what the readers call (ganpaint/data/batches.py) ------------------------------------------


def is_shard(path: Any) -> bool:
    return isinstance(path, RemoteShard)


def prefetch(path: str) -> None:
    """Start fetching a remote shard that will be read next; nothing for a local one."""
    if isinstance(path, RemoteShard):
        _fetcher().prefetch(path)


def open_shard(path: RemoteShard) -> IO[bytes]:
    """A remote shard's verified bytes as a local file (see Fetcher.verify for a mismatch)."""
    return _fetcher().open(path)


def usable_shard(paths: list[str], index: int, errors: Any) -> str:
    """paths[index], or, with data.on_bad_shard=skip when that shard fails its check, the first
    of the following shards of the split that passes (the skip counted in `errors`, an
    ErrorCount). A remote shard comes back fetched and verified, ready for open_shard."""
    path = paths[index]
    if not isinstance(path, RemoteShard):
        return path
    reasons = []
    for step in range(len(paths)):
        candidate = paths[(index + step) % len(paths)]
        try:
            _fetcher().verify(candidate)
        except BadShard as error:
            reasons.append(str(error))
            continue
        for reason in reasons:
            errors.skip(f"bad shard {reason}; reading {candidate.name} in its place")
        return candidate
    raise UserError(f"{reasons[0]}: and every other shard of the split fails its check too")
