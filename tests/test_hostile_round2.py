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
from conftest import cli, file_tree, free_port, read_png, running_server
from PIL import Image

from segensemble.formats.images import read_image


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
        done = cli("predict", folder, "--build", built["dir"], "--save-masks", tmp_path / f"{folder.name}-masks", "--quiet")
        assert done.returncode == 0, done.stderr
    for mask in sorted((tmp_path / "upright-masks").glob("*.png")):
        np.testing.assert_array_equal(read_png(mask), read_png(tmp_path / "rotated-masks" / mask.name))


# output names: never shared, never an input, never a file segensemble did not write ---------------------------
def _jpeg_and_png(data, folder: Path, stem: str) -> Path:
    """``folder`` holding ``<stem>.jpg`` and ``<stem>.png``, two different test images under one stem."""
    folder.mkdir()
    sources = sorted(data["test"].images.glob("*.png"))
    Image.fromarray(read_image(sources[0])).save(folder / f"{stem}.jpg", quality=95)
    shutil.copy(sources[1], folder / f"{stem}.png")
    return folder


def test_inputs_differing_in_extension_get_their_own_masks(built, data, tmp_path):
    images = _jpeg_and_png(data, tmp_path / "images", "x")
    done = cli("predict", images, "--build", built["dir"], "--save-masks", tmp_path / "masks", "--quiet")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["x.jpg.png", "x.png.png"]
    assert (read_png(tmp_path / "masks" / "x.jpg.png") != read_png(tmp_path / "masks" / "x.png.png")).any()


def test_names_colliding_by_case_are_refused_before_any_write(built, data, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    source = sorted(data["test"].images.glob("*.png"))[0]
    for name in ("y.PNG", "y.png"):
        shutil.copy(source, images / name)
    done = cli("predict", images, "--build", built["dir"], "--save-masks", tmp_path / "masks", "-o", tmp_path / "s.csv", "--quiet")
    assert done.returncode == 2 and "differ only in case" in done.stderr and "y.PNG" in done.stderr, done.stderr
    assert not (tmp_path / "masks").exists() and not (tmp_path / "s.csv").exists() and not (tmp_path / "s.csv.partial").exists()


def test_masks_beside_coco_images_replace_no_other_file(built, data, tmp_path):
    """The COCO file lists only a.jpg; a.png (an input of someone else) and a user's a.jpg.png stay as they are."""
    images = _jpeg_and_png(data, tmp_path / "images", "a")
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "height": 64, "width": 80}], "annotations": [],
            "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "a.json").write_text(json.dumps(coco))
    before = file_tree(images)
    done = cli("predict", images, "--coco", tmp_path / "a.json", "--build", built["dir"], "--save-masks", images, "--quiet")
    assert done.returncode == 0, done.stderr
    after = file_tree(images)
    assert {k: v for k, v in after.items() if k in before} == before and set(after) - set(before) == {"a.jpg.png"}
    done = cli("predict", images, "--coco", tmp_path / "a.json", "--build", built["dir"], "--save-masks", images, "--quiet")
    assert done.returncode == 0, done.stderr  # its own earlier output is replaced
    (images / "a.jpg.png").write_bytes(before["a.png"])  # now a file segensemble did not write
    done = cli("predict", images, "--coco", tmp_path / "a.json", "--build", built["dir"], "--save-masks", images, "--quiet")
    assert done.returncode == 2 and "was not written by segensemble" in done.stderr, done.stderr
    assert (images / "a.jpg.png").read_bytes() == before["a.png"]


def test_csv_onto_the_coco_file_is_refused(built, data, tmp_path):
    coco = tmp_path / "test.json"
    shutil.copy(data["test"].coco, coco)
    done = cli("predict", data["test"].images, "--coco", coco, "--build", built["dir"], "-o", coco, "--quiet")
    assert done.returncode == 2 and "is one of this run's inputs" in done.stderr, done.stderr
    assert coco.read_bytes() == data["test"].coco.read_bytes()


def test_an_output_naming_a_folder_is_refused_before_the_run(built, data, tmp_path):
    (tmp_path / "out").mkdir()
    done = cli("predict", data["test"].images, "--build", built["dir"], "-o", tmp_path / "out", "--quiet")
    assert done.returncode == 2 and "is a folder" in done.stderr, done.stderr


