"""Shared fixtures: synthetic data and tiny models really trained on it (once per test session)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from segensemble.synthetic.trainer import TINY_KWARGS

CLASSES = ["Background", "General trash", "Paper", "Metal"]
UNET_KW, FPN_KW = TINY_KWARGS["Unet"], TINY_KWARGS["FPN"]


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    from segensemble.synthetic.data import write_split

    root = tmp_path_factory.mktemp("data")
    return {
        "root": root,
        "train": write_split(root, 24, CLASSES, (64, 64), seed=0, name="train"),
        "test": write_split(root, 6, CLASSES, (64, 80), seed=1, name="test"),
    }


@pytest.fixture(scope="session")
def trained(data):
    """A tiny Unet with epoch snapshots and a tiny FPN, trained for seconds on CPU."""
    from segensemble.models.registry import ModelSpec
    from segensemble.synthetic.trainer import load_split_arrays, train_tiny

    train = data["train"]
    images, masks = load_split_arrays(train.images, json.loads(train.coco.read_text())["images"], train.masks)
    unet, snaps = train_tiny(ModelSpec("Unet", "resnet18", len(CLASSES), extra=UNET_KW), images, masks, steps=40, snapshots=(20, 30, 40))
    fpn, _ = train_tiny(ModelSpec("FPN", "resnet18", len(CLASSES), extra=FPN_KW), images, masks, steps=30, seed=1)
    return {"unet": unet, "unet_snaps": snaps, "fpn": fpn}


@pytest.fixture(scope="session")
def ckpt_dir(trained, tmp_path_factory):
    from segensemble.synthetic.trainer import save_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(trained["unet"], root / "unet.pth", "lightning")
    for step, state in trained["unet_snaps"].items():
        save_checkpoint(trained["unet"], root / f"unet_e{step}.pth", "nested_state_dict", state)
    save_checkpoint(trained["fpn"], root / "fpn_dir", "smp_dir")
    save_checkpoint(trained["fpn"], root / "fpn.pth", "dataparallel")
    return root


def plan_text(ckpt: Path, data_root: Path, onnx_member: Path | None = None) -> str:
    """A plan over every axis: scales, folds, architectures, TTA, epochs, SWA (and an ONNX member)."""
    text = f"""
    classes: {json.dumps(CLASSES)}
    profiles:
      fast: {{members: [unet-ms, fpn], tta: [identity], scales: [1.0]}}
    defaults:
      arch: Unet
      encoder: resnet18
      model_kwargs: {json.dumps(UNET_KW)}
      tta: [identity, hflip]
    members:
      - name: unet-ms
        checkpoint: {ckpt}/unet.pth
        scales: [0.75, 1.0, 1.25]
        weight: 2.0
      - name: unet-folds
        folds: [{ckpt}/unet_e30.pth, {ckpt}/unet_e40.pth]
        tta: [identity, vflip, rot90, rot270, transpose]
      - name: unet-epochs
        epochs: [{ckpt}/unet_e20.pth, {ckpt}/unet_e30.pth]
        input_size: [96, 96]
      - name: unet-swa
        swa: [{ckpt}/unet_e20.pth, {ckpt}/unet_e30.pth, {ckpt}/unet_e40.pth]
        bn_images: {data_root}/train
      - name: fpn
        checkpoint: {ckpt}/fpn_dir
        arch: null
        encoder: null
        model_kwargs: {{}}
        weight: 0.5
    """
    if onnx_member:
        text += f"""
      - name: exported
        onnx: {onnx_member}
        tta: [identity]
    """
    return textwrap.dedent(text)


@pytest.fixture(scope="session")
def built(ckpt_dir, data, tmp_path_factory):
    from segensemble.export.build import build
    from segensemble.plan import load_plan

    root = tmp_path_factory.mktemp("build")
    plan_file = root / "plan.yaml"
    plan_file.write_text(plan_text(ckpt_dir, data["root"]))
    result = build(load_plan(plan_file), root / "out", quiet=True)
    return {"plan": plan_file, "dir": root / "out", "result": result}


@pytest.fixture(scope="session")
def engine(built):
    from segensemble.runtime.engine import Engine

    return Engine.from_build(built["dir"])


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img)
