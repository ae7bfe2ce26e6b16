"""Provider choice and fallback (provider lists faked: CI has no GPU) and the IO-binding run path."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from segensemble.errors import SegEnsembleError
from segensemble.formats.images import read_image
from segensemble.runtime.engine import LABELS, MEMBERS, PROBS, Engine, Want
from segensemble.runtime.sessions import CPU, CUDA, TRT, GraphSession, RuntimeOptions, resolve_providers, trt_shape_options

GPU_BUILD = [TRT, CUDA, CPU]


def test_preferred_order_when_everything_is_there():
    assert resolve_providers(None, GPU_BUILD, trt_ok=lambda: True) == [TRT, CUDA, CPU]


def test_tensorrt_without_its_libraries_uses_cuda_with_one_warning(caplog, monkeypatch):
    from segensemble.runtime import sessions

    monkeypatch.setattr(sessions, "_warned_trt", sessions.threading.Event())
    with caplog.at_level(logging.WARNING):
        assert resolve_providers(None, GPU_BUILD, trt_ok=lambda: False) == [CUDA, CPU]
        assert resolve_providers(("tensorrt", "cuda"), GPU_BUILD, trt_ok=lambda: False) == [CUDA]
    warnings = [r for r in caplog.records if "libnvinfer" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING  # one warning per process, not per graph


def test_cpu_build_and_unknown_provider():
    assert resolve_providers(None, ["CPUExecutionProvider"], trt_ok=lambda: True) == [CPU]
    with pytest.raises(SegEnsembleError, match="not available.*CPUExecutionProvider"):
        resolve_providers(("cuda",), ["CPUExecutionProvider"])


def test_fallback_to_cpu_is_reported(engine):
    """What ONNX Runtime does when CUDA libraries are missing: asked for CUDA, got CPU."""
    real = engine.graph
    faked = GraphSession(real.path, real.session, real.metadata, requested=[CUDA, CPU], active=[CPU])
    assert faked.fell_back and faked.device == "cpu"
    assert not GraphSession(real.path, real.session, real.metadata, requested=[CUDA, CPU], active=[CUDA, CPU]).fell_back
    assert not real.fell_back and real.active == [CPU]


def test_readyz_reports_the_fallback(built):
    """The server's /readyz carries the flag (the app is driven in-process here; test_serve starts it for real)."""
    from fastapi.testclient import TestClient

    from segensemble.serve.app import create_app
    from segensemble.serve.settings import ServeSettings

    app = create_app(ServeSettings(build_dir=built["dir"]))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        engine = app.state.serve.engine
        engine.graph.requested, engine.graph.active = [CUDA, CPU], [CPU]
        body = client.get("/readyz").json()
    assert body["fell_back_to_cpu"] is True and body["providers"] == [CPU] and body["requested_providers"] == [CUDA, CPU]


def test_io_binding_path_equals_plain_run(built, data):
    """The GPU path (input bound once, only requested outputs copied back, bindings reused per shape) on CPU."""
    plain = Engine.from_build(built["dir"])
    bound = Engine.from_build(built["dir"], RuntimeOptions(io_binding=True))
    assert bound.graph.io_binding and not plain.graph.io_binding
    first = read_image(data["test"].images / "test_0000.png")
    for images in ([first], [first, first[::-1].copy()], [first[:40, :50].copy()], [first]):
        a = plain.run(images, Want({LABELS, PROBS, MEMBERS}))
        b = bound.run(images, Want({LABELS, PROBS, MEMBERS}))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.labels, y.labels)
            np.testing.assert_array_equal(x.probs, y.probs)
            assert all(np.array_equal(x.members[k], y.members[k]) for k in x.members)
    only_labels = bound.run([first], Want({LABELS}))[0]
    assert only_labels.probs is None and only_labels.labels.shape == first.shape[:2]


def test_tensorrt_profile_from_the_plan(engine):
    from segensemble.runtime.engine import trt_default_shapes

    low, opt, high = trt_default_shapes(engine.manifest, 4)
    assert low == (1, 32, 32) and opt == (1, 96, 96) and high == (4, 192, 192)  # unet-epochs has input_size 96x96
    assert trt_shape_options((low, opt, high))["trt_profile_opt_shapes"] == "image:1x96x96x3"