def test_pseudo_label_output_onto_the_merged_training_file_is_refused(built, data, tmp_path):
    train = tmp_path / "train.json"
    shutil.copy(data["train"].coco, train)
    (tmp_path / "train").symlink_to(data["train"].images)
    done = cli("pseudo-label", data["test"].images, "--build", built["dir"], "-o", train, "--merge", train, "--quiet")
    assert done.returncode == 2 and "is one of this run's inputs" in done.stderr, done.stderr
    assert train.read_bytes() == data["train"].coco.read_bytes()
    done = cli("pseudo-label", data["test"].images, "--build", built["dir"], "-o", tmp_path / "p.json", "--merge", train,
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


# external weights: hashed, switched atomically, readable by the build's other users ---------------------------
def _onnx_plan(tmp_path: Path, members: dict[str, Path], weight: float = 1.0) -> Path:
    from conftest import CLASSES

    plan = tmp_path / "plan.yaml"
    plan.write_text(json.dumps({"classes": CLASSES, "members": [
        {"name": name, "onnx": str(path), "weight": weight if i == 0 else 1.0} for i, (name, path) in enumerate(members.items())]}))
    return plan


@pytest.fixture
def external_build(built, tmp_path, monkeypatch):
    """A build of two ONNX members whose ensemble graph keeps its weights in an external data file."""
    import segensemble.export.graph as graph
    from segensemble.export.build import build
    from segensemble.plan import load_plan

    members = {"unet": built["dir"] / "unet-ms-0.onnx", "fpn": built["dir"] / "fpn-0.onnx"}
    monkeypatch.setattr(graph, "EXTERNAL_DATA_BYTES", 0)
    result = build(load_plan(_onnx_plan(tmp_path, members)), tmp_path / "build", quiet=True)
    return {"dir": tmp_path / "build", "result": result, "members": members, "plan_dir": tmp_path}


def test_external_weights_are_hashed_and_readable(external_build, data):
    from segensemble.runtime.engine import PROBS, Engine, Want

    out, entry = external_build["dir"], external_build["result"].manifest.graphs[""]
    (name, sha), = entry.data.items()
    assert name.startswith("ensemble.onnx.") and name.endswith(".data") and (out / name).stat().st_size > 1000
    assert (out / name).stat().st_mode & 0o777 == (out / "manifest.json").stat().st_mode & 0o777 == (out / "fpn-0.onnx").stat().st_mode & 0o777
    image = read_image(sorted(data["test"].images.glob("*.png"))[0])
    assert Engine.from_build(out).predict([image], Want({PROBS}))[0].probs.shape[0] == 4
    raw = bytearray((out / name).read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one weight changed
    (out / name).write_bytes(bytes(raw))
    from segensemble.errors import SegEnsembleError
    with pytest.raises(SegEnsembleError, match="sha256 differs"):
        Engine.from_build(out)


def test_a_kill_between_weights_and_graph_leaves_the_old_pair(external_build, data, monkeypatch):
    from segensemble.export.build import build
    from segensemble.graph_io import GRAPH_FILE
    from segensemble.plan import load_plan
    from segensemble.runtime.engine import PROBS, Engine, Want

    out = external_build["dir"]
    image = read_image(sorted(data["test"].images.glob("*.png"))[0])
    before = Engine.from_build(out).predict([image], Want({PROBS}))[0].probs
    real_replace = Path.replace

    def killed(self, target):
        if self.name == f".{GRAPH_FILE}.tmp":
            raise KeyboardInterrupt  # the new weights file is written; the graph that names it is not yet in place
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        build(load_plan(_onnx_plan(external_build["plan_dir"], external_build["members"], weight=3.0)), out, quiet=True)
    monkeypatch.setattr(Path, "replace", real_replace)
    assert len(list(out.glob("ensemble.onnx.*.data"))) == 2  # old and new side by side, neither overwritten
    np.testing.assert_array_equal(Engine.from_build(out).predict([image], Want({PROBS}))[0].probs, before)
    build(load_plan(_onnx_plan(external_build["plan_dir"], external_build["members"], weight=3.0)), out, quiet=True)
    assert len(list(out.glob("ensemble.onnx.*.data"))) == 1  # the finished rebuild removes the stale one
    assert np.abs(Engine.from_build(out).predict([image], Want({PROBS}))[0].probs - before).max() > 1e-4


def test_onnx_members_with_external_weights_are_built_and_traversal_refused(built, data, tmp_path):
    import onnx

    from segensemble.errors import PlanError
    from segensemble.export.build import build
    from segensemble.plan import load_plan
    from segensemble.runtime.engine import MEMBERS, Engine, Want

    src = tmp_path / "ext" / "fpn.onnx"
    src.parent.mkdir()
    onnx.save(onnx.load(str(built["dir"] / "fpn-0.onnx")), str(src), save_as_external_data=True, location="fpn.weights", size_threshold=0)
    assert (src.parent / "fpn.weights").stat().st_size > 1000
    result = build(load_plan(_onnx_plan(tmp_path, {"ext": src, "plain": built["dir"] / "fpn-0.onnx"})), tmp_path / "b", quiet=True)
    image = read_image(sorted(data["test"].images.glob("*.png"))[0])
    members = Engine.from_build(result.build_dir).predict([image], Want({MEMBERS}))[0].members
    np.testing.assert_allclose(members["ext"], members["plain"], atol=1e-6)
    proto = onnx.load(str(src), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../etc/passwd"
    onnx.save(proto, str(src))
    with pytest.raises(PlanError, match="external weights"):
        build(load_plan(_onnx_plan(tmp_path, {"ext": src, "plain": built["dir"] / "fpn-0.onnx"})), tmp_path / "c", quiet=True)


# files that are not what they claim: FIFOs, devices, sparse giants, alias bombs ------------------------------
def _hostile_folder(data, tmp_path: Path) -> Path:
    import os

    images = tmp_path / "images"
    shutil.copytree(data["test"].images, images)
    os.mkfifo(images / "fifo.png")
    (images / "zero.png").symlink_to("/dev/zero")
    with open(images / "sparse.png", "wb") as fh:
        fh.truncate(6 << 30)
    return images


def test_offline_jobs_refuse_fifos_devices_and_sparse_giants_by_name(built, data, tmp_path):
    images = _hostile_folder(data, tmp_path)
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "predict", str(images), "--build", str(built["dir"]),
                           "-o", str(tmp_path / "s.csv"), "--skip-bad", "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name, words in (("fifo.png", "FIFO"), ("zero.png", "character device"), ("sparse.png", "exceeds the limit")):
        assert f"skipped {name}: " in done.stdout and words in done.stdout, done.stdout
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert len(rows) == 1 + len(list(data["test"].images.glob("*.png")))
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "predict", str(images), "--build", str(built["dir"]),
                           "-o", str(tmp_path / "t.csv"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "not a regular file (a FIFO)" in done.stderr, done.stderr


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_checkpoints_that_are_fifos_or_devices_are_refused(tmp_path, kind):
    import os

    from segensemble.errors import SegEnsembleError
    from segensemble.export.build import build
    from segensemble.plan import load_plan

    ckpt = tmp_path / "model.pth"
    os.mkfifo(ckpt) if kind == "fifo" else ckpt.symlink_to("/dev/zero")
    plan = tmp_path / "plan.yaml"
    plan.write_text(json.dumps({"classes": ["a", "b"], "members": [{"name": "m", "arch": "Unet", "encoder": "resnet18",
                                                                     "checkpoint": str(ckpt)}]}))
    with pytest.raises(SegEnsembleError, match="not a regular file"):
        build(load_plan(plan), tmp_path / "out", quiet=True)  # returns at once: nothing is read


def test_a_preprocess_file_of_nested_aliases_is_refused(tmp_path):
    from segensemble.errors import PlanError
    from segensemble.export.preprocess import read_preprocess

    lines = ['a: &a {"__class_fullname__": "Resize", "height": 8, "width": 8, "p": 1.0}']
    for i in range(1, 8):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 10) + "]")
    lines.append('transform: {"__class_fullname__": "Compose", "p": 1.0, "transforms": *h}')
    path = tmp_path / "val_transform.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 2000
    with pytest.raises(PlanError, match="alias bomb"):
        read_preprocess(path, "members[0].preprocess")


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"decoder_channels": [200000, 128, 64, 32, 16]}, "out of range"),
    ({"decoder_channels": list(range(100))}, "more than 64 values"),
    ({"decoder_attention_type": {"a": {"b": {"c": [1]}}}}, "nested deeper"),
])
def test_model_kwargs_are_bounded(tmp_path, kwargs, words):
    from segensemble.errors import PlanError
    from segensemble.plan import load_plan

    plan = tmp_path / "plan.yaml"
    plan.write_text(json.dumps({"classes": ["a", "b"], "members": [{"name": "m", "arch": "Unet", "encoder": "resnet18",
                                                                     "checkpoint": "x.pth", "model_kwargs": kwargs}]}))
    with pytest.raises(PlanError, match=words):
        load_plan(plan)


