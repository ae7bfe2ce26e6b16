"""ONNX members exported elsewhere (MMDeploy, a teammate's own export): outputs at a lower resolution resized in
the graph (logits, before the softmax), probabilities turned back into logits, and outputs the vote cannot use
(an argmax'd label map, channels-last) refused saying what was found."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_plan
from eager import eager_member

from segensemble.errors import PlanError
from segensemble.runtime.engine import MEMBERS, Engine, Want
from segensemble.synthetic.data import smooth_image

CLASSES = ["background", "a", "b"]


class QuarterRes(torch.nn.Module):
    """Logits at 1/4 of the input's size, as SegFormer or an mmseg decode head gives them; optionally ending in
    its softmax, argmax or channels-last."""

    def __init__(self, end: str = "logits"):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 4, stride=4)
        self.end = end

    def forward(self, x):
        y = self.conv(x) * 3
        if self.end == "probs":
            return y.softmax(1)
        if self.end == "argmax":
            return y.argmax(1, keepdim=True)
        if self.end == "nhwc":
            return y.permute(0, 2, 3, 1)
        return y


def _export(module, path) -> None:
    torch.onnx.export(module, torch.zeros(1, 3, 64, 64), str(path), input_names=["x"], output_names=["y"], opset_version=17,
                      dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h", 3: "w"}}, dynamo=False)


def _logits(module):
    """The module's output as logits (log-probabilities for a probs output: the same softmax)."""
    return lambda x: torch.log(module(x).clamp_min(1e-12)) if module.end == "probs" else module(x)


@pytest.mark.parametrize("end", ["logits", "probs"])
def test_low_resolution_outputs_are_resized_in_the_graph(tmp_path, end):
    module = QuarterRes(end).eval()
    _export(module, tmp_path / "m.onnx")
    plan = {"classes": CLASSES, "members": [{"name": "m", "onnx": "m.onnx", "onnx_output": end, "tta": ["identity", "hflip"]}]}
    result = build_plan(plan, tmp_path / "build", tmp_path)
    entry = result.manifest.members[0].models[0]
    assert entry.resize_output and entry.output == end
    assert result.manifest.graphs[""].verified.max_abs_prob <= 1e-4  # the graph equals the reference loop
    image = smooth_image((64, 96), 1)  # multiples of the stride and of 4: no padding enters
    got = Engine.from_build(tmp_path / "build").predict([image], Want({MEMBERS}))[0].members["m"]
    assert np.abs(got - eager_member(_logits(module), image, result.manifest.members[0])).max() < 1e-4


@pytest.mark.parametrize("end,message", [("argmax", "an argmax'd label map cannot be voted"), ("nhwc", "looks channels-last")])
def test_outputs_the_vote_cannot_use_are_refused(tmp_path, end, message):
    _export(QuarterRes(end).eval(), tmp_path / "m.onnx")
    plan = {"classes": CLASSES, "members": [{"name": "m", "onnx": "m.onnx"}]}
    with pytest.raises(PlanError, match=message):
        build_plan(plan, tmp_path / "build", tmp_path)
