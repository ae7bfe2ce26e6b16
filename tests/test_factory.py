"""A team's own architecture: ``factory: module:function`` imported from the plan's code_path only with
trust_code, called with factory_kwargs, its checkpoint loaded, exported and equal to its own forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_plan

from segensemble.errors import PlanError
from segensemble.plan import parse_plan
from segensemble.runtime.engine import MEMBERS, Engine, Want
from segensemble.synthetic.data import smooth_image

CODE = '''
import torch


class BiFPNish(torch.nn.Module):
    """A stand-in for a team's own EfficientNet + BiFPN head: two resolutions fused, a dict out."""

    def __init__(self, classes, width):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, width, 3, padding=1)
        self.down = torch.nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.head = torch.nn.Conv2d(width, classes, 1)

    def forward(self, x):
        a = torch.relu(self.stem(x))
        b = torch.nn.functional.interpolate(torch.relu(self.down(a)), size=a.shape[2:], mode="bilinear", align_corners=False)
        return {"out": self.head(a + b)}


def build(classes, width=8):
    return BiFPNish(classes, width)
'''


def test_a_factory_member_equals_its_own_forward(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "team_bifpn.py").write_text(CODE)
    import sys

    sys.path.insert(0, str(tmp_path / "code"))
    try:
        import team_bifpn

        torch.manual_seed(0)
        model = team_bifpn.build(3, width=8).eval()
    finally:
        sys.path.remove(str(tmp_path / "code"))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "team.pth")
    member = {"name": "team", "factory": "team_bifpn:build", "factory_kwargs": {"classes": 3, "width": 8}, "code_path": "code",
              "trust_code": True, "checkpoint": "team.pth", "tta": ["identity", "hflip"]}
    result = build_plan({"classes": ["a", "b", "c"], "members": [member]}, tmp_path / "build", tmp_path)
    assert result.manifest.graphs[""].verified.max_abs_prob <= 1e-4
    image = smooth_image((64, 96), 0)
    got = Engine.from_build(tmp_path / "build").predict([image], Want({MEMBERS}))[0].members["team"]
    from segensemble.constants import IMAGENET_MEAN, IMAGENET_STD

    x = torch.from_numpy(((image / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)[None].astype(np.float32))
    with torch.no_grad():
        want = (model(x)["out"].softmax(1) + model(x.flip(-1))["out"].softmax(1).flip(-1))[0].numpy() / 2
    assert np.abs(got - want).max() < 1e-4


def test_a_factory_needs_trust_code(tmp_path):
    member = {"name": "team", "factory": "team_bifpn:build", "code_path": "code", "checkpoint": "team.pth"}
    with pytest.raises(PlanError, match="factory: importing team_bifpn runs its code; set trust_code: true"):
        parse_plan({"classes": ["a"], "members": [member]}, tmp_path)
    with pytest.raises(PlanError, match="factory"):
        parse_plan({"classes": ["a"], "members": [member | {"factory": "not a factory", "trust_code": True}]}, tmp_path)