@pytest.mark.parametrize("config", [{"_model_class": "Unet", "encoder_name": "resnet18", "classes": "four"},
                                    {"_model_class": ["Unet"], "encoder_name": "resnet18"},
                                    {"_model_class": "Unet", "encoder_name": "resnet18", "decoder_channels": [10**6] * 5},
                                    ["not", "an", "object"]])
def test_odd_smp_configs_are_one_line_errors(ckpt_dir, tmp_path, config):
    from segensemble.errors import CheckpointError
    from segensemble.models.checkpoints import load_checkpoint

    folder = tmp_path / "smp"
    shutil.copytree(ckpt_dir / "fpn_dir", folder)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(folder)


# resume reads rows as the csv module wrote them -------------------------------------------------------------
def test_resume_keeps_names_with_unicode_line_breaks_and_drops_a_torn_character(tmp_path):
    from segensemble.formats.submission import SubmissionWriter

    target = tmp_path / "s.csv"
    writer = SubmissionWriter(target)
    names = ["a\x85b.png", "c\u2028d.png", "e\nf.png", "한글.png"]
    for name in names:
        writer.write([[name, "0 1"]])
    writer.abort()
    partial = tmp_path / "s.csv.partial"
    partial.write_bytes(partial.read_bytes() + '한글2.png,0'.encode()[:2])  # a row torn inside a UTF-8 character
    resumed = SubmissionWriter(target, resume=True)
    assert resumed.done == names
    resumed.write([["g.png", "1"]])
    resumed.finish()
    import csv
    with open(target, newline="", encoding="utf-8") as fh:
        assert [r[0] for r in csv.reader(fh)][1:] == [*names, "g.png"]


