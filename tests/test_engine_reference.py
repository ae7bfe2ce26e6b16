"""ensemble.onnx against the plain reference loop (the oracle): sizes, TTA, scales, weights, batches, members."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from segensemble.export.reference import Reference
from segensemble.formats.images import read_image
from segensemble.manifest import read_manifest
from segensemble.runtime.engine import LABELS, MEMBERS, PROBS, Want
from segensemble.views import bilinear

EVERYTHING = Want({LABELS, PROBS, MEMBERS})


@pytest.fixture(scope="module")
def reference(built):
    return Reference(built["dir"])


def _images(data):
    first = read_image(data["test"].images / "test_0000.png")  # 64 x 80: non-square, multiple of the stride
    return {
        "non-square": first,
        "odd": np.ascontiguousarray(first[:50, :70]),  # neither side a multiple of 32: padding and rounding
        "square": np.ascontiguousarray(first[:64, :64]),
        "tall odd": np.ascontiguousarray(np.rot90(first)[:77, :45]),
    }


def test_the_plan_covers_what_the_graph_must_do(built):
    manifest = read_manifest(built["dir"])
    members = manifest.members
    assert {m.axis for m in members} == {"checkpoint", "folds", "epochs", "swa"}
    assert {t for m in members for t in m.tta} == {"identity", "hflip", "vflip", "rot90", "rot270", "transpose"}
    assert any(m.input_size for m in members) and any(not m.input_size for m in members)
    assert any(len(m.scales) > 1 for m in members) and len({m.weight for m in members}) > 1


@pytest.mark.parametrize("case", ["non-square", "odd", "square", "tall odd"])
def test_graph_matches_reference(case, engine, reference, data):
    image = _images(data)[case]
    got = engine.predict([image], EVERYTHING)[0]
    want, members = reference.predict(engine.manifest, image)
    assert got.probs.shape == want.shape and got.labels.shape == image.shape[:2] and got.labels.dtype == np.uint8
    assert np.abs(got.probs - want).max() <= 1e-4
    assert (got.labels == want.argmax(0)).mean() >= 0.999
    np.testing.assert_allclose(got.probs.sum(0), 1.0, atol=1e-4)
    for name, p in members.items():  # each member's output is that member run alone
        assert np.abs(got.members[name] - p).max() <= 1e-4, name


def test_a_batch_of_three_equals_each_alone(engine, reference, data):
    first = _images(data)["odd"]
    batch = [first, np.ascontiguousarray(first[::-1]), np.ascontiguousarray(255 - first)]
    together = engine.run(batch, EVERYTHING)
    for image, pred in zip(batch, together):
        want, _ = reference.predict(engine.manifest, image)
        assert np.abs(pred.probs - want).max() <= 1e-4
        alone = engine.run([image], EVERYTHING)[0]
        assert np.abs(pred.probs - alone.probs).max() <= 1e-5


def test_mixed_sizes_are_grouped_and_returned_in_order(engine, data):
    images = list(_images(data).values())
    mixed = [images[0], images[1], images[0], images[2]]
    got = engine.predict(mixed, Want({LABELS}))
    assert [p.labels.shape for p in got] == [i.shape[:2] for i in mixed]
    np.testing.assert_array_equal(got[0].labels, got[2].labels)
    assert got[0].probs is None and got[0].members is None  # only what was asked for comes back


def test_profile_graph_is_the_reference_over_its_views(engine, reference, data):
    fast = engine.with_profile("fast")
    assert fast.forward_passes == 2 and [m.name for m in fast.members] == ["unet-ms", "fpn"]
    assert fast.graph.path.name == "ensemble.fast.onnx" and engine.with_profile("fast").graph is fast.graph
    image = _images(data)["odd"]
    want, _ = reference.predict(fast.manifest, image)
    assert np.abs(fast.predict([image], Want({PROBS}))[0].probs - want).max() <= 1e-4


def test_plain_onnxruntime_gives_the_labels_predict_writes(built, data, tmp_path):
    """A user loads ensemble.onnx with nothing but onnxruntime, feeds uint8 images and gets predict's masks."""
    masks = tmp_path / "masks"
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "predict", str(data["test"].images), "--build", str(built["dir"]),
                           "--save-masks", str(masks), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    session = ort.InferenceSession(str(built["dir"] / "ensemble.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    outputs = json.loads(meta["outputs"])
    assert outputs["labels"] == "labels" and set(outputs["members"]) == {m.name for m in read_manifest(built["dir"]).members}
    assert [i.name for i in session.get_inputs()] == ["image"] and session.get_inputs()[0].type == "tensor(uint8)"
    from PIL import Image

    for path in sorted(data["test"].images.glob("*.png")):
        image = np.asarray(Image.open(path).convert("RGB"))
        labels = session.run(["labels"], {"image": image[None]})[0][0]
        np.testing.assert_array_equal(labels, np.asarray(Image.open(masks / (path.name + ".png"))))


def test_engine_ensemble_beats_chance(engine, data):
    """The tiny models really learned something: ensemble pixel accuracy well above the background share."""
    images = [read_image(data["test"].images / f"test_{i:04d}.png") for i in range(6)]
    labels = np.stack([p.labels for p in engine.predict(images)])
    gt = np.stack(data["test"].masks)
    assert (labels == gt).mean() > max(0.8, (gt == 0).mean() + 0.05)


def test_oracle_bilinear_is_cv2_inter_linear():
    """The oracle's resize is written out; it must be the semantics the graph is held to (cv2 INTER_LINEAR)."""
    import cv2

    x = np.random.default_rng(0).uniform(0, 255, (13, 17, 3)).astype(np.float32)
    for h, w in ((7, 9), (29, 40), (13, 31)):
        np.testing.assert_allclose(bilinear(x, h, w), cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR), atol=1e-3)


def test_weights_past_the_protobuf_limit_go_beside_the_graph(built, engine, data, tmp_path, monkeypatch):
    """Forced with a zero threshold: the graph keeps its weights in ensemble.onnx.<token>.data and computes the same."""
    import shutil

    from segensemble.export import graph

    monkeypatch.setattr(graph, "EXTERNAL_DATA_BYTES", 0)
    out = graph.build_graph(read_manifest(built["dir"]), built["dir"], tmp_path / "big" / "ensemble.onnx")
    (data_name,) = graph.external_data(out)
    assert (tmp_path / "big" / data_name).stat().st_size > 10 * out.stat().st_size
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == ["ensemble.onnx", data_name]  # no temporaries left
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "big", moved)  # the two files travel together
    image = _images(data)["odd"]
    session = ort.InferenceSession(str(moved / "ensemble.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["probs"], {"image": image[None]})[0][0], engine.predict([image], Want({PROBS}))[0].probs, atol=1e-6)
