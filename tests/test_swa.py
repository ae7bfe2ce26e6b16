"""SWA: the averaged member's weights are the uniform mean; BN recalibration changes its statistics."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import torch
from conftest import CLASSES, UNET_KW

from segensemble.models.checkpoints import PartialSpec, load_checkpoint
from segensemble.models.swa import average_checkpoints, recalibrate_bn

SPEC = PartialSpec("Unet", "resnet18", len(CLASSES), 3, UNET_KW)


def test_weights_are_the_mean_and_bn_changes_after_recalibration(ckpt_dir, data):
    paths = [ckpt_dir / f"unet_e{s}.pth" for s in (20, 30, 40)]
    swa = average_checkpoints(paths, SPEC)
    states = [load_checkpoint(p, SPEC).model.state_dict() for p in paths]
    got = swa.model.state_dict()
    for key in ("encoder.conv1.weight", "decoder.blocks.0.conv1.0.weight", "segmentation_head.0.bias", "encoder.bn1.running_mean"):
        torch.testing.assert_close(got[key], torch.stack([s[key] for s in states]).mean(0))
    before = got["encoder.bn1.running_mean"].clone()
    from segensemble.formats.images import list_images, read_image
    from segensemble.views import prepare_input

    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    batches = [np.stack([prepare_input(read_image(r.path), (64, 64), mean, std, 32) for r in list_images(data["train"].images)])]
    assert recalibrate_bn(swa.model, batches) == 24
    after = swa.model.state_dict()["encoder.bn1.running_mean"]
    assert not torch.allclose(before, after)
    # the conv weights are untouched by recalibration
    torch.testing.assert_close(swa.model.state_dict()["encoder.conv1.weight"], got["encoder.conv1.weight"])


def test_cli_swa_says_whether_bn_was_recomputed(ckpt_dir, data, tmp_path):
    args = [sys.executable, "-m", "segensemble.cli", "export", "--swa", *(str(ckpt_dir / f"unet_e{s}.pth") for s in (20, 30)),
            "--arch", "Unet", "--encoder", "resnet18", "--model-kwargs", '{"encoder_depth": 3, "decoder_channels": [32, 16, 8]}']
    plain = subprocess.run([*args, "-o", str(tmp_path / "a.onnx")], capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr
    assert "AVERAGED, not recomputed" in plain.stdout
    recal = subprocess.run([*args, "--bn-images", str(data["train"].images), "-o", str(tmp_path / "b.onnx")], capture_output=True, text=True)
    assert recal.returncode == 0, recal.stderr
    assert "recomputed over 24 images" in recal.stdout
    metas = [{p.key: p.value for p in onnx.load(str(tmp_path / f)).metadata_props} for f in ("a.onnx", "b.onnx")]
    assert metas[0]["source_form"] == "swa" and metas[0]["source_sha256"] == metas[1]["source_sha256"]