# flags and names that used to end in a traceback --------------------------------------------------------------
@pytest.mark.parametrize(("args", "words"), [
    (["serve", "--build", "{build}", "--max-batch", "0"], "--max-batch"),
    (["predict", "{images}", "--build", "{build}", "--submission-size", "0", "0"], "--submission-size"),
    (["export", "x.pth", "--arch", "Unet", "--encoder", "resnet18", "--classes", "2", "-o", "{tmp}/x.onnx", "--mean", "nan", "0", "0"],
     "--mean"),
])
def test_bad_flags_are_one_line_errors(built, data, tmp_path, args, words):
    args = [a.format(build=built["dir"], images=data["test"].images, tmp=tmp_path) for a in args]
    done = cli(*args)
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_file_name_that_is_not_utf8_is_a_one_line_error(built, data, tmp_path):
    import os

    images = tmp_path / "images"
    shutil.copytree(data["test"].images, images)
    os.rename(images / sorted(os.listdir(images))[0], os.fsencode(images) + b"/\xff\xfe.png")
    done = cli("predict", images, "--build", built["dir"], "-o", tmp_path / "s.csv", "--quiet")
    assert done.returncode == 2 and "not valid UTF-8" in done.stderr and "Traceback" not in done.stderr, done.stderr


# serving: admission by measured service time, memory per batched call ----------------------------------------
def test_admission_refuses_early_what_cannot_finish_by_its_deadline(engine):
    import time

    from segensemble.serve.batching import Batcher, QueueFull

    batcher = Batcher(engine, max_batch=8, window_s=0.0, max_queue=64)
    now = time.monotonic()
    batcher.admit(1.0, now + 0.5)  # nothing measured yet: admitted on the queue bound alone
    batcher.clock.record(seconds=2.0, work=2.0)  # 1 s per megapixel-view
    second = batcher.admit(1.0, now + 2.5)  # waits 1 s behind the first, runs 1 s: in time
    with pytest.raises(QueueFull) as refused:
        batcher.admit(1.0, now + 2.5)  # would wait 2 s, run 1 s: past its deadline
    assert "overloaded" in refused.value.reason and refused.value.retry_after_s >= 2.0
    batcher.release(second)
    batcher.admit(1.0, now + 2.5)  # a place freed is a place given
    assert batcher.batch_limit(1.0, time.monotonic() + 30) == 7  # a quarter of 30 s at 1 s each
    assert batcher.batch_limit(1.0, time.monotonic() + 3) == 1  # slow images are not batched into a timeout
    assert batcher.batch_limit(0.001, time.monotonic() + 30) == 8  # fast ones up to --max-batch


def test_memory_budget_is_counted_per_batched_call(built):
    from segensemble.cost import Budget
    from segensemble.runtime.engine import Engine
    from segensemble.serve.batching import max_images_in_memory

    probe = Engine.from_build(built["dir"])
    one = probe.cost((512, 512)).memory_mb
    engine = Engine.from_build(built["dir"], budget=Budget(max_memory_mb=2.5 * one))
    assert max_images_in_memory(engine, (512, 512), 8) == 2
    assert max_images_in_memory(engine, (512, 512), 1) == 1
    assert max_images_in_memory(Engine.from_build(built["dir"], budget=Budget(max_memory_mb=100 * one)), (512, 512), 8) == 8


