"""plan.yaml parsing: defaults, path resolution, and errors that name the YAML path of the bad field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from segensemble.errors import PlanError
from segensemble.plan import load_plan, parse_plan

GOOD = """
classes: [Background, Paper, Metal]
defaults:
  arch: Unet
  encoder: resnet34
  scales: [1.0]
  tta: [identity, hflip]
  input_size: [512, 512]
members:
  - name: a
    folds: [ckpt/f0.pth, ckpt/f1.pth]
  - name: b
    checkpoint: ckpt/b_dir
    scales: [0.75, 1.0, 1.25]
    tta: [identity, hflip, vflip, rot90]
    weight: 2
  - name: c
    swa: [e1.pth, e2.pth]
    bn_images: imgs
  - name: d
    onnx: exported/x.onnx
"""


def _parse(text: str, base: Path = Path("/plans")):
    return parse_plan(yaml.safe_load(textwrap.dedent(text)), base_dir=base)


def test_good_plan_applies_defaults_and_resolves_paths():
    plan = _parse(GOOD)
    a, b, c, d = plan.members
    assert a.axis == "folds" and a.sources == ["/plans/ckpt/f0.pth", "/plans/ckpt/f1.pth"]
    assert a.tta == ["identity", "hflip"] and a.input_size == (512, 512) and a.arch == "Unet"
    assert b.scales == [0.75, 1.0, 1.25] and b.weight == 2 and b.views == 12 * b.model_count
    assert c.axis == "swa" and c.bn_images == "/plans/imgs"
    assert d.axis == "onnx" and d.sources == ["/plans/exported/x.onnx"]


def test_example_plan_parses_and_covers_every_axis():
    plan = load_plan(Path(__file__).parent.parent / "examples" / "plan.yaml")
    axes = {m.axis for m in plan.members}
    assert {"checkpoint", "folds", "epochs", "swa", "onnx"} <= axes
    assert any(len(m.scales) > 1 for m in plan.members) and any(len(m.tta) > 1 for m in plan.members)
    assert len({m.arch for m in plan.members if m.arch}) >= 2


BAD = [
    ("members[1].scales[1]: ", "scales: [0.75, 1.0, 1.25]", "scales: [1.0, -0.5]", "must be > 0"),
    ("defaults.tta[1]: ", "tta: [identity, hflip]", "tta: [identity, mirror]", "'mirror'"),
    ("members[1].tta[0]: ", "weight: 2", "weight: 2\n    tta: [rot45]", "'rot45'"),
    ("members[2]: ", "swa: [e1.pth, e2.pth]", "swa: [e1.pth, e2.pth]\n    checkpoint: x.pth", "exactly one of"),
    ("members[1].weight: ", "weight: 2", "weight: 0", "must be > 0"),
    ("defaults.input_size: ", "input_size: [512, 512]", "input_size: [512, 0]", "both in 1..16384"),
    ("members[2].swa: ", "swa: [e1.pth, e2.pth]", "swa: [e1.pth]", "at least 2"),
    ("members[1].colour: ", "weight: 2", "weight: 2\n    colour: red", "unknown field"),
    ("members[1].name: ", "name: b", "name: a", "duplicate name 'a'"),
    ("defaults.std: ", "scales: [1.0]\n  tta", "scales: [1.0]\n  std: [0.2, 0.0, 0.2]\n  tta", "must be > 0"),
    ("classes: ", "classes: [Background, Paper, Metal]", "classes: []", "at least 1"),
    ("members[0].bn_images: ", "folds: [ckpt/f0.pth, ckpt/f1.pth]", "folds: [ckpt/f0.pth]\n    bn_images: x", "only applies to swa"),
]


@pytest.mark.parametrize("where,old,new,message", BAD, ids=[b[0].strip(": ") for b in BAD])
def test_bad_plans_name_the_field(where, old, new, message):
    text = textwrap.dedent(GOOD)
    assert old in text
    text = text.replace(old, new, 1)
    with pytest.raises(PlanError) as err:
        _parse(text)
    msg = str(err.value)
    assert msg.startswith(where) or (where == "members[2]: " and "members[2]" in msg), msg
    assert message in msg, msg


def test_unreadable_and_non_mapping_plans(tmp_path):
    with pytest.raises(PlanError, match="cannot read plan"):
        load_plan(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes: [a, b\n")
    with pytest.raises(PlanError, match="not valid YAML"):
        load_plan(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(PlanError, match="must be a mapping"):
        load_plan(bad)
    bad.write_text("classes: [a]\nmembers: []\n")
    with pytest.raises(PlanError, match="members: must be a non-empty list"):
        load_plan(bad)


@pytest.mark.parametrize("profile,message", [
    ("{members: [a, zz]}", "profiles.light.members[1]: no member named 'zz'"),
    ("{tta: [vflip]}", "profiles.light: leaves member 'a' with no TTA view"),
    ("{scales: [2.0]}", "profiles.light: leaves member 'a' with no scale"),
    ("{tta: [blur]}", "profiles.light.tta[0]"),
])
def test_bad_profiles(profile, message):
    with pytest.raises(PlanError) as err:
        _parse(GOOD + f"profiles:\n  light: {profile}\n")
    assert str(err.value).startswith(message), str(err.value)


def test_good_profile():
    plan = _parse(GOOD + "profiles:\n  light: {members: [b], tta: [identity], scales: [1.0]}\n")
    assert plan.profiles["light"].members == ["b"]
