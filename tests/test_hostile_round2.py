"""Hostile and unlucky input, second round (issue 20): no silent wrong answer, no lost file. Each case was a
wrong answer with exit 0, a lost file or a frozen server on checkout 17ff36f."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import read_png
from PIL import Image

from segensemble.formats.images import read_image


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "segensemble.cli", *map(str, args)], capture_output=True, text=True)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# EXIF orientation, offline: the rotated-pixel copy of an image predicts what the upright one does -------------
def test_exif_rotated_copies_predict_like_the_upright_images(built, data, tmp_path):
    upright, rotated = tmp_path / "upright", tmp_path / "rotated"
    upright.mkdir()
    rotated.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored pixels rotated 90 degrees clockwise
    for path in sorted(data["test"].images.glob("*.png"))[:2]:
        pixels = read_image(path)
        Image.fromarray(pixels).save(upright / path.name)
        Image.fromarray(np.ascontiguousarray(np.rot90(pixels, 1))).save(rotated / path.name, exif=exif)
    for folder in (upright, rotated):
        done = _cli("predict", folder, "--build", built["dir"], "--save-masks", tmp_path / f"{folder.name}-masks", "--quiet")
        assert done.returncode == 0, done.stderr
    for mask in sorted((tmp_path / "upright-masks").glob("*.png")):
        np.testing.assert_array_equal(read_png(mask), read_png(tmp_path / "rotated-masks" / mask.name))


# output names: never shared, never an input, never a file segensemble did not write ---------------------------
def test_inputs_differing_in_extension_get_their_own_masks(built, data, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    sources = sorted(data["test"].images.glob("*.png"))
    Image.fromarray(read_image(sources[0])).save(images / "x.jpg", quality=95)
    shutil.copy(sources[1], images / "x.png")
    done = _cli("predict", images, "--build", built["dir"], "--save-masks", tmp_path / "masks", "--quiet")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["x.jpg.png", "x.png.png"]
    assert (read_png(tmp_path / "masks" / "x.jpg.png") != read_png(tmp_path / "masks" / "x.png.png")).any()


def test_names_colliding_by_case_are_refused_before_any_write(built, data, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    source = sorted(data["test"].images.glob("*.png"))[0]
    for name in ("y.PNG", "y.png"):
        shutil.copy(source, images / name)
    done = _cli("predict", images, "--build", built["dir"], "--save-masks", tmp_path / "masks", "-o", tmp_path / "s.csv", "--quiet")
    assert done.returncode == 2 and "differ only in case" in done.stderr and "y.PNG" in done.stderr, done.stderr
    assert not (tmp_path / "masks").exists() and not (tmp_path / "s.csv").exists() and not (tmp_path / "s.csv.partial").exists()


def test_masks_beside_coco_images_replace_no_other_file(built, data, tmp_path):
    """The COCO file lists only a.jpg; a.png (an input of someone else) and a user's a.jpg.png stay as they are."""
    images = tmp_path / "images"
    images.mkdir()
    sources = sorted(data["test"].images.glob("*.png"))
    Image.fromarray(read_image(sources[0])).save(images / "a.jpg", quality=95)
    shutil.copy(sources[1], images / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "height": 64, "width": 80}], "annotations": [],
            "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "a.json").write_text(json.dumps(coco))
    before = _tree(images)
    done = _cli("predict", images, "--coco", tmp_path / "a.json", "--build", built["dir"], "--save-masks", images, "--quiet")
    assert done.returncode == 0, done.stderr
    after = _tree(images)
    assert {k: v for k, v in after.items() if k in before} == before and set(after) - set(before) == {"a.jpg.png"}
    done = _cli("predict", images, "--coco", tmp_path / "a.json", "--build", built["dir"], "--save-masks", images, "--quiet")
    assert done.returncode == 0, done.stderr  # its own earlier output is replaced
    (images / "a.jpg.png").write_bytes(before["a.png"])  # now a file segensemble did not write
    done = _cli("predict", images, "--coco", tmp_path / "a.json", "--build", built["dir"], "--save-masks", images, "--quiet")
    assert done.returncode == 2 and "was not written by segensemble" in done.stderr, done.stderr
    assert (images / "a.jpg.png").read_bytes() == before["a.png"]


def test_csv_onto_the_coco_file_is_refused(built, data, tmp_path):
    coco = tmp_path / "test.json"
    shutil.copy(data["test"].coco, coco)
    done = _cli("predict", data["test"].images, "--coco", coco, "--build", built["dir"], "-o", coco, "--quiet")
    assert done.returncode == 2 and "is one of this run's inputs" in done.stderr, done.stderr
    assert coco.read_bytes() == data["test"].coco.read_bytes()


def test_an_output_naming_a_folder_is_refused_before_the_run(built, data, tmp_path):
    (tmp_path / "out").mkdir()
    done = _cli("predict", data["test"].images, "--build", built["dir"], "-o", tmp_path / "out", "--quiet")
    assert done.returncode == 2 and "is a folder" in done.stderr, done.stderr