# serving: header bombs off the event loop, deadline from arrival, token, Host -----------------------------------
def _healthz_ms(url: str) -> float:
    import time

    import httpx

    start = time.perf_counter()
    assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
    return 1000 * (time.perf_counter() - start)


def test_header_bombs_are_refused_while_healthz_keeps_answering(built):
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from test_images import chunk_bomb_png, comment_bomb_jpeg

    bombs = [("image/png", chunk_bomb_png(1_600_000)), ("image/jpeg", comment_bomb_jpeg(1_250_000))] * 2  # 19 MB, 5 MB
    with running_server(built["dir"], "--max-body-mb", "25") as (url, _):
        with ThreadPoolExecutor(len(bombs)) as pool:
            start = time.perf_counter()
            sent = [pool.submit(httpx.post, f"{url}/segment", content=body, headers={"Content-Type": ctype}, timeout=60)
                    for ctype, body in bombs]
            worst = max(_healthz_ms(url) for _ in range(10))
            answers = [f.result() for f in sent]
            elapsed = time.perf_counter() - start
    assert [a.status_code for a in answers] == [422] * len(bombs), [a.text for a in answers]
    assert all("built to be slow to parse" in a.json()["detail"] for a in answers)
    assert worst < 1000, f"/healthz took {worst:.0f} ms while the bombs were read"
    assert elapsed < 20, f"{elapsed:.1f}s to refuse four bombs"


def test_the_deadline_counts_from_arrival(built, data):
    import time

    import httpx

    png = (sorted(data["test"].images.glob("*.png"))[0]).read_bytes()

    def slowly():
        for i in range(0, len(png), len(png) // 4 + 1):
            time.sleep(0.6)
            yield png[i:i + len(png) // 4 + 1]

    with running_server(built["dir"], "--timeout-s", "1.5", "--body-timeout-s", "20") as (url, _):
        quick = httpx.post(f"{url}/segment", content=png, headers={"Content-Type": "image/png"}, timeout=30)
        slow = httpx.post(f"{url}/segment", content=slowly(), headers={"Content-Type": "image/png"}, timeout=30)
    assert quick.status_code == 200
    assert slow.status_code == 504 and "within 1.5s of its arrival" in slow.json()["detail"], slow.text


def test_token_and_host_checks(built, data):
    import os

    import httpx

    png = (sorted(data["test"].images.glob("*.png"))[0]).read_bytes()
    token = "s3cret-token-of-some-length"
    os.environ["SEGENSEMBLE_TOKEN"] = token
    try:
        with running_server(built["dir"]) as (url, _):
            def post(**h):
                return httpx.post(f"{url}/segment", content=png, headers={"Content-Type": "image/png", **h}, timeout=30)

            assert post().status_code == 401 and post(Authorization="Bearer wrong-token-xxxxxxxx").status_code == 401
            assert post(Authorization=f"Bearer {token}").status_code == 200
            assert httpx.get(f"{url}/metrics").status_code == 401 and httpx.get(f"{url}/healthz").status_code == 200
            rebound = httpx.get(f"{url}/healthz", headers={"Host": "attacker.example"})
            assert rebound.status_code == 400  # DNS rebinding: a page from attacker.example cannot read this server
            assert post(Authorization=f"Bearer {token}", Host="localhost").status_code == 200
    finally:
        del os.environ["SEGENSEMBLE_TOKEN"]


def test_binding_beyond_loopback_without_a_token_warns(built):
    import time


    proc = subprocess.Popen([sys.executable, "-m", "segensemble.cli", "serve", "--build", str(built["dir"]), "--host", "0.0.0.0",
                             "--port", str(free_port())], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        line = ""
        deadline = time.time() + 60
        while "warning" not in line and time.time() < deadline and proc.poll() is None:
            line = proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(20)
    assert "without a token" in line, line


def test_silent_connections_are_closed_and_healthz_recovers(built):
    """Connections that send nothing past uvicorn's connection limit: closed after 5 s, so probes answer again."""
    import socket
    import time

    import httpx

    with running_server(built["dir"], "--max-queue", "1", "--max-uploads", "1") as (url, _):  # limit: 4 * 2 + 256 = 264
        port = int(url.rsplit(":", 1)[1])
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
        try:
            time.sleep(0.5)
            held = httpx.get(f"{url}/healthz", timeout=10).status_code
            time.sleep(6)
            recovered = httpx.get(f"{url}/healthz", timeout=10).status_code
            for s in silent[:20]:
                s.settimeout(2)
            closed = sum(s.recv(1) == b"" for s in silent[:20])
        finally:
            for s in silent:
                s.close()
    assert held == 503  # the limit is reached while they are open
    assert recovered == 200 and closed == 20
