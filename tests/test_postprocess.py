"""Post-processing after the vote: each step on crafted masks (sizes on both sides of the limit, holes,
multiclass re-labelling, presence gating, the SIIM triplet), checked against scipy.ndimage's labelling as the
oracle; plan validation; and served = offline with post-processing on."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from segensemble.errors import PlanError
from segensemble.postprocess import PostProcessSpec, apply

EIGHT = np.ones((3, 3), int)


def _steps(classes, task="multilabel", **fields):
    return PostProcessSpec(**fields).resolve(list(classes), task)


def _sizes(mask: np.ndarray) -> list[int]:
    ids, n = ndimage.label(mask, structure=EIGHT)
    return sorted(int((ids == i).sum()) for i in range(1, n + 1))


def test_min_area_removes_components_below_the_limit_and_keeps_those_at_it():
    mask = np.zeros((1, 40, 40), bool)
    mask[0, 2:5, 2:5] = True  # 9 px
    mask[0, 10:12, 10:15] = True  # 10 px
    mask[0, 20, 20] = mask[0, 21, 21] = True  # diagonal neighbours: one 8-connected component of 2
    mask[0, 30:40, 30:40] = True  # 100 px
    out = apply(_steps(["a"], min_area=10), np.zeros((1, 40, 40)), masks=mask)[0].astype(bool)
    assert _sizes(out) == [10, 100]
    assert (out <= mask).all()
    out = apply(_steps(["a"], min_area=2), np.zeros((1, 40, 40)), masks=mask)[0].astype(bool)
    assert _sizes(out) == [2, 9, 10, 100]


def test_fill_holes_up_to_the_area_and_never_the_outside():
    mask = np.zeros((1, 30, 30), bool)
    mask[0, 2:10, 2:10] = True
    mask[0, 4:6, 4:6] = False  # 4 px hole
    mask[0, 15:25, 15:25] = True
    mask[0, 17:20, 17:19] = False  # 6 px hole
    mask[0, 0:3, 20:30] = True
    mask[0, 0:2, 23:25] = False  # a notch open to the border: not a hole
    out = apply(_steps(["a"], fill_holes=5), np.zeros((1, 30, 30)), masks=mask)[0].astype(bool)
    filled = out & ~mask
    want = np.zeros_like(mask[0])
    want[4:6, 4:6] = True
    assert (filled == want).all()
    holes = ndimage.binary_fill_holes(mask[0]) & ~mask[0]
    assert (filled <= holes).all()


def test_keep_largest_and_min_total_area():
    mask = np.zeros((2, 20, 20), bool)
    mask[0, 0:3, 0:3] = True
    mask[0, 10:15, 10:15] = True
    mask[1, 5:7, 5:7] = True  # 4 px in total
    out = apply(_steps(["a", "b"], keep_largest=["a"], min_total_area={"b": 5}), np.zeros((2, 20, 20)), masks=mask).astype(bool)
    assert _sizes(out[0]) == [25] and out[0, 12, 12]
    assert not out[1].any()
    out = apply(_steps(["a", "b"], min_total_area={"b": 4}), np.zeros((2, 20, 20)), masks=mask).astype(bool)
    assert (out == mask).all()


def test_presence_gate_is_the_siim_triplet():
    rng = np.random.default_rng(0)
    probs = rng.uniform(0, 0.6, (1, 50, 50))
    probs[0, :10, :10] = 0.9  # 100 pixels above the top threshold
    masks = probs > 0.3  # the plan's threshold draws the mask (the triplet's bottom one)
    steps = _steps(["a"], "binary", presence={"threshold": 0.75, "min_pixels": 100})
    assert (apply(steps, probs, masks=masks).astype(bool) == masks).all()
    probs[0, 0, 0] = 0.7  # 99 above: no mask at all in this image
    assert not apply(steps, probs, masks=probs > 0.3).any()


def test_multiclass_small_components_take_the_next_most_probable_class():
    rng = np.random.default_rng(1)
    h = w = 60
    probs = rng.dirichlet(np.ones(3) * 0.3, (h, w)).transpose(2, 0, 1)  # noisy: many small components everywhere
    labels = probs.argmax(0).astype(np.uint8)
    steps = _steps(["a", "b", "c"], "multiclass", min_area={"a": 30, "b": 12, "c": 5})
    out = apply(steps, probs, labels=labels)
    limits = [30, 12, 5]
    for c in range(3):
        assert all(size >= limits[c] for size in _sizes(out == c)), c  # no component below its class's limit remains
    assert (out != labels).mean() > 0.1


def test_multiclass_relabel_of_a_planted_blob():
    probs = np.zeros((3, 20, 20))
    probs[2] = 0.6
    probs[0] = 0.3
    probs[1, 8:11, 8:11], probs[2, 8:11, 8:11], probs[0, 8:11, 8:11] = 0.5, 0.1, 0.4  # a 9 px blob of class 1
    labels = probs.argmax(0)
    out = apply(_steps("xyz", "multiclass", min_area={"y": 10}), probs, labels=labels)
    assert (out[8:11, 8:11] == 0).all()  # its second most probable class, not the region around it
    assert (out[labels != 1] == labels[labels != 1]).all()


def test_plan_validation(tmp_path):
    with pytest.raises(ValueError, match=r"min_area: 'Tree' is not one of the plan's classes \(a, b\)"):
        _steps(["a", "b"], min_area={"Tree": 3})
    with pytest.raises(ValueError, match="presence: gates multilabel and binary masks"):
        _steps(["a"], "multiclass", presence={"threshold": 0.7, "min_pixels": 10})
    from segensemble.plan import parse_plan

    raw = {"classes": ["a", "b"], "members": [{"name": "m", "onnx": str(tmp_path / "m.onnx")}], "postprocess": {"min_area": {"c": 1}}}
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(PlanError, match=r"postprocess.*'c' is not one of the plan's classes"):
        parse_plan(raw, tmp_path)


@pytest.fixture(scope="module")
def post_built(sigmoid_ckpts, sigmoid_data, tmp_path_factory):
    from conftest import build_plan, sigmoid_plan

    out = tmp_path_factory.mktemp("post")
    plan = sigmoid_plan("binary", sigmoid_ckpts, thresholds=0.45,
                        postprocess={"min_area": 40, "fill_holes": 30, "presence": {"threshold": 0.6, "min_pixels": 30}})
    build_plan(plan, out, sigmoid_data["root"])
    return out


def test_served_equals_offline_with_post_processing(post_built, binary_built, sigmoid_data, tmp_path):
    import httpx
    from conftest import read_png, running_server

    from segensemble.formats.images import list_images
    from segensemble.jobs.predict import PredictOptions, predict_to_files
    from segensemble.runtime.engine import MASKS, PROBS, Engine, Want

    refs = list_images(sigmoid_data["test"].images)
    engine, plain = Engine.from_build(post_built), Engine.from_build(binary_built)
    assert engine.manifest.postprocess is not None and plain.manifest.postprocess is None
    changed = 0
    for ref in refs:
        raw = plain.predict([plain.read(ref.path)], Want({MASKS, PROBS}))[0]
        got = engine.predict([engine.read(ref.path)], Want({MASKS}))[0]
        assert got.probs is None  # post-processing asked the graph for probabilities, the job did not
        want = apply(engine.manifest.postprocess, raw.probs, masks=raw.masks)
        assert (got.masks == want).all()
        changed += int((got.masks != raw.masks).sum())
    assert changed > 0
    predict_to_files(engine, refs[:2], PredictOptions(None, tmp_path, format="png", progress=False))
    with running_server(post_built) as (url, _):
        for ref in refs[:2]:
            answer = httpx.post(f"{url}/segment?format=png", content=ref.path.read_bytes(), headers={"content-type": "image/png"}, timeout=60)
            assert answer.status_code == 200
            served = read_png_bytes(answer.content)
            offline = read_png(next(tmp_path.rglob(f"{ref.path.name}*.png")))
            assert (served == offline).all()


def read_png_bytes(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))
