"""The real server (uvicorn on 127.0.0.1, a free port) called over HTTP: formats, bad input, load, shutdown."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from conftest import CLASSES, png_bytes, read_png, running_server
from PIL import Image


@pytest.fixture(scope="module")
def server(built):
    with running_server(built["dir"], "--max-body-mb", "0.5", "--max-pixels", "250000") as (url, proc):
        yield url


@pytest.fixture(scope="module")
def offline_masks(built, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("offline")
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "predict", str(data["test"].images), "--build", str(built["dir"]),
                           "--save-masks", str(out), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


def test_ready_health_and_providers(server):
    ready = httpx.get(f"{server}/readyz").json()
    assert ready["ready"] and "CPUExecutionProvider" in ready["providers"] and ready["fell_back_to_cpu"] is False
    assert ready["forward_passes_per_image"] == 24 and ready["members"] == 5
    assert httpx.get(f"{server}/healthz").json() == {"status": "alive"}


def test_png_over_http_equals_offline_predict(server, data, offline_masks):
    for path in sorted(data["test"].images.iterdir()):
        with open(path, "rb") as fh:
            multipart = httpx.post(f"{server}/segment", files={"file": (path.name, fh, "image/png")})
        raw = httpx.post(f"{server}/segment", content=path.read_bytes(), headers={"Content-Type": "image/png"})
        assert multipart.status_code == raw.status_code == 200 and multipart.headers["content-type"] == "image/png"
        offline = read_png(offline_masks / (path.name + ".png"))
        for resp in (multipart, raw):
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(resp.content))), offline)


def test_profile_over_http_equals_offline_profile(server, built, data, tmp_path):
    out = tmp_path / "fast"
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "predict", str(data["test"].images), "--build", str(built["dir"]),
                           "--profile", "fast", "--save-masks", str(out), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    path = data["test"].images / "test_0004.png"
    resp = httpx.post(f"{server}/segment?profile=fast", content=path.read_bytes(), headers={"Content-Type": "image/png"})
    assert resp.status_code == 200
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(resp.content))), read_png(out / (path.name + ".png")))
    assert httpx.get(f"{server}/readyz").json()["profiles"] == {"fast": 2}
    bad = httpx.post(f"{server}/segment?profile=huge", content=path.read_bytes(), headers={"Content-Type": "image/png"})
    assert bad.status_code == 422 and "unknown profile 'huge'" in bad.json()["detail"] and "fast" in bad.json()["detail"]


def test_json_and_probs_formats(server, data, offline_masks):
    from pycocotools import mask as mask_utils

    path = data["test"].images / "test_0001.png"
    body = httpx.post(f"{server}/segment?format=json", content=path.read_bytes(), headers={"Content-Type": "image/png"}).json()
    offline = read_png(offline_masks / (path.name + ".png"))
    assert (body["height"], body["width"]) == offline.shape
    painted = np.full(offline.shape, 99, np.uint8)
    for item in body["classes"]:
        assert item["class_name"] == CLASSES[item["class_id"]] and 0 < item["mean_confidence"] <= 1
        m = mask_utils.decode({"size": item["rle"]["size"], "counts": item["rle"]["counts"].encode()})
        assert m.sum() == item["area"]
        painted[m > 0] = item["class_id"]
    np.testing.assert_array_equal(painted, offline)
    probs = httpx.post(f"{server}/segment?format=probs", content=path.read_bytes(), headers={"Content-Type": "image/png"})
    arr = np.load(io.BytesIO(probs.content))["probs"]
    assert arr.shape == (len(CLASSES), *offline.shape)
    np.testing.assert_array_equal(arr.astype(np.float32).argmax(0), offline)


def test_modes_are_converted(server):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (40, 50), dtype=np.uint8)
    rgba = rng.integers(0, 255, (40, 50, 4), dtype=np.uint8)
    deep = (rng.integers(0, 65535, (40, 50))).astype(np.uint16)
    for payload in (png_bytes(gray), png_bytes(rgba), png_bytes(deep)):
        resp = httpx.post(f"{server}/segment", content=payload, headers={"Content-Type": "image/png"})
        assert resp.status_code == 200, resp.text
        assert np.asarray(Image.open(io.BytesIO(resp.content))).shape == (40, 50)
    cmyk = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).convert("CMYK").save(cmyk, format="JPEG")
    assert httpx.post(f"{server}/segment", content=cmyk.getvalue(), headers={"Content-Type": "image/jpeg"}).status_code == 200


@pytest.mark.parametrize("name,kwargs,status,words", [
    ("empty", {"content": b"", "headers": {"Content-Type": "image/png"}}, 400, "empty body"),
    ("text", {"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "text/plain"),
    ("garbage", {"content": b"\x89PNG not really", "headers": {"Content-Type": "image/png"}}, 422, "not a decodable image"),
    ("too big", {"content": b"x" * 600_000, "headers": {"Content-Type": "image/png"}}, 413, "exceeds the limit"),
    ("no file field", {"files": {"other": ("a.png", b"abc", "image/png")}}, 400, "`file` field"),
])
def test_bad_requests_get_clear_errors(server, name, kwargs, status, words):
    resp = httpx.post(f"{server}/segment", **kwargs)
    assert resp.status_code == status, resp.text
    assert words in resp.json()["detail"]


def test_truncated_and_oversized_images(server):
    good = png_bytes(np.zeros((40, 40, 3), np.uint8) + 120)
    truncated = httpx.post(f"{server}/segment", content=good[: len(good) // 2], headers={"Content-Type": "image/png"})
    assert truncated.status_code == 422 and "truncated" in truncated.json()["detail"]
    # 600x600 = 360000 pixels > 250000, and tiny on the wire (a decompression-bomb shape)
    bomb = httpx.post(f"{server}/segment", content=png_bytes(np.zeros((600, 600), np.uint8)), headers={"Content-Type": "image/png"})
    assert bomb.status_code == 422 and "exceeds the limit of 250000" in bomb.json()["detail"]


def test_metrics_and_openapi(server):
    httpx.post(f"{server}/segment", content=b"", headers={"Content-Type": "image/png"})
    text = httpx.get(f"{server}/metrics").text
    assert 'segensemble_requests_total{status="400"}' in text and "segensemble_request_seconds_bucket" in text
    assert "segensemble_batch_size_bucket" in text and "segensemble_queue_depth" in text
    spec = httpx.get(f"{server}/openapi.json").json()
    post = spec["paths"]["/segment"]["post"]
    assert {"multipart/form-data", "image/*"} <= set(post["requestBody"]["content"])
    fmt = next(p for p in post["parameters"] if p["name"] == "format")
    assert fmt["schema"]["enum"] == ["png", "json", "probs"] and fmt["description"]
    assert {"400", "413", "415", "422", "503", "504"} <= set(post["responses"])


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_the_server(server, page):
    """An offline server's /docs works: the page names no other host, and every script and stylesheet it
    loads is served by the app itself (Swagger UI 5 / ReDoc, from fastapi-offline)."""
    import re

    html = httpx.get(server + page).text
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", html), html  # nothing from a CDN
    assets = re.findall(r"(?:src|href)=[\"']?(/[^\"' >]+)", html)
    assert any(a.endswith(".js") for a in assets)
    for asset in assets:
        got = httpx.get(server + asset)
        assert got.status_code == 200 and len(got.content) > 1000, asset
    if page == "/docs":
        assert httpx.get(server + "/openapi.json").json()["openapi"].startswith("3.1")
        bundle = httpx.get(server + next(a for a in assets if a.endswith("swagger-ui-bundle.js"))).text
        assert "OpenAPI 3.1" in bundle or "isOAS31" in bundle  # a Swagger UI that renders FastAPI's 3.1 schema


def test_bad_request_does_not_disturb_a_batch(server, data, offline_masks):
    path = data["test"].images / "test_0002.png"
    good = path.read_bytes()

    def call(payload):
        return httpx.post(f"{server}/segment", content=payload, headers={"Content-Type": "image/png"}, timeout=60)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, [good, b"junk", good, good[:50], good, good]))
    assert [r.status_code for r in results] == [200, 422, 200, 422, 200, 200]
    for r in (results[0], results[2], results[4], results[5]):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), read_png(offline_masks / (path.name + ".png")))


def test_queue_full_gets_503_then_deadline_504(built):
    big = png_bytes(np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8))
    with running_server(built["dir"], "--max-queue", "1", "--max-batch", "1", "--batch-window-ms", "0", "--timeout-s", "60") as (url, _):
        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(
                lambda _: httpx.post(f"{url}/segment", content=big, headers={"Content-Type": "image/png"}, timeout=120), range(10)))
        codes = sorted(r.status_code for r in results)
        assert set(codes) == {200, 503} and codes.count(503) >= 1, codes
        assert all(r.headers.get("retry-after") == "1" for r in results if r.status_code == 503)
        assert httpx.get(f"{url}/healthz").status_code == 200
    with running_server(built["dir"], "--timeout-s", "0.05") as (url, _):
        slow = httpx.post(f"{url}/segment", content=big, headers={"Content-Type": "image/png"}, timeout=60)
        assert slow.status_code == 504 and "within" in slow.json()["detail"]


def test_sigterm_finishes_in_flight_requests(built):
    big = png_bytes(np.random.default_rng(1).integers(0, 255, (384, 384, 3), dtype=np.uint8))
    with running_server(built["dir"]) as (url, proc):
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(httpx.post, f"{url}/segment", content=big, headers={"Content-Type": "image/png"}, timeout=60)
                       for _ in range(3)]
            time.sleep(0.3)
            os.kill(proc.pid, signal.SIGTERM)
            codes = [f.result().status_code for f in futures]
        assert codes == [200, 200, 200]
        # uvicorn re-raises SIGTERM after its graceful shutdown, so the exit status is -15 (or 0 on older uvicorn)
        assert proc.wait(30) in (0, -signal.SIGTERM)
        log = proc.stdout.read()
        assert "Application shutdown complete" in log and "Traceback" not in log


def test_two_workers_answer_the_same(built, data, offline_masks):
    paths = sorted(data["test"].images.iterdir())
    with running_server(built["dir"], "--calls-in-flight", "2", "--intra-op-threads", "1", "--max-batch", "2") as (url, _):
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda p: httpx.post(f"{url}/segment", content=p.read_bytes(),
                                                          headers={"Content-Type": "image/png"}, timeout=60), paths))
        batches = httpx.get(f"{url}/metrics").text
    for path, resp in zip(paths, results):
        assert resp.status_code == 200
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(resp.content))), read_png(offline_masks / (path.name + ".png")))
    assert "segensemble_batch_size_count" in batches


def test_uvicorn_app_from_the_environment(built, data, offline_masks):
    path = data["test"].images / "test_0005.png"
    with running_server(built["dir"], env_app=True) as (url, _):
        resp = httpx.post(f"{url}/segment", content=path.read_bytes(), headers={"Content-Type": "image/png"})
    assert resp.status_code == 200
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(resp.content))), read_png(offline_masks / (path.name + ".png")))