def test_pseudo_label_output_onto_the_merged_training_file_is_refused(built, data, tmp_path):
    train = tmp_path / "train.json"
    shutil.copy(data["train"].coco, train)
    (tmp_path / "train").symlink_to(data["train"].images)
    done = _cli("pseudo-label", data["test"].images, "--build", built["dir"], "-o", train, "--merge", train, "--quiet")
    assert done.returncode == 2 and "is one of this run's inputs" in done.stderr, done.stderr
    assert train.read_bytes() == data["train"].coco.read_bytes()
    done = _cli("pseudo-label", data["test"].images, "--build", built["dir"], "-o", tmp_path / "p.json", "--merge", train,
                "--merged-output", train, "--quiet")
    assert done.returncode == 2 and "is one of this run's inputs" in done.stderr, done.stderr
    assert train.read_bytes() == data["train"].coco.read_bytes()


# names that become files -----------------------------------------------------------------------------------
def _plan(tmp_path, members: list[str], profiles: dict | None = None, classes=("Background", "Paper")) -> Path:
    import yaml

    raw = {"classes": list(classes), "members": [{"name": n, "onnx": str(tmp_path / f"m{i}.onnx")} for i, n in enumerate(members)]}
    if profiles is not None:
        raw["profiles"] = profiles
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


@pytest.mark.parametrize("names", [["a.b", "a_b"], ["가나", "다라"], ["fast.1", "fast_1"]])
def test_names_differing_in_punctuation_get_files_of_their_own(names):
    from segensemble.names import safe_name

    assert safe_name(names[0]) != safe_name(names[1])
    assert safe_name("unet-b0_f1") == "unet-b0_f1"  # a plain name is its own file name


@pytest.mark.parametrize(("members", "profiles", "classes", "words"), [
    (["unet", "UNet"], None, None, "differ in more than letter case"),
    (["a", "b"], {"fast": {}, "FAST": {}}, None, "differ in more than letter case"),
    (["a", "b"], {"": {"members": ["a"]}}, None, "profile name ''"),
    (["a", "b"], None, ["Background", "paper", "Paper"], "repeats class 1"),
    (["a", "b"], None, ["Background", " "], "empty name"),
])
def test_names_that_would_share_a_file_or_a_class_are_refused(tmp_path, members, profiles, classes, words):
    from segensemble.errors import PlanError
    from segensemble.plan import load_plan

    with pytest.raises(PlanError, match=words):
        load_plan(_plan(tmp_path, members, profiles, classes or ("Background", "Paper")))


def test_members_named_apart_only_by_punctuation_each_run_their_own_model(ckpt_dir, data, tmp_path):
    """Two members from different checkpoints named a.b and a_b: each has its own file, and runs its own model."""
    from segensemble.export.build import build
    from segensemble.plan import load_plan
    from segensemble.runtime.engine import MEMBERS, Engine, Want

    plan = tmp_path / "plan.yaml"
    from conftest import CLASSES, FPN_KW, UNET_KW
    plan.write_text(json.dumps({"classes": CLASSES, "defaults": {"stride": 32}, "members": [
        {"name": "a.b", "arch": "Unet", "encoder": "resnet18", "model_kwargs": UNET_KW, "checkpoint": str(ckpt_dir / "unet.pth")},
        {"name": "a_b", "arch": "FPN", "encoder": "resnet18", "model_kwargs": FPN_KW, "checkpoint": str(ckpt_dir / "fpn.pth")}]}))
    result = build(load_plan(plan), tmp_path / "build", quiet=True)
    files = {m.name: m.models[0].file for m in result.manifest.members}
    assert len(set(files.values())) == 2 and len(list((tmp_path / "build").glob("*-0.onnx"))) == 2, files
    assert [m.models[0].arch for m in result.manifest.members] == ["Unet", "FPN"]
    image = read_image(sorted(data["test"].images.glob("*.png"))[0])
    members = Engine.from_build(tmp_path / "build").predict([image], Want({MEMBERS}))[0].members
    assert np.abs(members["a.b"] - members["a_b"]).max() > 1e-3  # a.b runs the Unet, not the FPN's file


def test_triton_names_are_quoted_not_pasted():
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from segensemble.export.triton import TritonOptions, model_config

    crafted = 'member:x"\n    data_type: TYPE_FP32\n    dims: [ 1 ]\n  },\n  {\n    name: "evil'
    text = model_config("segensemble", [("image", "TYPE_UINT8", [-1, -1, 3])],
                        [("probs", "TYPE_FP32", [4, -1, -1]), (crafted, "TYPE_FP32", [4, -1, -1]), ("member:가나\\", "TYPE_FP32", [4])],
                        [64, 64, 3], TritonOptions())
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert [o.name for o in config.output] == ["probs", crafted, "member:가나\\"]
