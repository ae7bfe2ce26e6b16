"""Hostile and careless input (issue 13): every class of attack answered by a clear error, exit code or 4xx,
nothing written outside its folder, nothing already written lost. Servers run for real on 127.0.0.1."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import numpy as np
import pytest
from conftest import CLASSES, cli, file_tree, png_bytes, running_server
from PIL import Image

from segensemble.errors import CheckpointError, ImageError, PlanError, SegEnsembleError
from segensemble.formats.paths import check_image_name, output_path
from segensemble.plan import load_plan

# 1. writes outside the output folder ------------------------------------------------------------------------
ESCAPES = ["../x.png", "../../x/img.png", "a/../../x.png", "/tmp/x.png", "//server/share/x.png", "C:\\x.png", "C:x.png",
           "..\\..\\x.png", "a\\..\\..\\x.png", "", "a/\x00.png", ".."]


@pytest.mark.parametrize("name", ESCAPES)
def test_image_names_that_escape_are_refused(name, tmp_path):
    with pytest.raises(ImageError):
        check_image_name(name)
    with pytest.raises(ImageError):
        output_path(tmp_path / "out", name, ".png")


def test_safe_names_map_inside(tmp_path):
    assert output_path(tmp_path, "a/b/c.jpg", ".png") == tmp_path / "a" / "b" / "c.jpg.png"
    assert output_path(tmp_path, "..hidden.jpg", ".png") == tmp_path / "..hidden.jpg.png"  # a name, not a parent


def test_a_symlink_inside_the_output_folder_cannot_lead_out(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ImageError, match="outside"):
        output_path(tmp_path / "out", "link/x.jpg", ".png")


@pytest.mark.parametrize("name", ["../victim.png", "/ABS/victim.png", "sub/../../victim.png"])
def test_predict_with_a_hostile_coco_writes_nothing(name, built, data, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(data["test"].images, images)
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    coco = json.loads(data["test"].coco.read_text())
    coco["images"][1]["file_name"] = name.replace("/ABS", str(tmp_path))
    (tmp_path / "test.json").write_text(json.dumps(coco))
    before = file_tree(tmp_path)
    done = cli("predict", images, "--coco", tmp_path / "test.json", "--build", built["dir"], "--save-masks", tmp_path / "masks",
                "--save-probs", tmp_path / "probs", "-o", tmp_path / "sub.csv", "--quiet")
    assert done.returncode == 2 and "file_name" in done.stderr and f"image id {coco['images'][1]['id']}" in done.stderr
    assert file_tree(tmp_path) == before  # nothing written anywhere, the victim intact


def test_masks_into_the_image_folder_never_overwrite_an_input(built, data, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(data["test"].images, images)
    before = file_tree(images)
    for command in (["predict", images, "--build", built["dir"], "--save-masks", images, "--quiet"],
                    ["pseudo-label", images, "--build", built["dir"], "-o", tmp_path / "p.json", "--save-masks", images,
                     "--min-prob", "0.01", "--max-uncertain", "1", "--quiet"]):
        done = cli(*command)
        assert done.returncode == 2 and "lies inside the image folder" in done.stderr, done.stderr
    assert file_tree(images) == before


# 2. tiny requests, huge cost --------------------------------------------------------------------------------
def _jpeg_header_bomb(height: int, width: int) -> bytes:
    """A real tiny JPEG whose SOF header is rewritten to claim height x width (the pixels never decode)."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


@pytest.fixture(scope="module")
def guarded(built):
    """A server with small limits so that every hostile request below is refused by one of them."""
    with running_server(built["dir"], "--max-cost", "2", "--body-timeout-s", "1", "--max-uploads", "3", "--max-queue", "4") as (url, proc):
        yield url, proc


