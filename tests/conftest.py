"""Shared fixtures: synthetic data and tiny models really trained on it (once per test session)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

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


SIGMOID_CLASSES = ["radius", "ulna", "scaphoid"]  # overlapping, as bones in a hand X-ray


@pytest.fixture(scope="session")
def sigmoid_data(tmp_path_factory):
    """Overlapping-class images with COCO annotations that overlap: a train split and a test split."""
    from segensemble.synthetic.data import write_multilabel_split

    root = tmp_path_factory.mktemp("sigmoid")
    return {"root": root,
            "train": write_multilabel_split(root, 16, SIGMOID_CLASSES, (64, 64), seed=0, name="train"),
            "test": write_multilabel_split(root, 4, SIGMOID_CLASSES, (64, 80), seed=1, name="test")}


@pytest.fixture(scope="session")
def sigmoid_ckpts(sigmoid_data):
    """Tiny sigmoid members trained for seconds: two multilabel (Unet, FPN), a one-logit binary Unet and a
    binary Unet trained as a 2-class softmax (read as binary)."""
    from segensemble.models.registry import ModelSpec
    from segensemble.synthetic.trainer import load_split_arrays, save_checkpoint, train_tiny

    train, root = sigmoid_data["train"], sigmoid_data["root"]
    images, masks = load_split_arrays(train.images, json.loads(train.coco.read_text())["images"], train.masks)
    c = len(SIGMOID_CLASSES)
    unet, _ = train_tiny(ModelSpec("Unet", "resnet18", c, extra=UNET_KW), images, masks, steps=30)
    fpn, _ = train_tiny(ModelSpec("FPN", "resnet18", c, extra=FPN_KW), images, masks, steps=20, seed=1)
    one, _ = train_tiny(ModelSpec("Unet", "resnet18", 1, extra=UNET_KW), images, masks[:, :1], steps=12, seed=2)
    pair, _ = train_tiny(ModelSpec("Unet", "resnet18", 2, extra=UNET_KW), images, masks[:, 0].astype(np.int64), steps=12, seed=3)
    return {"unet": save_checkpoint(unet, root / "ml_unet.pth", "state_dict"), "fpn": save_checkpoint(fpn, root / "ml_fpn", "smp_dir"),
            "one": save_checkpoint(one, root / "bin_one.pth", "state_dict"), "pair": save_checkpoint(pair, root / "bin_pair.pth", "lightning")}


def sigmoid_plan(task: str, ckpts: dict, **top) -> dict:
    """A multilabel plan (three members: scales, class weights, a fixed size with rot90) or a binary one (a
    one-logit member and a softmax pair), with fields ``top`` added at the top level."""
    shared = {"arch": "Unet", "encoder": "resnet18", "model_kwargs": UNET_KW, "tta": ["identity", "hflip"]}
    if task == "binary":
        members = [{"name": "one", "checkpoint": str(ckpts["one"])}, {"name": "pair", "checkpoint": str(ckpts["pair"]), "weight": 0.5}]
        return {"task": "binary", "classes": SIGMOID_CLASSES[:1], "defaults": shared, "members": members, **top}
    members = [{"name": "unet", "checkpoint": str(ckpts["unet"]), "scales": [0.75, 1.0], "class_weights": [1.0, 2.0, 0.5]},
               {"name": "fpn", "checkpoint": str(ckpts["fpn"]), "arch": None, "encoder": None, "model_kwargs": {}, "weight": 2.0},
               {"name": "unet-fixed", "checkpoint": str(ckpts["unet"]), "tta": ["rot90"], "input_size": [48, 48]}]
    return {"task": "multilabel", "classes": SIGMOID_CLASSES, "defaults": shared, "members": members, **top}


def build_plan(raw: dict, out: Path, base: Path):
    """Build a plan given as a dict (paths absolute or relative to ``base``) into ``out``."""
    from segensemble.export.build import build
    from segensemble.plan import parse_plan

    return build(parse_plan(raw, base), out, quiet=True)


@pytest.fixture(scope="session")
def multilabel_built(sigmoid_ckpts, sigmoid_data):
    out = sigmoid_data["root"] / "build-multilabel"
    build_plan(sigmoid_plan("multilabel", sigmoid_ckpts, thresholds=[0.4, 0.5, 0.6]), out, sigmoid_data["root"])
    return out


@pytest.fixture(scope="session")
def binary_built(sigmoid_ckpts, sigmoid_data):
    out = sigmoid_data["root"] / "build-binary"
    build_plan(sigmoid_plan("binary", sigmoid_ckpts, thresholds=0.45), out, sigmoid_data["root"])
    return out


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img)


def cli(*args) -> subprocess.CompletedProcess:
    """``ensemble ARGS`` in a fresh interpreter, output captured."""
    return subprocess.run([sys.executable, "-m", "segensemble.cli", *map(str, args)], capture_output=True, text=True)


def file_tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: compare before and after to show nothing changed."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(build_dir, *flags, env_app: bool = False):
    """`ensemble serve --build DIR` (or, with env_app, `uvicorn segensemble.serve.app:app` + SEGENSEMBLE_BUILD)."""
    port = free_port()
    if env_app:
        cmd = [sys.executable, "-m", "uvicorn", "segensemble.serve.app:app", "--host", "127.0.0.1", "--port", str(port)]
        env = {**os.environ, "SEGENSEMBLE_BUILD": str(build_dir), "SEGENSEMBLE_MAX_BATCH": "2"}
    else:
        cmd = [sys.executable, "-m", "segensemble.cli", "serve", "--build", str(build_dir), "--port", str(port), *flags]
        env = None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stdout.read()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("server did not become ready")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG") if mode else Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
