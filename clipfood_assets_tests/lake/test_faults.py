"""Storage faults against the real S3 server (moto): throttling, a stalled server, outages mid-write.

A small HTTP proxy sits between the client and moto and injects the fault (503 answers, a
response that never comes); outages stop the server itself. Every test restarts the shared
server in a ``finally`` so that the rest of the session still has one.
"""

from __future__ import annotations

import http.client
import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from clipfood_assets.data.prepare import copy_images
from clipfood_assets.lake import LakeError, S3Lake
from clipfood_assets.lake.artifacts import Bundle, IncompleteArtifact, read_bundle, write_bundle
from clipfood_assets.lake.layout import FINE_TUNING_ZONE, IMAGES_PREFIX, TRUSTED_ZONE

# What MinIO answers when it sheds load: an S3 XML error with status 503.
SLOW_DOWN_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId></Error>"
)
# What a load balancer in front of MinIO answers when no backend is up: HTML, not S3 XML.
GATEWAY_HTML = b"<html><body><h1>503 Service Unavailable</h1>No server is available.</body></html>"
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}


class FaultProxy:
    """An HTTP proxy in front of the S3 server that answers 503 to the first requests or stalls.

    ``fail_first``: how many requests get a ``fail_status`` (503; ``fail_body``/``fail_type``) before
    the proxy forwards. ``stall``: seconds to hold every request before forwarding (released at close).
    ``truncate``: forward, but cut every response body in half (a connection lost mid-download).
    ``fail_if(method, path)``: which requests count for ``fail_first`` (default: all).
    """

    def __init__(
        self,
        upstream: str,
        fail_first: int = 0,
        stall: float = 0.0,
        fail_body: bytes = SLOW_DOWN_XML,
        fail_type: str = "application/xml",
        truncate: bool = False,
        fail_if: Callable[[str, str], bool] = lambda method, path: True,
        fail_status: int = 503,
    ):
        self.upstream_host, port = upstream.rsplit(":", 1)
        self.upstream_port = int(port)
        self.fail_first, self.stall = fail_first, stall
        self.fail_body, self.fail_type, self.truncate, self.fail_if = fail_body, fail_type, truncate, fail_if
        self.fail_status = fail_status
        self.seen: list[tuple[str, str, int]] = []  # (method, path, fault status answered, else 0)
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def failures(self) -> int:
        return sum(1 for _, _, status in self.seen if status)

    def close(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def _next_is_fault(self, method: str, path: str) -> bool:
        with self._lock:
            fault = self.fail_if(method, path) and self.failures < self.fail_first
            self.seen.append((method, path, self.fail_status if fault else 0))
            return fault

    def _handler_class(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _handle(self) -> None:
                self.close_connection = True
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None  # always drain the upload
                if proxy._next_is_fault(self.command, self.path):
                    self._answer(proxy.fail_status, [("Content-Type", proxy.fail_type)], proxy.fail_body)
                    return
                if proxy.stall and proxy._released.wait(proxy.stall):
                    return  # the proxy is closing: drop the request
                upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                    self._answer(response.status, kept, data)
                finally:
                    upstream.close()

            def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    if name.lower() != "content-length" or self.command == "HEAD":
                        self.send_header(name, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data[: len(data) // 2] if proxy.truncate and status == 200 else data)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _handle

        return Handler


@pytest.fixture
def fault_proxy(s3_lake, s3_server):
    """Factory of proxies in front of the (freshly reset) S3 server; all closed at teardown."""
    proxies: list[FaultProxy] = []

    def make(**kwargs) -> FaultProxy:
        proxies.append(FaultProxy(s3_server.endpoint, **kwargs))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()


def client(endpoint: str, retries: int, timeout: float = 5.0) -> S3Lake:
    # A fixed region skips the bucket-location lookup, so requests map 1:1 to lake calls.
    return S3Lake(endpoint, "testing", "testing", secure=False, region="us-east-1",
                  retries=retries, backoff=0.01, timeout=timeout)


@contextmanager
def outage_guard(s3_server) -> Iterator[threading.Event]:
    """Yields an event: set it once the server has been stopped; the server is always restarted."""
    stopped = threading.Event()
    try:
        yield stopped
    finally:
        if stopped.is_set():
            s3_server.restart()


# (a) throttling: 503s within the retry budget are absorbed, beyond it they fail clearly.


@pytest.mark.parametrize("failures", [1, 2])
def test_503s_within_the_retry_budget_are_absorbed(fault_proxy, s3_lake, failures):
    proxy = fault_proxy(fail_first=failures)
    lake = client(proxy.endpoint, retries=2)
    lake.put_bytes(TRUSTED_ZONE, "documents/recipes.jsonl", b'{"id": "r1", "title_text_raw": "Soup"}\n')
    assert proxy.failures == failures
    # The write really reached the server (read back without the proxy).
    assert s3_lake.get_bytes(TRUSTED_ZONE, "documents/recipes.jsonl").startswith(b'{"id": "r1"')
    assert lake.get_bytes(TRUSTED_ZONE, "documents/recipes.jsonl") == s3_lake.get_bytes(
        TRUSTED_ZONE, "documents/recipes.jsonl"
    )


def test_503s_beyond_the_retry_budget_fail_naming_the_object(fault_proxy, s3_lake):
    s3_lake.put_bytes(TRUSTED_ZONE, "documents/recipes.jsonl", b"{}\n")
    retries = 2
    proxy = fault_proxy(fail_first=retries + 1)
    lake = client(proxy.endpoint, retries=retries)
    with pytest.raises(LakeError, match=r"s3://trusted-zone/documents/recipes\.jsonl.*SlowDown"):
        lake.get_bytes(TRUSTED_ZONE, "documents/recipes.jsonl")
    # Bounded: one try plus `retries` retries, then the error (no endless hammering).
    assert len(proxy.seen) == retries + 1
    # The budget is per request: the next call goes through.
    assert lake.get_bytes(TRUSTED_ZONE, "documents/recipes.jsonl") == b"{}\n"


def test_persistent_503_on_stat_is_a_lake_error(fault_proxy, s3_lake):
    # A HEAD answer has no body, so no S3 error code: minio raises its ServerError.
    s3_lake.put_bytes(TRUSTED_ZONE, "documents/recipes.jsonl", b"{}\n")
    proxy = fault_proxy(fail_first=100)
    lake = client(proxy.endpoint, retries=1)
    with pytest.raises(LakeError, match=r"s3://trusted-zone/documents/recipes\.jsonl.*503"):
        lake.stat(TRUSTED_ZONE, "documents/recipes.jsonl")
    assert len(proxy.seen) == 2


def test_gateway_html_503_is_a_lake_error(fault_proxy, s3_lake):
    # A load balancer's HTML page is no S3 error document: minio raises its InvalidResponseError.
    s3_lake.put_bytes(TRUSTED_ZONE, "documents/recipes.jsonl", b"{}\n")
    proxy = fault_proxy(fail_first=100, fail_body=GATEWAY_HTML, fail_type="text/html")
    lake = client(proxy.endpoint, retries=1)
    with pytest.raises(LakeError, match=r"s3://trusted-zone/documents/recipes\.jsonl.*503"):
        lake.get_bytes(TRUSTED_ZONE, "documents/recipes.jsonl")
    assert len(proxy.seen) == 2


def test_503_on_a_listing_page_is_a_lake_error(fault_proxy, s3_lake):
    s3_lake.put_bytes(TRUSTED_ZONE, "images/soup__r1_1.jpg", b"\xff\xd8\xff")
    # The bucket check passes; the ListObjectsV2 pages get a gateway's 503.
    proxy = fault_proxy(fail_first=100, fail_body=GATEWAY_HTML, fail_type="text/html",
                        fail_if=lambda method, path: "list-type=2" in path)
    lake = client(proxy.endpoint, retries=1)
    with pytest.raises(LakeError, match=r"s3://trusted-zone/images/"):
        list(lake.list(TRUSTED_ZONE, "images/"))
    assert proxy.failures == 2


def test_503_when_creating_a_zone_is_a_lake_error(fault_proxy, s3_lake):
    proxy = fault_proxy(fail_first=100, fail_body=GATEWAY_HTML, fail_type="text/html",
                        fail_if=lambda method, path: method == "PUT" and path.rstrip("/") == f"/{FINE_TUNING_ZONE}")
    lake = client(proxy.endpoint, retries=1)
    with pytest.raises(LakeError, match=FINE_TUNING_ZONE):
        lake.put_bytes(FINE_TUNING_ZONE, "datasets/train_pairs_positive.csv", b"recipe_id,image_key,caption\n")
    assert proxy.failures == 2


def test_a_full_server_is_a_lake_error_saying_disk_full(fault_proxy, s3_lake):
    # What MinIO answers when its drives are full: 507 and an S3 error document (not retried: no 5xx it lists).
    full = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>XMinioStorageFull</Code><Message>Storage backend '
            b"has reached its minimum free drive threshold. Please delete a few objects to proceed.</Message></Error>")
    s3_lake.ensure_bucket(FINE_TUNING_ZONE)
    proxy = fault_proxy(fail_first=100, fail_status=507, fail_body=full, fail_if=lambda method, path: method == "PUT")
    lake = client(proxy.endpoint, retries=2)
    with pytest.raises(LakeError, match=r"s3://fine-tuning-zone/datasets/train_pairs_positive\.csv.*\(disk full\)"):
        lake.put_bytes(FINE_TUNING_ZONE, "datasets/train_pairs_positive.csv", b"recipe_id,image_key,caption\n")
    assert proxy.failures == 1
    assert list(s3_lake.list(FINE_TUNING_ZONE)) == []


# (b) a stalled server: the timeout turns a hang into a clear error.


@pytest.mark.parametrize("operation", ["get", "list"])
def test_stalled_server_times_out_with_a_clear_error(fault_proxy, s3_lake, operation):
    s3_lake.put_bytes(TRUSTED_ZONE, "images/soup__r1_1.jpg", b"\xff\xd8\xff")
    proxy = fault_proxy(stall=60.0)
    lake = client(proxy.endpoint, retries=1, timeout=0.2)  # read timeout = 6 x 0.2 s
    start = time.monotonic()
    with pytest.raises(LakeError, match="trusted-zone") as caught:
        if operation == "get":
            lake.get_bytes(TRUSTED_ZONE, "images/soup__r1_1.jpg")
        else:
            list(lake.list(TRUSTED_ZONE, "images/"))
    elapsed = time.monotonic() - start
    assert "timed out" in str(caught.value)
    assert len(proxy.seen) == 2  # one try, one retry
    assert elapsed < 20, f"a stalled server held the caller for {elapsed:.1f} s"  # a hang, not a speed target


def test_connection_lost_mid_download_is_a_lake_error(fault_proxy, s3_lake):
    s3_lake.put_bytes(TRUSTED_ZONE, "images/soup__r1_1.jpg", b"\xff\xd8\xff" + bytes(range(256)) * 64)
    proxy = fault_proxy(truncate=True)
    lake = client(proxy.endpoint, retries=1)
    with pytest.raises(LakeError, match=r"s3://trusted-zone/images/soup__r1_1\.jpg"):
        lake.get_bytes(TRUSTED_ZONE, "images/soup__r1_1.jpg")


# (c) an outage in the middle of a multi-file artifact.


def _adapter_bundle(folder: Path) -> Bundle:
    adapters = folder / "adapters"
    adapters.mkdir(parents=True)
    (adapters / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}')
    (adapters / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 40)
    return Bundle(
        files={
            "config.yaml": {"lora": {"r": 8, "alpha": 16}, "seed": 42},
            "training_logs.json": {"epochs": [{"epoch": 1, "loss": 0.78}, {"epoch": 2, "loss": 0.52}]},
            "results_lora.csv": pd.DataFrame({"metric": ["R@1", "R@5"], "value": [0.23, 0.61]}),
            "adapters": adapters,
        },
        metadata={"run_key": "faults"},
    )


class StopsServerAfterWrites(S3Lake):
    """An S3 lake that stops the server once it has written ``after`` objects (an outage mid-artifact)."""

    def __init__(self, endpoint, server, stopped: threading.Event, after: int):
        super().__init__(endpoint, "testing", "testing", secure=False, retries=1, backoff=0.01, timeout=2)
        self._server, self._stopped, self._after, self.written = server, stopped, after, 0

    def _count(self) -> None:
        self.written += 1
        if self.written == self._after:
            self._server.stop()
            self._stopped.set()

    def put_bytes(self, *args, **kwargs):
        info = super().put_bytes(*args, **kwargs)
        self._count()
        return info

    def put_file(self, *args, **kwargs):
        info = super().put_file(*args, **kwargs)
        self._count()
        return info


def test_outage_mid_bundle_leaves_it_incomplete_and_a_rerun_completes_it(s3_server, s3_lake, tmp_path):
    bundle = _adapter_bundle(tmp_path)
    reference = write_bundle(s3_lake, FINE_TUNING_ZONE, "experiments/lora/run_ok/", "lora_run", bundle)

    prefix = "experiments/lora/run_fault/"
    with outage_guard(s3_server) as stopped:
        faulty = StopsServerAfterWrites(s3_server.endpoint, s3_server, stopped, after=1)
        with pytest.raises(LakeError, match="run_fault"):
            write_bundle(faulty, FINE_TUNING_ZONE, prefix, "lora_run", bundle)
    assert stopped.is_set() and faulty.written == 1

    # The first file landed, the manifest did not: readers see an incomplete artifact, not a run.
    assert s3_lake.exists(FINE_TUNING_ZONE, prefix + reference["files"][0]["name"])
    with pytest.raises(IncompleteArtifact, match="no manifest"):
        read_bundle(s3_lake, FINE_TUNING_ZONE, prefix, "lora_run")

    write_bundle(s3_lake, FINE_TUNING_ZONE, prefix, "lora_run", bundle)
    recovered = read_bundle(s3_lake, FINE_TUNING_ZONE, prefix, "lora_run")
    clean = read_bundle(s3_lake, FINE_TUNING_ZONE, "experiments/lora/run_ok/", "lora_run")
    assert recovered.names == clean.names and len(clean.names) == 5

    def files(stored):
        return [(f["name"], f["size"], f["etag"]) for f in stored.manifest["files"]]

    assert files(recovered) == files(clean)
    for name in clean.names:
        got, want = recovered.read(name), clean.read(name)
        if isinstance(want, pd.DataFrame):
            pd.testing.assert_frame_equal(got, want)
        else:
            assert got == want, name


# (d) an outage in the middle of the image copy.


def _tiny_jpeg(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(buffer, "JPEG")
    return buffer.getvalue()


class StopsServerAfterCopies(S3Lake):
    """An S3 lake that stops the server once ``after`` server-side copies have completed.

    Copies beyond the first ``after`` wait for the outage before they are sent, so exactly
    ``after`` copies land however the thread pool schedules them.
    """

    def __init__(self, endpoint, server, stopped: threading.Event, after: int):
        super().__init__(endpoint, "testing", "testing", secure=False, retries=1, backoff=0.01, timeout=2)
        self._server, self._stopped, self._after = server, stopped, after
        self._lock, self.started, self.copies = threading.Lock(), 0, 0

    def copy(self, *args, **kwargs):
        with self._lock:
            self.started += 1
            late = self.started > self._after
        if late:
            self._stopped.wait(timeout=30)
        etag = super().copy(*args, **kwargs)
        with self._lock:
            self.copies += 1
            if self.copies == self._after:
                self._server.stop()
                self._stopped.set()
        return etag


def _fine_tuning_images(lake) -> list[tuple[str, str]]:
    return [(o.key, o.etag) for o in lake.list(FINE_TUNING_ZONE, IMAGES_PREFIX)]


def test_interrupted_copy_resumes_to_the_same_zone(s3_server, s3_lake):
    keys = [f"images/dish-{i:02d}__r{i // 2:03d}_{i % 2 + 1}.jpg" for i in range(40)]
    for i, key in enumerate(keys):
        s3_lake.put_bytes(TRUSTED_ZONE, key, _tiny_jpeg(i), "image/jpeg")
    stale = "images/gone__r999_1.jpg"  # no longer paired: a complete copy removes it

    s3_lake.put_bytes(FINE_TUNING_ZONE, stale, b"old")
    uninterrupted = copy_images(s3_lake, keys, workers=4)
    expected = _fine_tuning_images(s3_lake)
    assert (uninterrupted.copied, uninterrupted.deleted) == (40, 1)
    assert [k for k, _ in expected] == sorted(keys)

    s3_lake.delete_prefix(FINE_TUNING_ZONE, IMAGES_PREFIX)
    s3_lake.put_bytes(FINE_TUNING_ZONE, stale, b"old")
    with outage_guard(s3_server) as stopped:
        faulty = StopsServerAfterCopies(s3_server.endpoint, s3_server, stopped, after=10)
        with pytest.raises(LakeError):
            copy_images(faulty, keys, workers=4)
    assert stopped.is_set() and faulty.copies == 10

    partial = _fine_tuning_images(s3_lake)
    done = [k for k, _ in partial if k != stale]
    assert len(done) == 10 and stale in dict(partial), "the outage cut the copy short, before the clean-up"

    resumed = copy_images(s3_lake, keys, workers=4)
    # Only what was missing is copied again; what landed before the outage is recognised by ETag.
    assert (resumed.copied, resumed.skipped, resumed.deleted) == (len(keys) - len(done), len(done), 1)
    assert _fine_tuning_images(s3_lake) == expected
