"""ensemble build: manifest contents, reuse of earlier exports, class agreement, ONNX members, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import plan_text

from segensemble.errors import PlanError, SegEnsembleError
from segensemble.export.build import build, plan_table
from segensemble.manifest import read_manifest
from segensemble.plan import load_plan


def test_manifest_records_members_views_and_cost(built):
    manifest = json.loads((built["dir"] / "manifest.json").read_text())
    by_name = {m["name"]: m for m in manifest["members"]}
    assert len(by_name["unet-folds"]["models"]) == 2 and len(by_name["unet-swa"]["models"]) == 1
    assert by_name["fpn"]["arch"] == "FPN"  # carried by the smp directory
    views = {n: len(m["models"]) * len(m["scales"]) * len(m["tta"]) for n, m in by_name.items()}
    assert views == {"unet-ms": 6, "unet-folds": 10, "unet-epochs": 4, "unet-swa": 2, "fpn": 2}
    assert manifest["cost"]["forward_passes"] == sum(views.values())
    # cost at the plan's sizes: unet-epochs has input_size 96x96 (fixed), the others run at the image's size (per MP)
    def gflops_per_pixel(m):
        return sum(e["gflops"] / (e["gflops_hw"][0] * e["gflops_hw"][1]) for e in m["models"]) * len(m["tta"]) * sum(s * s for s in m["scales"])
    fixed = gflops_per_pixel(by_name["unet-epochs"]) * 96 * 96
    per_mp = sum(gflops_per_pixel(m) for n, m in by_name.items() if n != "unet-epochs") * 1e6
    assert manifest["cost"]["gflops_fixed"] == pytest.approx(fixed, abs=1e-3) and fixed > 0
    assert manifest["cost"]["gflops_per_megapixel"] == pytest.approx(per_mp, abs=1e-3) and per_mp > 0
    for m in manifest["members"]:
        for e in m["models"]:
            assert (built["dir"] / e["file"]).is_file() and len(e["sha256"]) == 64
            assert e["parity"]["max_abs_logit"] <= 1e-3
    assert "CPUExecutionProvider" in manifest["providers"]
    table = plan_table(built["result"].manifest)
    assert "unet-folds" in table and "per image: 24 forward passes" in table


def test_rebuild_reuses_exports_and_includes_onnx_members(built, tmp_path):
    plan_file = tmp_path / "plan.yaml"
    onnx_file = built["dir"] / "fpn-0.onnx"
    ckpt = json.loads((built["dir"] / "manifest.json").read_text())["members"][0]["models"][0]["sources"][0].rsplit("/", 1)[0]
    plan_file.write_text(plan_text(ckpt, built["plan"].parent, onnx_member=onnx_file).replace(
        str(built["plan"].parent), str(built["plan"].parent)))
    text = built["plan"].read_text() + f"""
  - name: exported
    onnx: {onnx_file}
    tta: [identity]
"""
    plan_file.write_text(text)
    result = build(load_plan(plan_file), built["dir"], quiet=True)
    assert result.exported == 1 and result.reused == 7  # only the ONNX member was new
    exported = result.manifest.members[-1]
    assert exported.axis == "onnx" and exported.models[0].form == "onnx"
    # restore the session build for other tests
    build(load_plan(built["plan"]), built["dir"], quiet=True)


def test_class_count_must_agree(built, tmp_path):
    text = built["plan"].read_text().replace('"Metal"]', '"Metal", "Glass"]')
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(text)
    with pytest.raises(Exception, match="unet.pth: the checkpoint was trained for 4 classes, but 5 are asked for"):
        build(load_plan(plan_file), tmp_path / "out", quiet=True)


def test_missing_source_names_the_member(built, tmp_path):
    text = built["plan"].read_text().replace("unet_e40.pth]", "unet_e99.pth]", 1)
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(text)
    with pytest.raises(PlanError, match=r"members\[1\] \(unet-folds\)\.folds: .*unet_e99.pth does not exist"):
        build(load_plan(plan_file), tmp_path / "out", quiet=True)


def test_cli_build_prints_the_plan_table(built):
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "build", str(built["plan"]), "-o", str(built["dir"]), "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "member" in done.stdout and "views" in done.stdout and "0 exported, 7 reused" in done.stdout
    assert "BatchNorm" not in done.stdout or "recomputed" in done.stdout


def test_a_member_that_cannot_be_dynamic_is_exported_at_each_view_size(tmp_path):
    """PSPNet's adaptive pooling: one export per size its views need (scales 1 and 0.5), weights stored once in
    the ensemble graph, and the member equals PyTorch's own forward at every view."""
    import onnx
    import torch
    from eager import eager_member

    from segensemble.models.registry import ModelSpec, create_model
    from segensemble.runtime.engine import MEMBERS, Engine, Want
    from segensemble.synthetic.data import smooth_image

    torch.manual_seed(0)
    model = create_model(ModelSpec("PSPNet", "resnet18", 3))
    torch.save(model.state_dict(), tmp_path / "psp.pth")
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text("classes: [a, b, c]\nmembers:\n  - name: psp\n    arch: PSPNet\n    encoder: resnet18\n    checkpoint: psp.pth\n"
                         "    input_size: [64, 96]\n    scales: [1.0, 0.5]\n    tta: [identity, hflip]\n")
    result = build(load_plan(plan_file), tmp_path / "out", quiet=True)
    entry = result.manifest.members[0].models[0]
    assert [tuple(s.hw) for s in entry.sizes] == [(64, 96), (32, 64)]  # 0.5: 32x48, padded to the stride
    assert entry.file == "psp-0.onnx" and all((tmp_path / "out" / f).is_file() for f in entry.files())
    graph = onnx.load(str(tmp_path / "out" / "ensemble.onnx"))
    weights = sum(t.ByteSize() for t in graph.graph.initializer)
    assert weights < 1.1 * (tmp_path / "out" / "psp-0.onnx").stat().st_size  # two graphs, one copy of the weights
    engine = Engine.from_build(tmp_path / "out")
    for hw in ((64, 96), (37, 150)):  # any image size: the views are always the exported sizes
        image = smooth_image(hw, 1)
        got = engine.predict([image], Want({MEMBERS}))[0].members["psp"]
        want = eager_member(model, image, result.manifest.members[0])
        assert np.abs(got - want).max() < 1e-4 and (got.argmax(0) == want.argmax(0)).mean() > 0.999
    again = build(load_plan(plan_file), tmp_path / "out", quiet=True)
    assert again.reused == 1 and again.manifest.members[0].models[0].sizes == entry.sizes
    # the first file is written last and names its siblings itself: a build killed before it leaves no first file
    first, sibling = tmp_path / "out" / "psp-0.onnx", tmp_path / "out" / "psp-0.32x64.onnx"
    meta = {p.key: p.value for p in onnx.load(str(first)).metadata_props}
    assert json.loads(meta["sized_files"]) == [[64, 96, "psp-0.onnx"], [32, 64, "psp-0.32x64.onnx"]]
    assert first.stat().st_mtime_ns >= sibling.stat().st_mtime_ns