@pytest.mark.parametrize("body, words", [
    (_jpeg_header_bomb(60000, 65500), "too many pixels"),  # 3.9 Gpx claimed in 0.6 kB: Pillow's own bomb check
    (_jpeg_header_bomb(600, 65500), "megapixel-views"),  # 39 Mpx: within the pixel limit, not within the cost budget
    (_jpeg_header_bomb(200, 4000), "megapixel-views"),
    (png_bytes(np.zeros((1, 60000, 3), np.uint8)), "megapixel-views"),  # thin: 32x padding per view
    (png_bytes(np.zeros((60000, 1, 3), np.uint8)), "megapixel-views"),
])
def test_costly_images_are_refused_from_the_header(guarded, body, words):
    url, _ = guarded
    started = time.perf_counter()
    r = httpx.post(f"{url}/segment", content=body, headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 422 and words in r.json()["detail"], r.text
    assert time.perf_counter() - started < 5  # refused before decoding or running anything
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_queue_places_are_taken_before_decoding(built):
    """admit() refuses past max_queue without any image decoded; release() gives a place back."""
    import asyncio

    from segensemble.runtime.engine import Engine
    from segensemble.serve.batching import Batcher, QueueFull

    async def scenario():
        batcher = Batcher(Engine.from_build(built["dir"]), max_batch=2, window_s=0.0, max_queue=2)
        first = batcher.admit()
        batcher.admit()
        with pytest.raises(QueueFull):
            batcher.admit()
        batcher.release(first)
        batcher.admit()
        return batcher.depth

    assert asyncio.run(scenario()) == 2


def test_a_failed_call_fails_its_requests_once_and_is_not_run_again(built):
    """Two requests in one call that ONNX Runtime rejects (4 channels): both get the error, one run in all."""
    import asyncio

    from segensemble.runtime.engine import Engine
    from segensemble.serve.batching import Batcher

    engine = Engine.from_build(built["dir"])
    calls = []
    real = engine.run
    engine.run = lambda images, *a: calls.append(len(images)) or real(images, *a)

    async def scenario():
        batcher = Batcher(engine, max_batch=4, window_s=0.2, max_queue=4)
        batcher.start()
        bad = np.zeros((32, 32, 4), np.uint8)
        tickets = [batcher.admit(0.01, time.monotonic() + 30) for _ in range(2)]
        results = await asyncio.gather(*(batcher.submit(t, bad, frozenset({"labels"})) for t in tickets), return_exceptions=True)
        await batcher.stop()
        return results, batcher.depth

    results, depth = asyncio.run(scenario())
    assert all(isinstance(r, Exception) for r in results) and calls == [2] and depth == 0


def test_a_cancelled_run_stops_and_the_engine_stays_usable(built):
    from segensemble.runtime.engine import Engine
    from segensemble.runtime.sessions import RunCancelled, RunControl

    engine = Engine.from_build(built["dir"])
    control = RunControl()
    threading.Timer(0.02, control.cancel).start()
    with pytest.raises(RunCancelled):
        for _ in range(200):  # long enough to be running when the timer fires
            engine.run([np.zeros((512, 512, 3), np.uint8)], control=control)
    assert engine.run([np.zeros((40, 40, 3), np.uint8)])[0].labels.shape == (40, 40)


def test_a_timed_out_request_is_not_run(built):
    """504 for a request whose deadline passed; the metrics show no engine batch ran for it."""
    with running_server(built["dir"], "--timeout-s", "0.001", "--batch-window-ms", "50") as (url, _):
        r = httpx.post(f"{url}/segment", content=png_bytes(np.zeros((64, 64, 3), np.uint8)), headers={"Content-Type": "image/png"})
        assert r.status_code == 504
        metrics = httpx.get(f"{url}/metrics").text
    assert "segensemble_batch_size_count 0.0" in metrics


def test_predict_names_an_absurd_image_and_skip_bad_skips_it(built, data, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(data["test"].images, images)
    (images / "zz_thin.png").write_bytes(png_bytes(np.zeros((1, 6000, 3), np.uint8)))
    done = cli("predict", images, "--build", built["dir"], "-o", tmp_path / "a.csv", "--max-cost", "2", "--quiet")
    assert done.returncode == 2 and "zz_thin.png" in done.stderr and "megapixel-views" in done.stderr
    assert not (tmp_path / "a.csv").exists()
    done = cli("predict", images, "--build", built["dir"], "-o", tmp_path / "b.csv", "--max-cost", "2", "--skip-bad", "--quiet")
    assert done.returncode == 0 and "skipped zz_thin.png" in done.stdout
    assert len((tmp_path / "b.csv").read_text().splitlines()) == 1 + len(list(data["test"].images.glob("*.png")))


# 3. slow clients --------------------------------------------------------------------------------------------
def _slow_upload(url: str, sent: bytes = b"\x89PNG") -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n" + sent)
    return sock


def test_a_stalled_body_gets_408(guarded):
    url, _ = guarded
    sock = _slow_upload(url)
    sock.settimeout(10)
    answer = b""
    while b"did not arrive" not in answer:  # headers and body may come in separate reads
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    sock.close()
    answer = answer.decode(errors="replace")
    assert answer.startswith("HTTP/1.1 408") and "did not arrive within 1s" in answer


def test_slow_clients_cannot_take_the_server(guarded):
    url, _ = guarded
    socks = [_slow_upload(url) for _ in range(12)]  # more than --max-uploads 3
    try:
        time.sleep(0.3)
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        r = httpx.post(f"{url}/segment", content=png_bytes(np.zeros((32, 32, 3), np.uint8)), headers={"Content-Type": "image/png"}, timeout=5)
        assert r.status_code == 503 and "uploads already in progress" in r.json()["detail"]
    finally:
        for s in socks:
            s.close()
    time.sleep(1.5)  # past the body timeout every slot is free again
    r = httpx.post(f"{url}/segment", content=png_bytes(np.zeros((32, 32, 3), np.uint8)), headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 200


def test_a_client_that_disconnects_is_logged_as_such(built):
    with running_server(built["dir"]) as (url, proc):
        sock = _slow_upload(url)
        time.sleep(0.3)
        sock.close()
        time.sleep(0.5)
        metrics = httpx.get(f"{url}/metrics").text
        proc.terminate()
        log = proc.communicate(timeout=20)[0]
    assert 'segensemble_requests_total{status="499"} 1.0' in metrics and 'status="500"' not in metrics
    assert "disconnected before its request body arrived" in log
    assert "Exception in ASGI application" not in log and "Traceback" not in log


# 4. numbers that poison the vote ----------------------------------------------------------------------------
PLAN = """
classes: [a, b, c]
members:
  - name: m
    checkpoint: m.pth
"""


@pytest.mark.parametrize("field, value, where", [
    ("weight", ".inf", "members[0].weight"),
    ("weight", ".nan", "members[0].weight"),
    ("weight", "1e308", "members[0].weight"),
    ("std", "[.nan, 1, 1]", "members[0].std[0]"),
    ("mean", "[0.5, -.inf, 0.5]", "members[0].mean[1]"),
    ("scales", "[.inf]", "members[0].scales[0]"),
    ("scales", "[1e6]", "members[0].scales[0]"),
    ("input_size", "[1000000, 1000000]", "members[0].input_size"),
    ("input_size", "[8192, 8192]", "members[0].input_size"),  # within the side limit, past the cost limit
    ("stride", "100000", "members[0].stride"),
    ("in_channels", "100000000", "members[0].in_channels"),
])
def test_absurd_numbers_are_refused_naming_the_field(field, value, where, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN + f"    {field}: {value}\n")
    with pytest.raises(PlanError) as err:
        load_plan(plan)
    assert str(err.value).startswith(f"{plan}: {where}"), str(err.value)


def test_too_many_members_and_views(tmp_path):
    plan = tmp_path / "plan.yaml"
    members = "".join(f"  - name: m{i}\n    checkpoint: m.pth\n" for i in range(300))
    plan.write_text("classes: [a, b]\nmembers:\n" + members)
    with pytest.raises(PlanError, match="members: .*at most 256"):
        load_plan(plan)
    views = "".join(f"  - name: m{i}\n    folds: [{', '.join(['m.pth'] * 60)}]\n    scales: [0.5, 0.75, 1.0]\n"
                    "    tta: [identity, hflip, vflip, rot90, rot270, transpose]\n" for i in range(5))
    plan.write_text("classes: [a, b]\nmembers:\n" + views)
    with pytest.raises(PlanError, match="5400 forward passes per image; at most 4096"):
        load_plan(plan)


def test_yaml_alias_bombs_are_refused_quickly(tmp_path):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    plan = tmp_path / "laughs.yaml"
    plan.write_text("\n".join(levels) + "\nclasses: *a9\nmembers: []\n")
    started = time.perf_counter()
    with pytest.raises(PlanError, match="alias bomb"):
        load_plan(plan)
    assert time.perf_counter() - started < 5
    plan.write_text("classes: &c [a, *c]\nmembers: []\n")
    with pytest.raises(PlanError, match="refers to a node that contains it"):
        load_plan(plan)
    plan.write_text("classes: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(PlanError):
        load_plan(plan)


# 5. a build that lies ---------------------------------------------------------------------------------------
@pytest.fixture()
def build_copy(built, tmp_path):
    copy = tmp_path / "build"
    shutil.copytree(built["dir"], copy)
    return copy


def test_a_swapped_graph_is_refused(build_copy):
    from segensemble.runtime.engine import Engine

    shutil.copyfile(build_copy / "ensemble.fast.onnx", build_copy / "ensemble.onnx")
    with pytest.raises(SegEnsembleError, match="ensemble.onnx: its sha256 differs"):
        Engine.from_build(build_copy)
    done = cli("predict", build_copy.parent, "--build", build_copy, "--quiet")
    assert done.returncode == 2 and "sha256 differs" in done.stderr


def test_a_manifest_with_other_classes_is_refused(build_copy):
    from segensemble.runtime.engine import Engine

    raw = json.loads((build_copy / "manifest.json").read_text())
    raw["classes"] = raw["classes"][:3]
    (build_copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(SegEnsembleError, match="outputs 4 classes .* manifest lists 3"):
        Engine.from_build(build_copy)


def test_a_missing_graph_and_a_future_format_are_refused(build_copy):
    from segensemble.runtime.engine import Engine

    (build_copy / "ensemble.onnx").unlink()
    with pytest.raises(SegEnsembleError, match="ensemble.onnx: listed in manifest.json but missing"):
        Engine.from_build(build_copy)
    raw = json.loads((build_copy / "manifest.json").read_text())
    raw["format"] = 99
    (build_copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(SegEnsembleError, match="manifest format 99"):
        Engine.from_build(build_copy)


# 6. the API's own contract ----------------------------------------------------------------------------------
def test_schemathesis_finds_nothing(built, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(textwrap.dedent("""
        # JSON Schema cannot say "a decodable image": schema-valid random bytes get the documented 422
        [checks.positive_data_acceptance]
        expected-statuses = ["2xx", "422"]
    """))
    with running_server(built["dir"]) as (url, _):
        done = subprocess.run([sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", f"{url}/openapi.json",
                               "--checks", "all", "--max-examples", "30", "--seed", "7", "--no-color"],
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "Unresolvable" not in done.stdout


def test_api_schema_edges(guarded):
    url, _ = guarded
    image = png_bytes(np.zeros((32, 32, 3), np.uint8))
    assert httpx.post(f"{url}/segment?profile=", content=image, headers={"Content-Type": "image/png"}, timeout=30).status_code == 200
    r = httpx.post(f"{url}/segment?format=nope", content=image, headers={"Content-Type": "image/png"})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str) and "format" in r.json()["detail"]
    schema = httpx.get(f"{url}/openapi.json").json()
    profile = next(p for p in schema["paths"]["/segment"]["post"]["parameters"] if p["name"] == "profile")
    assert profile["schema"]["anyOf"][0]["enum"] == ["", "fast"]
    assert "text/plain" in schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


# 7. raw tracebacks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weights, content, words", [
    ("model.safetensors", b"\x00" * 64, "not a readable safetensors file"),
    ("pytorch_model.bin", b"garbage, not a zip", "not a readable PyTorch file"),
    ("pytorch_model.bin", "pickled", "holds pickled Python objects, refused"),
])
def test_a_broken_smp_folder_is_one_line(weights, content, words, ckpt_dir, tmp_path):
    import torch

    folder = tmp_path / "smp"
    folder.mkdir()
    shutil.copyfile(ckpt_dir / "fpn_dir" / "config.json", folder / "config.json")
    if content == "pickled":
        torch.save({"model": threading.Lock}, folder / weights)  # a class reference: a weights-only load refuses it
    else:
        (folder / weights).write_bytes(content)
    from segensemble.models.checkpoints import load_checkpoint

    with pytest.raises(CheckpointError, match=words):
        load_checkpoint(folder)
    done = cli("export", folder, "-o", tmp_path / "x.onnx", "--classes", len(CLASSES))
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
