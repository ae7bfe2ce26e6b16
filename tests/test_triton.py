"""The Triton repository serves the build's ensemble graph; configs parse as Triton's ModelConfig."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort

from segensemble.formats.images import list_images, read_image
from segensemble.graph_io import member_output
from segensemble.manifest import read_manifest
from segensemble.runtime.engine import LABELS, PROBS, Want


def test_export_triton_repository(built, engine, data, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "stale").mkdir()  # an earlier repository is replaced as a whole
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "export-triton", str(built["dir"]), "-o", str(repo)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in repo.iterdir()) == ["segensemble", "segensemble_fast"]
    assert not list(tmp_path.glob(".repo*"))  # no staging folder left behind
    manifest = read_manifest(built["dir"])
    config = text_format.Parse((repo / "segensemble" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.backend == "onnxruntime" and config.max_batch_size == 8
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 64
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP32"
    assert [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in config.input] == [("image", "TYPE_UINT8", [-1, -1, 3])]
    outputs = {o.name: (model_config_pb2.DataType.Name(o.data_type), list(o.dims)) for o in config.output}
    classes = len(manifest.classes)
    assert outputs["labels"] == ("TYPE_UINT8", [-1, -1]) and outputs["probs"] == ("TYPE_FP32", [classes, -1, -1])
    assert {member_output(m.name) for m in manifest.members} <= set(outputs)
    assert config.model_warmup[0].inputs["image"].zero_data
    # the repository's model is the graph every job runs: same answer as the engine, any image size
    session = ort.InferenceSession(str(repo / "segensemble" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for ref in list_images(data["test"].images)[:2]:
        image = np.ascontiguousarray(read_image(ref.path)[:45, :61])
        labels, probs = session.run(["labels", "probs"], {"image": image[None]})
        want = engine.predict([image], Want({LABELS, PROBS}))[0]
        np.testing.assert_array_equal(labels[0], want.labels)
        np.testing.assert_array_equal(probs[0], want.probs)


def test_fp16_flag_and_cpu_kind(built, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = tmp_path / "repo"
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "export-triton", str(built["dir"]), "-o", str(repo), "--fp16"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    config = text_format.Parse((repo / "segensemble" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters["precision_mode"] == "FP16"
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "export-triton", str(built["dir"]), "-o", str(repo), "--kind", "cpu"],
                          capture_output=True, text=True)
    config = text_format.Parse((repo / "segensemble" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert done.returncode == 0 and config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator


def test_a_failed_export_leaves_the_old_repository(built, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "keep.txt").write_text("earlier")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text((built["dir"] / "manifest.json").read_text())  # the graphs are missing
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "export-triton", str(broken), "-o", str(repo)],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "ensemble.onnx" in done.stderr
    assert (repo / "keep.txt").read_text() == "earlier" and not list(tmp_path.glob(".repo*"))
