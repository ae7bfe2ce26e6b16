"""examples/plan.yaml builds and predicts end to end once its checkpoints exist (made here, random init)."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segensemble.export.onnx_export import ExportOptions, export_onnx
from segensemble.models.checkpoints import LoadedModel
from segensemble.models.registry import ModelSpec, create_model
from segensemble.plan import load_plan
from segensemble.synthetic.data import TRASH_CLASSES, write_split

csv.field_size_limit(1 << 30)
EXAMPLE = Path(__file__).parent.parent / "examples" / "plan.yaml"


def _materialize(plan_file: Path) -> None:
    """Write a checkpoint of the right architecture at every path the plan names."""
    plan = load_plan(plan_file)
    classes = len(plan.classes)
    torch.manual_seed(0)
    for member in plan.members:
        if member.axis == "onnx":
            spec = ModelSpec("UPerNet", "resnet18", classes)
            loaded = LoadedModel(create_model(spec), spec, Path("upernet.pth"), "0" * 64, "test")
            # UPerNet pools adaptively: exported at the plan's fixed input size (dynamic batch only)
            export_onnx(loaded, Path(member.onnx), ExportOptions(class_names=plan.classes, fixed_hw=member.input_size))
        elif member.arch is None:  # an smp directory carries its own architecture
            create_model(ModelSpec("DeepLabV3Plus", "resnet18", classes)).save_pretrained(member.checkpoint)
        else:
            for source in member.sources:
                Path(source).parent.mkdir(parents=True, exist_ok=True)
                torch.save(create_model(ModelSpec(member.arch, member.encoder, classes)).state_dict(), source)
        if member.bn_images:
            write_split(Path(member.bn_images).parent, 4, list(plan.classes), (96, 128), seed=5, name=Path(member.bn_images).name)


@pytest.mark.slow
def test_example_plan_builds_and_predicts(tmp_path):
    plan_file = tmp_path / "plan.yaml"
    shutil.copy(EXAMPLE, plan_file)
    # every field and axis of the example as written, at 128^2 instead of its 512^2: the build's verification
    # against the reference loop at 512-640^2 took 3 of the suite's 12 minutes on 2 cores
    text = plan_file.read_text()
    assert "input_size: [512, 512]" in text
    plan_file.write_text(text.replace("input_size: [512, 512]", "input_size: [128, 128]"))
    _materialize(plan_file)
    test = write_split(tmp_path, 2, TRASH_CLASSES, (96, 128), seed=9, name="test")
    run = lambda *a: subprocess.run([sys.executable, "-m", "segensemble.cli", *map(str, a)], capture_output=True, text=True)  # noqa: E731
    built = run("build", plan_file, "-o", tmp_path / "build", "--quiet")
    assert built.returncode == 0, built.stderr
    assert "unet-b0-kfold" in built.stdout and "already-exported" in built.stdout and "recomputed over 4 images" in built.stdout
    predicted = run("predict", test.images, "--coco", test.coco, "--build", tmp_path / "build", "-o", tmp_path / "sub.csv", "--quiet")
    assert predicted.returncode == 0, predicted.stderr
    rows = list(csv.reader(open(tmp_path / "sub.csv")))
    assert rows[0] == ["image_id", "PredictionString"] and len(rows) == 3
    assert all(len(r[1].split()) == 256 * 256 and max(map(int, r[1].split())) < len(TRASH_CLASSES) for r in rows[1:])
