"""The lake: atomic datasets (a crash mid-write never shows half a dataset), retries with
backoff against an S3 server that refuses or drops requests, and clear final errors."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pytest

from peelscan.lake import StorageError, Store

ROOT = Path(__file__).resolve().parent.parent


def test_write_read_replace_and_row_groups(tmp_path):
    store = Store(str(tmp_path / "lake"))
    store.write_dataset("lot-1", "tiles", [pa.table({"a": list(range(10))}), pa.table({"a": [10, 11]})],
                        row_group_size=4, metadata={"k": 1})
    assert store.read_dataset("lot-1", "tiles").num_rows == 12
    groups = list(store.iter_row_groups("lot-1", "tiles"))
    assert len(groups) == 4  # 4+4+2 and 2
    assert sum(store.read_row_group(p, g).num_rows for p, g in groups) == 12
    store.write_dataset("lot-1", "tiles", pa.table({"a": [1]}))
    assert store.read_dataset("lot-1", "tiles").num_rows == 1
    assert len([d for d in store.list_dirs("lot-1", "tiles") if d.startswith("v-")]) == 1


def test_invalid_ids_never_become_paths(tmp_path):
    store = Store(str(tmp_path))
    for bad in ("../x", "a/b", "", "a b", "lot|1", "lot,1", "..", "ü"):
        with pytest.raises(ValueError):
            store.write_dataset(bad, "tiles", pa.table({"a": [1]}))


def test_process_killed_mid_write_leaves_the_old_dataset_visible(tmp_path):
    lake = tmp_path / "lake"
    store = Store(str(lake))
    store.write_dataset("lot-1", "tiles", pa.table({"a": [1, 2, 3]}))
    writer = subprocess.Popen([sys.executable, "-c", f"""
import sys, time, pyarrow as pa
sys.path.insert(0, {str(ROOT)!r})
from peelscan.lake import Store
def parts():
    for i in range(1000):
        yield pa.table({{"a": list(range(1000))}})
        if i == 3:
            print("writing", flush=True)
        time.sleep(0.01)
Store({str(lake)!r}).write_dataset("lot-1", "tiles", parts())
"""], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    # readers see the old dataset, whole
    assert store.read_dataset("lot-1", "tiles")["a"].to_pylist() == [1, 2, 3]
    # the next run recovers: a new write replaces it and removes the orphaned version folder
    store.write_dataset("lot-1", "tiles", pa.table({"a": [7]}))
    assert store.read_dataset("lot-1", "tiles")["a"].to_pylist() == [7]
    assert len([d for d in store.list_dirs("lot-1", "tiles") if d.startswith("v-")]) == 1


# --- S3 through a faulty front ----------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultyProxy:
    """An HTTP front on 127.0.0.1 for the S3 server that refuses (503) or drops (closes the
    connection without answering) the requests it is told to."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.plan: list[str] = []  # per request: "ok", "503", "drop"; empty = ok
        self.default = "ok"
        self.seen: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _forward(self):
                action = proxy.plan.pop(0) if proxy.plan else proxy.default
                proxy.seen.append(f"{self.command} {self.path} -> {action}")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if action == "503":
                    msg = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items()}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.port = _free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()


@pytest.fixture
def faulty_s3(monkeypatch):
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "peelscan-test-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "peelscan-test-secret-DO-NOT-LOG")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import boto3

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="plant")
    with FaultyProxy(port) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
        yield proxy
    server.stop()


def test_s3_errors_are_retried_with_backoff(faulty_s3):
    store = Store("s3://plant/lake")
    store.write_dataset("lot-1", "tiles", pa.table({"a": [1, 2]}))
    faulty_s3.plan = ["503", "drop", "503", "503", "drop"]
    t0 = time.perf_counter()
    table = store.read_dataset("lot-1", "tiles")
    assert table["a"].to_pylist() == [1, 2]
    assert any("503" in s for s in faulty_s3.seen) and any("drop" in s for s in faulty_s3.seen)
    assert time.perf_counter() - t0 > 0.05  # backed off


def test_s3_persistent_failure_names_the_object_not_the_secret(faulty_s3, caplog):
    store = Store("s3://plant/lake")
    store.write_dataset("lot-1", "tiles", pa.table({"a": [1]}))
    faulty_s3.default = "503"
    with pytest.raises(StorageError) as err:
        store.read_dataset("lot-1", "tiles")
    msg = str(err.value)
    assert "s3://plant/lake/lot-1/tiles" in msg
    assert "peelscan-test-secret-DO-NOT-LOG" not in msg
    assert "peelscan-test-secret-DO-NOT-LOG" not in caplog.text
