"""The fused single-graph ensemble and the Triton repository reproduce the engine."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from segensemble.errors import SegEnsembleError
from segensemble.export.fuse import fuse
from segensemble.images import list_images, read_image
from segensemble.manifest import read_manifest


def _normalized(image, manifest):
    m = manifest.members[0]
    x = (image.astype(np.float32) / 255.0 - np.asarray(m.mean, np.float32)) / np.asarray(m.std, np.float32)
    return x.transpose(2, 0, 1)[None]


@pytest.fixture(scope="module")
def fused(built, tmp_path_factory):
    out = tmp_path_factory.mktemp("fused") / "fused.onnx"
    return fuse(read_manifest(built["dir"]), built["dir"], (64, 80), out)


def test_fused_graph_matches_the_engine(fused, built, engine, data):
    manifest = read_manifest(built["dir"])
    session = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(fused)).graph.node}
    assert {"Resize", "Transpose", "Exp", "ArgMax"} <= ops  # scales, transposing TTA, softmax, label inside the graph
    images = [read_image(r.path) for r in list_images(data["test"].images)]
    batch = np.concatenate([_normalized(img, manifest) for img in images])
    probs, labels = session.run(None, {"image": batch})
    for img, p, lab in zip(images, probs, labels):
        want = engine.predict([img])[0]
        assert np.abs(p - want.probs).max() <= 1e-4
        assert (lab == want.labels).mean() >= 0.999


def test_weights_are_stored_once_per_model(fused, built):
    manifest = read_manifest(built["dir"])
    member_bytes = sum((built["dir"] / e.file).stat().st_size for m in manifest.members for e in m.models)
    assert fused.stat().st_size < 1.2 * member_bytes  # 24 views, but each model's weights once


def test_fusing_needs_one_normalization(built, tmp_path):
    manifest = read_manifest(built["dir"])
    members = list(manifest.members)
    members[1] = members[1].model_copy(update={"mean": (0.5, 0.5, 0.5)})
    with pytest.raises(SegEnsembleError, match="mean/std"):
        fuse(manifest.model_copy(update={"members": members}), built["dir"], (64, 80), tmp_path / "x.onnx")


def test_cli_build_fuse_verifies(built):
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "build", str(built["plan"]), "-o", str(built["dir"]),
                           "--fuse", "--fuse-size", "64", "80", "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "fused graph:" in done.stdout and (built["dir"] / "fused_64x80.onnx").is_file()


def test_export_triton_repository(built, engine, data, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = tmp_path / "repo"
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "export-triton", str(built["dir"]), "-o", str(repo),
                           "--size", "64", "80"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    manifest = read_manifest(built["dir"])
    configs = sorted(repo.glob("*/config.pbtxt"))
    assert len(configs) == sum(len(m.models) for m in manifest.members) + 1
    image = read_image(list_images(data["test"].images)[0].path)
    x = _normalized(image, manifest)
    for path in configs:
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert config.backend == "onnxruntime" and config.max_batch_size == 8
        assert config.dynamic_batching.default_queue_policy.max_queue_size == 64
        assert config.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
        assert config.model_warmup[0].inputs["image"].zero_data
        session = ort.InferenceSession(str(path.parent / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [i.name for i in config.input]
        assert [o.name for o in session.get_outputs()] == [o.name for o in config.output]
    fused = ort.InferenceSession(str(repo / "segensemble" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    probs, labels = fused.run(None, {"image": x})
    want = engine.predict([image])[0]
    assert np.abs(probs[0] - want.probs).max() <= 1e-4 and (labels[0] == want.labels).mean() >= 0.999
    member = manifest.members[0].models[0]
    got = ort.InferenceSession(str(repo / "unet-ms_0" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    ref = ort.InferenceSession(str(built["dir"] / member.file), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    np.testing.assert_array_equal(got, ref)
