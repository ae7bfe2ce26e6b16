"""ONNX export: parity with PyTorch across architectures, metadata, fixed-shape PSPNet, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from segensemble.errors import ExportError
from segensemble.export.onnx_export import ExportOptions, export_onnx
from segensemble.models.checkpoints import LoadedModel, PartialSpec, load_checkpoint
from segensemble.models.registry import ModelSpec, create_model

PAIRS = [
    ("Unet", "resnet34"),
    ("Unet", "efficientnet-b0"),
    ("UnetPlusPlus", "resnet18"),
    ("FPN", "resnet50"),
    ("FPN", "mobilenet_v2"),
    ("DeepLabV3Plus", "resnext50_32x4d"),
    ("DeepLabV3Plus", "efficientnet-b0"),
    ("Segformer", "mit_b0"),
    ("PSPNet", "resnet18"),
]


def _loaded(arch: str, encoder: str, classes: int = 5) -> LoadedModel:
    torch.manual_seed(0)
    model = create_model(ModelSpec(arch, encoder, classes))
    return LoadedModel(model, ModelSpec(arch, encoder, classes), __import__("pathlib").Path(f"{arch}-{encoder}.pth"), "0" * 64, "test")


@pytest.mark.slow
@pytest.mark.parametrize("arch,encoder", PAIRS, ids=[f"{a}-{e}" for a, e in PAIRS])
def test_export_parity_across_architectures(arch, encoder, tmp_path):
    loaded = _loaded(arch, encoder)
    out = tmp_path / "m.onnx"
    report = export_onnx(loaded, out, ExportOptions(fixed_hw=(64, 64)))
    assert report.parity["max_abs_logit"] <= 1e-3 and report.parity["argmax_agreement"] >= 0.999
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"] and [o.name for o in session.get_outputs()] == ["logits"]
    # an independent check at a third shape (fixed-size graphs: a third batch size)
    shape = (3, 3, 64, 64) if report.fixed_hw else (1, 3, 128, 96)
    x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    with torch.no_grad():
        ref = loaded.model(torch.from_numpy(x)).numpy()
    got = session.run(None, {"image": x})[0]
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-3
    if arch == "PSPNet":
        assert report.fixed_hw == (64, 64)
        meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert meta["dynamic_axes"] == "batch" and "adaptive pooling" in meta["shape_note"]
    else:
        assert report.fixed_hw is None


def test_pspnet_without_a_size_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="adaptive pooling.*input-size"):
        export_onnx(_loaded("PSPNet", "resnet18"), tmp_path / "p.onnx")
    assert not (tmp_path / "p.onnx").exists()


def test_fixed_shape_graph_is_dynamic_in_batch_and_says_its_shape(tmp_path):
    report = export_onnx(_loaded("PSPNet", "resnet18"), tmp_path / "p.onnx", ExportOptions(fixed_hw=(64, 64)))
    session = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"image": np.zeros((2, 3, 64, 64), np.float32)})[0].shape == (2, 5, 64, 64)
    assert json.loads(session.get_modelmeta().custom_metadata_map["fixed_hw"]) == [64, 64] == list(report.fixed_hw)


def test_metadata_carries_what_inference_needs(ckpt_dir, tmp_path):
    loaded = load_checkpoint(ckpt_dir / "unet.pth", PartialSpec("Unet", "resnet18", 4, 3, {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}))
    names = ["Background", "General trash", "Paper", "Metal"]
    export_onnx(loaded, tmp_path / "u.onnx", ExportOptions(class_names=names, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), stride=16))
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "u.onnx")).metadata_props}
    assert meta["arch"] == "Unet" and meta["encoder"] == "resnet18" and meta["classes"] == "4"
    assert json.loads(meta["class_names"]) == names
    assert json.loads(meta["mean"]) == [0.5, 0.5, 0.5] and json.loads(meta["std"]) == [0.25, 0.25, 0.25]
    assert meta["stride"] == "16" and meta["source_sha256"] == loaded.sha256 and len(loaded.sha256) == 64
    assert float(meta["parity_max_abs_logit"]) <= 1e-3 and float(meta["parity_argmax_agreement"]) >= 0.999
    assert len(json.loads(meta["parity_shapes"])) == 2 and meta["dynamic_axes"] == "batch,height,width"


def test_failed_parity_stops_the_export(tmp_path, monkeypatch):
    """A graph that disagrees with PyTorch (the model changed after tracing) is refused with the figures."""
    import segensemble.export.onnx_export as mod

    loaded = _loaded("Unet", "resnet18")
    real_trace = mod._trace

    def trace_then_perturb(model, shape, dynamic_hw):
        data = real_trace(model, shape, dynamic_hw)
        with torch.no_grad():
            model.segmentation_head[0].bias += 1.0
        return data

    monkeypatch.setattr(mod, "_trace", trace_then_perturb)
    with pytest.raises(ExportError, match=r"max \|Δlogit\| 1"):
        export_onnx(loaded, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_cli_export_help_documents_every_flag():
    out = subprocess.run([sys.executable, "-m", "segensemble.cli", "export", "--help"], capture_output=True, text=True).stdout
    for flag in ("--arch", "--encoder", "--classes", "--class-names", "--mean", "--std", "--stride", "--input-size",
                 "--trust-pickle", "--swa", "--bn-images", "--model-kwargs", "--output", "--in-channels"):
        assert flag in out


def test_cli_export_end_to_end(ckpt_dir, tmp_path):
    out = tmp_path / "fpn.onnx"
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "export", str(ckpt_dir / "fpn_dir"), "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "parity vs PyTorch" in done.stdout and out.is_file()
    bad = subprocess.run([sys.executable, "-m", "segensemble.cli", "export", str(ckpt_dir / "unet.pth"), "--arch", "Unet",
                          "--encoder", "resnet18", "-o", str(tmp_path / "x.onnx")], capture_output=True, text=True)
    assert bad.returncode == 2 and "unet.pth" in bad.stderr and "missing keys" in bad.stderr
