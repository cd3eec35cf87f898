"""Lineage in the UI: dagster-webserver on 127.0.0.1 serves the asset graph, every stage
connected from landing to reports (GraphQL), and headless Chromium renders the graph page."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAIN = ["raw_scans", "preprocessed_scans", "items", "peeled_tiles", "autoencoder", "tile_scores", "scan_scores"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    home = tmp_path_factory.mktemp("ui")
    env = {**os.environ, "PEELSCAN_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    (home / "dagster").mkdir()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dagster_webserver", "-w", "workspace.yaml",
                             "-h", "127.0.0.1", "-p", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            data = _graphql(port, "{ version }")
            if data.get("data"):
                break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("dagster-webserver did not start in 180 s")
    # the code location loads asynchronously: wait for the asset nodes
    while time.monotonic() < deadline:
        nodes = _graphql(port, "{ assetNodes { assetKey { path } } }").get("data", {}).get("assetNodes") or []
        if nodes:
            break
        time.sleep(1)
    # the community sign-up dialog would cover the page in a screenshot: mark it seen
    _graphql(port, "mutation { setNuxSeen }")
    yield port
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.slow
def test_asset_graph_is_connected_landing_to_reports(webserver):
    data = _graphql(webserver, "{ assetNodes { assetKey { path } dependencyKeys { path } "
                               "partitionDefinition { name } } }")
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["data"]["assetNodes"]}
    for upstream, downstream in zip(CHAIN, CHAIN[1:]):
        deps = {"/".join(d["path"]) for d in nodes[downstream]["dependencyKeys"]}
        assert upstream in deps, (downstream, deps)
    assert all(nodes[k]["partitionDefinition"]["name"] == "lots" for k in CHAIN)


@pytest.mark.slow
def test_chromium_renders_the_asset_graph(webserver, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is required (.ci/run installs it)"
    out = Path(os.environ.get("PEELSCAN_SCREENSHOT_DIR", tmp_path)) / "ui_asset_graph.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{webserver}/{os.environ.get('PEELSCAN_UI_PATH', 'asset-groups')}"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", "--disable-sync", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1600,1000",
                    "--virtual-time-budget=20000", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=180)
    from PIL import Image

    img = Image.open(out).convert("L")
    assert img.size == (1600, 1000)
    # a rendered graph is not a blank page: many distinct grey levels
    assert len(set(img.getdata())) > 30
