"""Precision modes: fp32 exact by default, bf16 on OpenVINO where the CPU has native bf16 (refused elsewhere,
naming the missing feature), fp16 only where TensorRT runs; the cost is measured, not assumed."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from segensemble.errors import SegEnsembleError
from segensemble.formats.images import list_images, read_image
from segensemble.run_config import RunConfig
from segensemble.runtime.engine import LABELS, PROBS, Engine, Want
from segensemble.runtime.openvino_session import BF16_FLAGS, check_bf16, cpu_flags
from segensemble.runtime.sessions import RuntimeOptions

HAS_BF16 = bool(cpu_flags() & set(BF16_FLAGS))


def test_fp32_is_the_default_and_exact(engine):
    assert engine.precision == "fp32" and engine.runtime == "onnxruntime" and engine.describe().endswith("(fp32)")


def test_bf16_is_refused_without_native_support():
    with pytest.raises(SegEnsembleError, match="AVX512_BF16 or AMX.*avx512_bf16, amx_bf16 missing"):
        check_bf16({"avx2", "avx512f", "fma"})
    check_bf16({"avx512f", "avx512_bf16"})
    check_bf16({"amx_tile", "amx_bf16"})


def test_fp16_needs_tensorrt(built):
    with pytest.raises(SegEnsembleError, match="fp16 runs on TensorRT.*bf16"):
        Engine.from_build(built["dir"], RuntimeOptions(precision="fp16"))


@pytest.mark.skipif(HAS_BF16, reason="this CPU has native bf16: the refusal path is covered by the flag test above")
def test_bf16_on_this_cpu_is_refused(built):
    with pytest.raises(SegEnsembleError, match="native bf16"):
        Engine.from_build(built["dir"], RuntimeOptions(precision="bf16"))


@pytest.mark.skipif(not HAS_BF16, reason="this CPU lacks native bf16 (AVX512_BF16 or AMX)")
def test_bf16_runs_the_same_graph_and_agrees(built, engine, data):
    bf16 = Engine.from_build(built["dir"], RuntimeOptions(precision="bf16"))
    assert bf16.runtime == "openvino" and bf16.precision == "bf16" and bf16.active_providers == ["OpenVINO:CPU"]
    images = [read_image(r.path) for r in list_images(data["test"].images)]
    images.append(np.ascontiguousarray(images[0][:45, :61]))  # dynamic shapes: any size
    want = Want({LABELS, PROBS})
    for a, b in zip(engine.predict(images, want), bf16.predict(images, want)):
        assert b.labels.shape == a.labels.shape and b.labels.dtype == np.uint8
        assert (a.labels == b.labels).mean() >= 0.99 and np.abs(a.probs - b.probs).max() < 0.05
    fast = bf16.with_profile("fast")  # profiles run at the same precision
    assert fast.precision == "bf16" and fast.predict(images[:1])[0].labels.shape == images[0].shape[:2]


@pytest.mark.skipif(not HAS_BF16, reason="this CPU lacks native bf16 (AVX512_BF16 or AMX)")
def test_evaluate_reports_bf16_beside_fp32(built, data, tmp_path):
    out = tmp_path / "eval.json"
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "evaluate", "--coco", str(data["test"].coco), "--images",
                           str(data["test"].images), "--build", str(built["dir"]), "--precision", "bf16", "--json", str(out), "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["precision"] == "bf16" and "fp32" in report
    delta = report["delta_vs_fp32"]
    assert delta["miou"] == pytest.approx(report["ensemble"]["miou"] - report["fp32"]["ensemble"]["miou"])
    assert set(delta["iou"]) == set(report["ensemble"]["iou"]) and set(delta["members_miou"]) == set(report["members"])
    assert "bf16 - fp32: ensemble mIoU" in done.stdout and "fp32 on the same images" in done.stdout


@pytest.mark.skipif(not HAS_BF16, reason="this CPU lacks native bf16 (AVX512_BF16 or AMX)")
def test_build_measures_the_cost_of_a_precision(built, data):
    from segensemble.jobs.precision_check import agreement, sample_images

    images = sample_images(data["test"].images, [])
    figures = agreement(built["dir"], "bf16", images, RunConfig(intra_op_threads=1))
    assert figures["images"] == len(images) > 0 and figures["runtime"] == "openvino"
    assert 0.99 <= figures["labels_agree"] <= 1.0 and 0 < figures["max_abs_prob"] < 0.05


@pytest.mark.skipif(not HAS_BF16, reason="this CPU lacks native bf16 (AVX512_BF16 or AMX)")
def test_bf16_end_to_end_through_predict_and_serve(built, data, tmp_path):
    import httpx
    from conftest import running_server

    masks = {}
    for precision in ("fp32", "bf16"):
        done = subprocess.run([sys.executable, "-m", "segensemble.cli", "predict", str(data["test"].images), "--build", str(built["dir"]),
                               "--precision", precision, "--save-masks", str(tmp_path / precision), "--quiet"], capture_output=True, text=True)
        assert done.returncode == 0 and f"({precision})" in done.stdout, done.stderr
        masks[precision] = [read_image(p) for p in sorted((tmp_path / precision).glob("*.png"))]
    assert len(masks["bf16"]) == len(masks["fp32"]) == 6
    assert np.mean([(a == b).mean() for a, b in zip(masks["fp32"], masks["bf16"])]) >= 0.99
    with running_server(built["dir"], "--precision", "bf16") as (url, _):
        ready = httpx.get(f"{url}/readyz").json()
        assert ready["precision"] == "bf16" and ready["runtime"] == "openvino" and ready["providers"] == ["OpenVINO:CPU"]
        png = (data["test"].images / "test_0000.png").read_bytes()
        r = httpx.post(f"{url}/segment", content=png, headers={"Content-Type": "image/png"}, timeout=60)
        assert r.status_code == 200