def test_a_fixed_size_onnx_member_refuses_views_it_cannot_take(tmp_path):
    """A graph exported elsewhere at one size cannot be re-exported: views of another size are refused."""
    import torch

    from segensemble.export.onnx_export import ExportOptions, export_onnx
    from segensemble.models.checkpoints import PartialSpec, load_checkpoint
    from segensemble.models.registry import ModelSpec, create_model

    torch.manual_seed(0)
    torch.save(create_model(ModelSpec("PSPNet", "resnet18", 3)).state_dict(), tmp_path / "psp.pth")
    loaded = load_checkpoint(tmp_path / "psp.pth", PartialSpec("PSPNet", "resnet18", 3))
    export_onnx(loaded, tmp_path / "psp.onnx", ExportOptions(fixed_hw=(64, 96)))
    plan_file = tmp_path / "plan.yaml"
    base = f"classes: [a, b, c]\nmembers:\n  - name: psp\n    onnx: {tmp_path / 'psp.onnx'}\n"
    plan_file.write_text(base + "    scales: [1.0, 0.5]\n")
    with pytest.raises(PlanError, match=r"members\[0\] \(psp\): psp-0.onnx is exported at a fixed 64x96.*need 32x64"):
        build(load_plan(plan_file), tmp_path / "out", quiet=True)
    plan_file.write_text(base + "    tta: [identity, hflip, vflip]\n")
    result = build(load_plan(plan_file), tmp_path / "out", quiet=True)
    assert result.manifest.members[0].models[0].fixed_hw == (64, 96)
    from segensemble.runtime.engine import Engine

    engine = Engine.from_build(tmp_path / "out")
    images = [np.zeros((h, w, 3), np.uint8) for h, w in ((64, 96), (37, 150), (200, 50))]
    assert [p.labels.shape for p in engine.predict(images)] == [(64, 96), (37, 150), (200, 50)]


def test_build_writes_verified_graphs_and_reuses_them(built):
    manifest = read_manifest(built["dir"])
    assert set(manifest.graphs) == {"", "fast"}
    for entry in manifest.graphs.values():
        assert (built["dir"] / entry.file).is_file() and entry.verified.max_abs_prob <= 1e-4
        assert entry.verified.labels_agree == 1.0
    whole, fast = manifest.graphs[""].verified, manifest.graphs["fast"].verified
    assert len(whole.sizes) == 3 and whole.batch == 2 and whole.batch_vs_alone <= 1e-5  # a member runs at the image size
    assert len(fast.sizes) == 1
    again = build(load_plan(built["plan"]), built["dir"], quiet=True)  # nothing changed: exports and graphs reused
    assert again.manifest.graphs == manifest.graphs and again.reused == 7


def test_an_old_format_build_asks_for_a_rebuild(built, tmp_path):
    raw = json.loads((built["dir"] / "manifest.json").read_text())
    raw["format"] = 1
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(SegEnsembleError, match="manifest format 1.*rerun `ensemble build"):
        read_manifest(tmp_path)
