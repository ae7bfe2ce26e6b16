"""`preprocess: val_transform.json`: the training pipeline's albumentations transform, saved by albumentations
itself, becomes the member's size, normalization and stride; what the model sees equals what albumentations
gives the same image, and the ensemble graph built from it agrees with the model run on albumentations' output."""

from __future__ import annotations

import json
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
from albumentations.pytorch import ToTensorV2
from conftest import CLASSES, UNET_KW

from segensemble.errors import PlanError
from segensemble.export.preprocess import apply_preprocess
from segensemble.export.reference import model_input
from segensemble.plan import load_plan

MEAN, STD = (0.52, 0.41, 0.33), (0.21, 0.26, 0.31)


def _pad(**kw):
    return A.PadIfNeeded(min_height=None, min_width=None, pad_height_divisor=32, pad_width_divisor=32, position="top_left",
                         border_mode=cv2.BORDER_CONSTANT, fill=0, **kw)


def _save(tmp_path: Path, transforms: list, name: str = "val_transform.json") -> Path:
    path = tmp_path / name
    A.save(A.Compose(transforms), str(path))
    return path


def _plan(tmp_path: Path, ckpt: Path, extra: str = "", defaults: str = "") -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(f"""
classes: {json.dumps(CLASSES)}
defaults:
  arch: Unet
  encoder: resnet18
  model_kwargs: {json.dumps(UNET_KW)}
{defaults}
members:
  - name: unet
    checkpoint: {ckpt}
    preprocess: val_transform.json
{extra}
""")
    return path


def _member(plan_path: Path):
    plan = load_plan(plan_path)
    return apply_preprocess(plan.members[0], 0, f"{plan_path}: ")


@pytest.mark.parametrize("max_pixel_value", [255.0, 1.0])
def test_model_input_equals_albumentations(tmp_path, ckpt_dir, max_pixel_value):
    mean, std = (MEAN, STD) if max_pixel_value == 255.0 else (tuple(m * 255 for m in MEAN), tuple(s * 255 for s in STD))
    transform = [A.Resize(72, 80), A.Normalize(mean=mean, std=std, max_pixel_value=max_pixel_value), _pad(), ToTensorV2()]
    _save(tmp_path, transform)
    member = _member(_plan(tmp_path, ckpt_dir / "unet.pth"))
    assert member.input_size == (72, 80) and member.stride == 32
    np.testing.assert_allclose(member.mean, MEAN, rtol=1e-6) and np.testing.assert_allclose(member.std, STD, rtol=1e-6)
    rng = np.random.default_rng(0)
    loaded = A.load(str(tmp_path / "val_transform.json"))  # what the training notebook's validation loader does
    for shape in [(72, 80), (50, 61), (120, 90)]:
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        want = loaded(image=image)["image"].numpy()
        got, (h, w) = model_input(image, member)
        assert want.shape == got.shape == (3, 96, 96) and (h, w) == (72, 80)
        # albumentations resizes the uint8 image with cv2's fixed-point bilinear and rounds to uint8 before
        # normalizing; the graph resizes exactly in float. Without a resize the two are equal; with one they
        # differ by at most one grey level, a quarter of one on average
        grey = 1 / 255 / np.asarray(STD)[:, None, None]
        if shape == (72, 80):
            np.testing.assert_allclose(got, want, atol=1e-5)
        else:
            assert np.all(np.abs(got - want) <= grey + 1e-5) and np.mean(np.abs(got - want) / grey) < 0.25
        assert np.all(got[:, h:, :] == 0) and np.all(want[:, h:, :] == 0)  # padding: zeros after normalization


def test_graph_agrees_with_the_model_on_albumentations_output(tmp_path, ckpt_dir, trained):
    """End to end: build a plan whose member names the transform; the engine's member probabilities equal the
    PyTorch model run on albumentations' own output (cropped, softmaxed), on an image of the Resize size."""
    import torch

    from segensemble.export.build import build
    from segensemble.runtime.engine import MEMBERS, Engine, Want

    _save(tmp_path, [A.Resize(72, 80), A.Normalize(mean=MEAN, std=STD), _pad(), ToTensorV2()])
    build(load_plan(_plan(tmp_path, ckpt_dir / "unet.pth")), tmp_path / "build", quiet=True)
    engine = Engine.from_build(tmp_path / "build")
    assert tuple(engine.members[0].mean) == pytest.approx(MEAN) and tuple(engine.members[0].input_size) == (72, 80)
    image = np.random.default_rng(1).integers(0, 256, (72, 80, 3), dtype=np.uint8)
    x = A.load(str(tmp_path / "val_transform.json"))(image=image)["image"][None]
    with torch.no_grad():
        logits = trained["unet"].eval()(x.float())[0, :, :72, :80]
    want = torch.softmax(logits, 0).numpy()
    got = engine.predict([image], Want({MEMBERS}))[0].members["unet"]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_unsupported_transforms_are_refused_by_name(tmp_path, ckpt_dir):
    plan = _plan(tmp_path, ckpt_dir / "unet.pth")
    cases = [
        ([A.Resize(64, 64), A.CLAHE(p=1.0), A.Normalize(), ToTensorV2()], "transforms[1] CLAHE: not supported"),
        ([A.Resize(64, 64, interpolation=cv2.INTER_AREA), A.Normalize()], "transforms[0] Resize: interpolation 3"),
        ([A.Normalize(), A.PadIfNeeded(min_height=None, min_width=None, pad_height_divisor=32, pad_width_divisor=32)],
         "transforms[1] PadIfNeeded: position 'center'"),
        ([_pad(), A.Normalize()], "transforms[0] PadIfNeeded: comes before Normalize"),
        ([A.Resize(64, 64), ToTensorV2()], "has no Normalize"),
        ([A.Normalize(p=0.5)], "transforms[0] Normalize: p=0.5"),
        ([A.Normalize(normalization="image")], "normalization 'image'"),
    ]
    for transforms, words in cases:
        _save(tmp_path, transforms)
        with pytest.raises(PlanError, match=r"members\[0\]\.preprocess") as err:
            _member(plan)
        assert words in str(err.value) and "val_transform.json" in str(err.value)
    (tmp_path / "val_transform.json").write_text("{not json")
    with pytest.raises(PlanError, match="not a transform saved by A.save"):
        _member(plan)


def test_explicit_plan_fields_that_contradict_the_file_are_refused(tmp_path, ckpt_dir):
    _save(tmp_path, [A.Resize(72, 80), A.Normalize(mean=MEAN, std=STD), _pad(), ToTensorV2()])
    ckpt = ckpt_dir / "unet.pth"
    with pytest.raises(PlanError, match=r"members\[0\]\.input_size: \[64, 64\] contradicts .*val_transform.json \(input_size \[72, 80\]\)"):
        _member(_plan(tmp_path, ckpt, extra="    input_size: [64, 64]"))
    with pytest.raises(PlanError, match=r"members\[0\]\.mean: \[0.485, 0.456, 0.406\] contradicts"):  # set under defaults
        _member(_plan(tmp_path, ckpt, defaults="  mean: [0.485, 0.456, 0.406]"))
    agreeing = _member(_plan(tmp_path, ckpt, extra=f"    std: {list(STD)}\n    stride: 32"))  # agreeing fields are fine
    assert agreeing.std == pytest.approx(STD)
    untouched = _member(_plan(tmp_path, ckpt, extra="    scales: [1.0, 1.5]"))
    assert untouched.scales == [1.0, 1.5] and untouched.input_size == (72, 80)
