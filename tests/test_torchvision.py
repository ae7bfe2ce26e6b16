"""torchvision segmentation models as members: built from their builder with random weights (no downloads),
saved as torchvision saves them (a state_dict, a dict holding one; with or without the aux head), exported
and verified at the plan's views, and the member's probabilities equal torchvision's own forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_plan
from eager import eager_member

from segensemble.errors import PlanError
from segensemble.plan import parse_plan
from segensemble.runtime.engine import MEMBERS, Engine, Want
from segensemble.synthetic.data import smooth_image

segmentation = pytest.importorskip("torchvision.models.segmentation")
CLASSES = ["background", "a", "b"]


@pytest.fixture(scope="module")
def tv_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("tv")
    torch.manual_seed(0)
    lraspp = segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3).eval()
    deeplab = segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3, aux_loss=True).eval()
    torch.save(lraspp.state_dict(), root / "lraspp.pth")
    torch.save({"model": deeplab.state_dict(), "epoch": 3}, root / "deeplab.pth")
    plan = {"classes": CLASSES, "members": [
        {"name": "lraspp", "framework": "torchvision", "arch": "lraspp_mobilenet_v3_large", "checkpoint": "lraspp.pth",
         "scales": [0.75, 1.0], "tta": ["identity", "hflip"]},
        {"name": "deeplab", "framework": "torchvision", "arch": "deeplabv3_mobilenet_v3_large", "checkpoint": "deeplab.pth"}]}
    result = build_plan(plan, root / "build", root)
    return {"dir": root / "build", "models": {"lraspp": lraspp, "deeplab": deeplab}, "result": result}


def test_torchvision_members_equal_their_own_forward(tv_build):
    manifest = tv_build["result"].manifest
    assert manifest.graphs[""].verified.max_abs_prob <= 1e-4
    deeplab = next(m for m in manifest.members if m.name == "deeplab")
    assert deeplab.models[0].form == "nested:model" and deeplab.arch == "deeplabv3_mobilenet_v3_large"
    engine = Engine.from_build(tv_build["dir"])
    image = smooth_image((96, 128), 2)  # sides multiples of the stride: the padding the plan adds does not enter
    got = engine.predict([image], Want({MEMBERS}))[0].members
    for member in engine.members:
        model = tv_build["models"][member.name]
        want = eager_member(lambda x, model=model: model(x)["out"], image, member)
        assert np.abs(got[member.name] - want).max() < 1e-3, member.name
        assert (got[member.name].argmax(0) == want.argmax(0)).mean() > 0.999


def test_torchvision_plan_errors(tmp_path):
    (tmp_path / "m.pth").write_bytes(b"")
    base = {"name": "m", "framework": "torchvision", "checkpoint": "m.pth"}
    with pytest.raises(PlanError, match="a torchvision member names one of fcn_resnet50, .*lraspp_mobilenet_v3_large"):
        parse_plan({"classes": CLASSES, "members": [base | {"arch": "Unet"}]}, tmp_path)
    with pytest.raises(PlanError, match="leave out encoder"):
        parse_plan({"classes": CLASSES, "members": [base | {"arch": "fcn_resnet50", "encoder": "resnet50"}]}, tmp_path)


def test_both_save_forms_of_fcn_and_lraspp_load_as_the_same_model(tmp_path):
    """A state_dict and a whole pickled module (trust_pickle) of one model load to the same forward; a pickled
    model of another builder, or untrusted, is refused saying why."""
    from segensemble.errors import CheckpointError
    from segensemble.models.checkpoints import PartialSpec, load_checkpoint

    torch.manual_seed(0)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32))
    for arch, builder in (("fcn_resnet50", segmentation.fcn_resnet50), ("lraspp_mobilenet_v3_large", segmentation.lraspp_mobilenet_v3_large)):
        model = builder(weights=None, weights_backbone=None, num_classes=3).eval()
        torch.save(model.state_dict(), tmp_path / "sd.pth")
        torch.save(model, tmp_path / "whole.pth")
        want = PartialSpec(arch, None, 3, 3, {}, "torchvision")
        forms = [load_checkpoint(tmp_path / "sd.pth", want), load_checkpoint(tmp_path / "whole.pth", want, trust_pickle=True)]
        assert [f.form for f in forms] == ["state_dict", "pickled_module"] and forms[0].spec == forms[1].spec
        with torch.no_grad():
            reference = model(x)["out"]
            assert all(torch.equal(f.model(x), reference) for f in forms)
        with pytest.raises(CheckpointError, match="trust-pickle"):
            load_checkpoint(tmp_path / "whole.pth", want)
    with pytest.raises(CheckpointError, match="pickled model is a .*LRASPP; the plan's arch 'fcn_resnet50' builds a torchvision FCN"):
        load_checkpoint(tmp_path / "whole.pth", PartialSpec("fcn_resnet50", None, 3, 3, {}, "torchvision"), trust_pickle=True)
