"""Shards from a URL: the same stream as from disk over HTTP (a threaded localhost server that
injects dropped connections, 5xx, 429, slow, stalled and truncated answers) and from S3 (moto's
standalone server), sha256 checks before any sample is read, the cache, credentials kept out of
what is saved, bounded waits when the server is gone, and packing into a bucket.

Every test that talks to a server runs under `within(seconds)`: a hang fails it. The S3 tests
skip when moto or s3fs is not installed.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from test_stream import identity_data as stream_identity_data

from ganpaint import config as config_lib
from ganpaint.cli import main
from ganpaint.config import DataConfig
from ganpaint.data import remote
from ganpaint.data.serve_http import ShardRequestHandler, serve
from ganpaint.data.shards import pack
from ganpaint.data.stream import iterate_split, read_manifest, train_loader, val_batch
from ganpaint.errors import UserError
from ganpaint.training.loop import train

# --- helpers -------------------------------------------------------------------------------------


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fail the test if the block runs longer than `seconds` (a hang, not a slow answer)."""

    def hang(number, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Fault:
    """What the server does to the next `times` requests whose path ends with `name`."""

    kind: str  # drop | status | truncate | slow | stall
    name: str = ".tar"
    times: int = 1
    status: int = 500
    seconds: float = 0.0


class FaultyHandler(ShardRequestHandler):
    """The shard server, with the faults queued on its server object."""

    def answer(self, body: bool) -> None:
        server = self.server
        with server.lock:
            server.requests.append((self.path, self.headers.get("Range")))
            self.fault = next((f for f in server.faults if self.path.endswith(f.name)), None)
            if self.fault is not None:
                self.fault.times -= 1
                if not self.fault.times:
                    server.faults.remove(self.fault)
        kind = self.fault.kind if self.fault else None
        if kind == "drop":
            self.close_connection = True  # no answer at all
        elif kind == "status":
            self.send_response(self.fault.status)
            if self.fault.status == 429:
                self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            if kind == "stall":
                time.sleep(self.fault.seconds)
            super().answer(body)

    def send_body(self, stream, length: int) -> None:
        kind = self.fault.kind if self.fault else None
        if kind == "truncate":  # half the promised bytes, then the connection closes
            self.wfile.write(stream.read(length // 2))
            self.wfile.flush()
            time.sleep(0.2)
            self.close_connection = True
        elif kind == "slow":  # the body in 20 pieces over `seconds`
            for _ in range(20):
                self.wfile.write(stream.read(-(-length // 20)))
                self.wfile.flush()
                time.sleep(self.fault.seconds / 20)
        else:
            super().send_body(stream, length)


@contextmanager
def shard_server(directory: Path, user: str = "") -> Iterator:
    """Serve `directory` with fault injection: (server, URL of the directory)."""
    with serve(directory, FaultyHandler) as (server, url):
        server.lock, server.faults, server.requests = threading.Lock(), [], []
        server.handle_error = lambda request, address: None  # a client that gave up: expected
        if user:
            url = url.replace("http://", f"http://{user}@")
        yield server, url


def identity_data(shards, **changes) -> DataConfig:
    """The stream test's identity crops (stored 64-px images as they are), short remote timeouts."""
    return stream_identity_data(shards, **{"remote_timeout_s": 4.0, **changes})


def take(data: DataConfig, count: int, start: int = 0, batch: int = 4, **options) -> list:
    stream = train_loader(data, batch, rank=0, world_size=1, seed=3, start_step=start, **options)
    try:
        return [next(stream) for _ in range(count)]
    finally:
        stream.close()


def same(first: list, second: list) -> bool:
    return len(first) == len(second) and all(
        torch.equal(a, b) for a, b in zip(first, second, strict=True)
    )


def shard_pixels(path: Path) -> set[bytes]:
    """The decoded pixels of a shard's images (as bytes), read without the project's code."""
    import cv2

    found = set()
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            if member.name.endswith(".jpg"):
                data = np.frombuffer(tar.extractfile(member).read(), np.uint8)
                image = cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].transpose(2, 0, 1)
                found.add(np.ascontiguousarray(image).tobytes())
    return found


@pytest.fixture(scope="module")
def served(synthetic_shards, tmp_path_factory) -> Iterator:
    """A copy of the synthetic shards behind the fault-injecting server: (server, URL, dir)."""
    directory = tmp_path_factory.mktemp("served") / "shards"
    shutil.copytree(synthetic_shards, directory)
    with shard_server(directory.parent) as (server, url):
        yield server, url + "/shards", directory


@pytest.fixture
def http(served):
    """The module's server with no faults queued and an empty request log."""
    server, url, directory = served
    server.faults.clear()
    server.requests.clear()
    remote._fetchers.clear()  # nothing prefetched or remembered from another test
    return server, url, directory


# --- locations and settings ----------------------------------------------------------------------


def test_locations_are_parsed_masked_and_refused_in_one_line():
    location = remote.parse("https://user:secret@example.org/data/shards/")
    assert location.url == "https://user:secret@example.org/data/shards"
    assert location.shown == "https://***@example.org/data/shards"
    assert (
        location.child("train-000000.tar")[1]
        == "https://***@example.org/data/shards/train-000000.tar"
    )
    assert remote.parse("s3://bucket/prefix").scheme == "s3"
    assert remote.parse("gs://bucket").url == "gs://bucket"
    assert remote.is_remote("s3://b/p") and not remote.is_remote("shards/synthetic")
    assert remote.mask("at http://a:b@h/x and s3://k@b/y") == "at http://***@h/x and s3://***@b/y"
    for bad, reason in (
        ("ftp://host/shards", "unsupported scheme"),
        ("https://host/shards?token=1", "without a query"),
        ("https://host/a/../b", "'..' are refused"),
        ("https://***@host/shards", "credentials were masked"),
        ("s3:///prefix", "expected s3://HOST/PATH"),
    ):
        with pytest.raises(UserError, match=reason) as caught:
            remote.parse(bad)
        assert "\n" not in str(caught.value)
    assert remote.display("s3://b/p/", "manifest.json") == "s3://b/p/manifest.json"


def test_a_missing_extra_is_named(monkeypatch):
    real = remote.importlib.import_module

    def without_gcsfs(name, *args):
        if name == "gcsfs":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(remote.importlib, "import_module", without_gcsfs)
    monkeypatch.setattr(remote, "_filesystems", {})
    with pytest.raises(UserError, match=r"pip install 'ganpaint\[gcs\]'"):
        remote.filesystem("gs")


def test_bad_settings_name_their_key():
    with pytest.raises(UserError, match="data.on_bad_shard"):
        remote.settings_of(DataConfig(on_bad_shard="ignore"))
    with pytest.raises(UserError, match="data.remote_timeout_s"):
        remote.settings_of(DataConfig(remote_timeout_s=0))


def test_remote_shards_survive_pickling_into_workers(http):
    _, url, _ = http
    remote.configure(identity_data(url, on_bad_shard="skip"))
    shards = remote.remote_shards(url, read_manifest(url)["splits"]["val"]["shards"])
    shard = pickle.loads(pickle.dumps(shards[0][0]))
    assert shard == f"{url}/val-000000.tar" and shard.url == shard and shard.size > 0
    assert shard.settings.on_bad_shard == "skip" and len(shard.sha256) == 64


# --- the same stream as from disk ----------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_http_stream_equals_the_disk_stream_and_resumes_at_any_batch(
    http, synthetic_shards, workers
):
    _, url, _ = http
    disk = identity_data(synthetic_shards, shuffle_buffer=16, hflip=True, workers=workers)
    disk = dataclasses.replace(disk, resize_max_px=80)  # random crops of enlarged images
    over_http = dataclasses.replace(disk, shards=url)
    with within(30):
        expected = take(disk, 30)  # 120 images: more than an epoch of 96
        assert same(take(over_http, 30), expected)
        assert same(take(over_http, 13, start=17), expected[17:])
    ranged = [header for path, header in http[0].requests if path.endswith(".tar")]
    assert ranged and all(header.startswith("bytes=0-") for header in ranged)


def test_validation_and_evaluation_batches_equal_the_disk_ones(http, synthetic_shards):
    _, url, _ = http
    with within(20):
        assert torch.equal(
            val_batch(identity_data(url), 12), val_batch(identity_data(synthetic_shards), 12)
        )
        disk = list(iterate_split(synthetic_shards, "train", 32, 16, limit=40))
        assert same(list(iterate_split(url, "train", 32, 16, limit=40)), disk)
    assert read_manifest(url) == read_manifest(synthetic_shards)


# --- transient failures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        [Fault("drop", times=2)],
        [Fault("status", status=500, times=2), Fault("status", status=503)],
        [Fault("status", status=429, times=3)],
        [Fault("stall", seconds=2.5)],  # the request times out (1.3 s), the next one answers
        [Fault("slow", seconds=1.0, times=2)],  # slow but steady: no timeout, no retry
        [Fault("drop", name="manifest.json"), Fault("status", name="manifest.json")],
    ],
    ids=["dropped", "5xx", "429", "stalled", "slow", "manifest"],
)
def test_transient_failures_are_retried_to_the_same_stream(http, synthetic_shards, faults):
    server, url, _ = http
    expected = take(identity_data(synthetic_shards), 8)
    server.faults.extend(faults)
    with within(20):
        assert same(take(identity_data(url), 8), expected)
    assert not server.faults  # every fault was met


def test_a_broken_answer_resumes_where_it_broke(http, synthetic_shards):
    server, url, directory = http
    name = read_manifest(url)["splits"]["val"]["shards"][0]["name"]
    size = (directory / name).stat().st_size
    server.faults.append(Fault("truncate", name=name))
    with within(20):
        expected = list(iterate_split(synthetic_shards, "val", 64, 16))
        assert same(list(iterate_split(url, "val", 64, 16)), expected)
    asked = [header for path, header in server.requests if path.endswith(name)]
    assert asked[0] == f"bytes=0-{size - 1}" and len(asked) == 2
    resumed_at = int(asked[1].removeprefix("bytes=").split("-")[0])
    assert 0 < resumed_at < size  # from the first byte not delivered, not from the start


def test_a_server_that_is_gone_ends_the_run_within_the_bound(synthetic_shards, tmp_path):
    directory = tmp_path / "shards"
    shutil.copytree(synthetic_shards, directory)
    with shard_server(tmp_path, user="me:secret") as (server, url):
        data = identity_data(url + "/shards", remote_timeout_s=2.0, workers=2)
        stream = train_loader(data, 4, rank=0, world_size=1, seed=0, start_step=0)
    started = time.monotonic()  # the server is shut down: every read now fails
    with within(30), pytest.raises(UserError) as caught:
        for _ in range(100):
            next(stream)
    stream.close()
    message = str(caught.value)
    assert time.monotonic() - started < 15
    assert "no answer for 2 s" in message and "***@127.0.0.1" in message
    assert "secret" not in message and "\n" not in message


def test_a_missing_shard_or_manifest_is_one_line(http, tmp_path):
    _, url, _ = http
    with within(10):
        with pytest.raises(UserError, match="manifest.json: not found; pack shards first"):
            read_manifest(url + "/nothing-here")
        with pytest.raises(UserError, match="unsupported scheme"):
            read_manifest("ftp://127.0.0.1/shards")


# --- integrity -----------------------------------------------------------------------------------


@pytest.fixture
def tampered(synthetic_shards, tmp_path) -> Iterator:
    """The shards served with one byte of train-000002.tar changed: (URL, original shard)."""
    directory = tmp_path / "shards"
    shutil.copytree(synthetic_shards, directory)
    shard = directory / "train-000002.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    remote._fetchers.clear()
    with shard_server(tmp_path) as (_, url):
        yield url + "/shards", synthetic_shards / "train-000002.tar"


def test_a_tampered_shard_fails_the_run_naming_it(tampered):
    url, _ = tampered
    with within(20), pytest.raises(UserError) as caught:
        take(identity_data(url, workers=2), 24)  # an epoch reads every shard
    message = str(caught.value)
    assert "train-000002.tar: sha256" in message and "data.on_bad_shard=skip" in message
    with within(20), pytest.raises(UserError, match="train-000002.tar: sha256"):
        list(iterate_split(url, "train", 64, 16))


def test_a_tampered_shard_is_skipped_and_counted_never_read(tampered):
    url, original = tampered
    data = identity_data(url, on_bad_shard="skip")
    with within(20), pytest.warns(UserWarning, match=r"bad shard .*train-000002\.tar: sha256"):
        pairs = take(data, 48, counted=True)  # two epochs
    assert sum(skipped for _, skipped in pairs) == 2  # once per epoch
    seen = {image.numpy().tobytes() for batch, _ in pairs for image in batch}
    assert not seen & shard_pixels(original)  # none of its images, tampered or not
    with within(20), pytest.warns(UserWarning, match="bad shard"):
        assert len(torch.cat(list(iterate_split(url, "train", 64, 16)))) == 80


def test_a_shard_cut_short_is_a_bad_shard_and_a_missing_one_ends_the_run(
    synthetic_shards, tmp_path
):
    directory = tmp_path / "shards"
    shutil.copytree(synthetic_shards, directory)
    short = directory / "train-000004.tar"
    short.write_bytes(short.read_bytes()[:5000])
    remote._fetchers.clear()
    with shard_server(tmp_path) as (_, url):
        data = identity_data(url + "/shards", on_bad_shard="skip")
        with within(20), pytest.warns(UserWarning, match="5000 bytes, the manifest lists"):
            assert len(take(data, 24)) == 24
        (directory / "train-000005.tar").unlink()
        remote._fetchers.clear()
        with within(20), pytest.raises(UserError, match=r"train-000005\.tar: not found"):
            take(data, 24)


# --- the cache -----------------------------------------------------------------------------------


def test_the_cache_keeps_verified_shards_within_its_bound(synthetic_shards, tmp_path):
    directory = tmp_path / "served" / "shards"
    shutil.copytree(synthetic_shards, directory)
    cache = tmp_path / "cache"
    shard_bytes = (directory / "train-000000.tar").stat().st_size
    expected = take(identity_data(synthetic_shards), 24)
    remote._fetchers.clear()
    with shard_server(directory.parent) as (server, url):
        data = identity_data(url + "/shards", cache_dir=str(cache))
        with within(20):
            assert same(take(data, 24), expected)
        server.faults.append(Fault("status", status=404, times=1000))  # nothing answers now
        remote._fetchers.clear()
        with within(20):
            assert same(take(data, 24), expected)  # every shard from the cache
        cached = sorted(path.name for path in cache.iterdir())
        assert len(cached) == 6 and all(name.endswith(".tar") for name in cached)
        # a cached copy damaged on disk is fetched again; a small bound keeps the newest
        (cache / cached[0]).write_bytes(b"damaged")
        server.faults.clear()
        small = dataclasses.replace(data, cache_max_gb=2.5 * shard_bytes / 1e9)
        remote._fetchers.clear()
        with within(20):
            assert same(take(small, 24), expected)
    assert len(list(cache.iterdir())) == 2


def test_the_loader_benchmark_gives_http_beside_disk(synthetic_shards, capsys):
    from ganpaint.data.throughput import main as throughput

    arguments = [str(synthetic_shards), "--image-px", "32", "--workers", "0", "--http"]
    with within(30):
        throughput([*arguments, "--batches", "3", "--batch-size", "4"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [row[0] for row in rows] == ["disk", "http"]
    assert float(rows[0][-1]) == 1.0 and float(rows[1][-1]) > 0


# --- training: the same losses, no credentials saved ---------------------------------------------

TINY_RUN = {
    "schedule.completion_steps": 2,
    "schedule.discriminator_steps": 2,
    "schedule.total_steps": 6,
    "log.every_steps": 1,
    "data.workers": 2,
}


def losses(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    return [{key: value for key, value in row.items() if "loss" in key} for row in rows]


def test_training_from_http_logs_the_losses_of_training_from_disk(
    synthetic_shards, make_config, tmp_path
):
    disk = make_config(synthetic_shards, **TINY_RUN, **{"run.dir": str(tmp_path / "disk")})
    with within(60):
        train(disk)
        with shard_server(synthetic_shards.parent, user="me:secret") as (_, url):
            address = f"{url}/{synthetic_shards.name}"
            run_dir = tmp_path / "http"
            config = make_config(address, **TINY_RUN, **{"run.dir": str(run_dir)})
            train(config)
    assert losses(run_dir) == losses(tmp_path / "disk") and len(losses(run_dir)) == 6
    saved = config_lib.load(run_dir / "config.yaml")
    assert saved.data.shards == address.replace("me:secret", "***")
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert b"secret" not in path.read_bytes(), path


# --- S3 (moto's standalone server) ---------------------------------------------------------------

BUCKET = "ganpaint-test"


@pytest.fixture(scope="module")
def s3(synthetic_shards) -> Iterator[str]:
    """moto's S3 server on a free port, the AWS variables pointing at it, a bucket holding the
    synthetic shards under `synthetic/`: yields s3://BUCKET."""
    pytest.importorskip("moto")
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    environment = {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
    }
    try:
        _wait_for(f"http://127.0.0.1:{port}/", server)
        with pytest.MonkeyPatch.context() as patch:
            for key, value in environment.items():
                patch.setenv(key, value)
            patch.setattr(remote, "_filesystems", {})
            client = boto3.client("s3")
            client.create_bucket(Bucket=BUCKET)
            for path in synthetic_shards.iterdir():
                client.upload_file(str(path), BUCKET, f"synthetic/{path.name}")
            yield f"s3://{BUCKET}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def _wait_for(url: str, server: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"moto's server did not answer on {url}")


def test_s3_stream_and_validation_equal_the_disk_ones(s3, synthetic_shards):
    url = f"{s3}/synthetic"
    remote._fetchers.clear()
    disk = identity_data(synthetic_shards, shuffle_buffer=16, workers=2)
    with within(40):
        assert same(take(dataclasses.replace(disk, shards=url), 26), take(disk, 26))
        assert torch.equal(val_batch(identity_data(url), 8), val_batch(disk, 8))


def test_s3_training_and_eval(s3, synthetic_shards, make_config, tmp_path, capsys):
    url = f"{s3}/synthetic"
    run_dir = tmp_path / "run"
    config = make_config(url, **TINY_RUN, **{"run.dir": str(run_dir)})
    with within(60):
        train(config)
        assert len(losses(run_dir)) == 6
        reports = {}
        for name, shards in (("s3", url), ("disk", str(synthetic_shards))):
            arguments = ["eval", "--run", str(run_dir), "--shards", shards, "--count", "6"]
            arguments += ["--batch-size", "4", "--device", "cpu", "--json", str(tmp_path / name)]
            assert main(arguments) == 0
            reports[name] = json.loads((tmp_path / name).read_text())["results"]
    capsys.readouterr()
    assert reports["s3"] == reports["disk"]


def test_packing_into_s3_uploads_the_manifest_last_and_resumes(s3, tmp_path, monkeypatch, capsys):
    from ganpaint.data import remote_pack

    monkeypatch.setattr(remote_pack.tempfile, "gettempdir", lambda: str(tmp_path))
    arguments = ["--source", "synthetic", "--count", "48", "--size", "64", "--workers", "1"]
    arguments += ["--split-max-count", "8", "--val-fraction", "0.2"]
    output = f"{s3}/packed"
    uploads, real_upload = [], remote_pack.Prefix.upload

    def failing_upload(prefix, local, name):
        if len(uploads) == 3:
            raise UserError("the network went away")  # an interrupted pack
        uploads.append(name)
        real_upload(prefix, local, name)

    monkeypatch.setattr(remote_pack.Prefix, "upload", failing_upload)
    with within(60):
        assert main(["shards", *arguments, "--output", output]) == 2
        names = remote_pack.Prefix(remote.parse(output)).names()
        assert names == set(uploads) and "manifest.json" not in names  # no manifest yet
        monkeypatch.setattr(
            remote_pack.Prefix, "upload", lambda *a: (uploads.append(a[2]), real_upload(*a))
        )
        assert main(["shards", *arguments, "--output", output]) == 0
        assert uploads[-1] == "manifest.json" and len(uploads) == len(set(uploads))  # none twice
        settings = dict(size=64, count=48, split_max_count=8, val_fraction=0.2, workers=1)
        local = pack("synthetic", tmp_path / "local", progress=False, **settings)
        assert read_manifest(output)["splits"] == local["splits"]
        assert not list(tmp_path.glob(f"{remote_pack.STAGING_PREFIX}*"))  # staging removed
        remote._fetchers.clear()
        expected = list(iterate_split(tmp_path / "local", "train", 64, 16))
        assert same(list(iterate_split(output, "train", 64, 16)), expected)
        # a re-run of the finished pack: nothing changes, nothing is uploaded but the manifest
        uploads.clear()
        assert main(["shards", *arguments, "--output", output]) == 0
        assert uploads == ["manifest.json"]
        assert main(["shards", *arguments, "--size", "32", "--output", output]) == 2
    assert "packed with other parameters (size)" in capsys.readouterr().err
