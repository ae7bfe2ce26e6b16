"""One ensemble of members from every framework a team trains with: smp, torchvision (a pickled fcn_resnet50 and a
nested lraspp state_dict), a Hugging Face SegFormer folder, a team's own factory module and an ONNX file with
1/4-resolution logits. Each member and the vote equal the frameworks' own eager forwards; predict writes
what the vote decides and the server answers the same, pixel for pixel."""

from __future__ import annotations

import sys

import httpx
import numpy as np
import pytest
import torch
from conftest import build_plan, cli, read_png, running_server
from eager import eager_member
from test_factory import CODE
from test_foreign_onnx import QuarterRes, _export
from test_huggingface import _segformer

from segensemble.runtime.engine import MEMBERS, PROBS, Engine, Want
from segensemble.synthetic.data import smooth_image

segmentation = pytest.importorskip("torchvision.models.segmentation")
pytest.importorskip("transformers")
CLASSES = ["background", "road", "car"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    torch.manual_seed(0)
    from segensemble.models.registry import ModelSpec, create_model

    forwards = {}
    unet = create_model(ModelSpec("Unet", "resnet18", 3))
    torch.save(unet.state_dict(), root / "unet.pth")
    forwards["smp"] = unet
    fcn = segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=3, aux_loss=True).eval()
    torch.save(fcn, root / "fcn.pth")  # the whole module, as some teammates save it
    forwards["fcn"] = lambda x: fcn(x)["out"]
    lraspp = segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3).eval()
    torch.save({"model": lraspp.state_dict()}, root / "lraspp.pth")
    forwards["lraspp"] = lambda x: lraspp(x)["out"]
    hf, _ = _segformer(root / "segformer")
    forwards["segformer"] = lambda x: hf(pixel_values=x).logits
    (root / "code").mkdir()
    (root / "code" / "team_mixed.py").write_text(CODE)
    sys.path.insert(0, str(root / "code"))
    try:
        import team_mixed

        team = team_mixed.build(3, width=8).eval()
    finally:
        sys.path.remove(str(root / "code"))
    torch.save(team.state_dict(), root / "team.pth")
    forwards["team"] = lambda x: team(x)["out"]
    quarter = QuarterRes("logits").eval()
    _export(quarter, root / "quarter.onnx")
    forwards["quarter"] = quarter
    tta = {"tta": ["identity", "hflip"]}
    plan = {"classes": CLASSES, "members": [
        {"name": "smp", "arch": "Unet", "encoder": "resnet18", "checkpoint": "unet.pth", "scales": [1.0, 0.75], **tta},
        {"name": "fcn", "framework": "torchvision", "arch": "fcn_resnet50", "checkpoint": "fcn.pth", "trust_pickle": True},
        {"name": "lraspp", "framework": "torchvision", "arch": "lraspp_mobilenet_v3_large", "checkpoint": "lraspp.pth", **tta},
        {"name": "segformer", "framework": "transformers", "checkpoint": "segformer", **tta},
        {"name": "team", "factory": "team_mixed:build", "factory_kwargs": {"classes": 3, "width": 8}, "code_path": "code",
         "trust_code": True, "checkpoint": "team.pth"},
        {"name": "quarter", "onnx": "quarter.onnx", **tta},
    ]}
    result = build_plan(plan, root / "build", root)
    return {"root": root, "dir": root / "build", "forwards": forwards, "result": result}


@pytest.mark.slow
def test_every_framework_in_one_ensemble_equals_their_own_forwards(mixed):
    manifest = mixed["result"].manifest
    assert manifest.graphs[""].verified.max_abs_prob <= 1e-4
    forms = {m.name: m.models[0].form for m in manifest.members}
    assert forms["fcn"] == "pickled_module" and forms["lraspp"] == "nested:model" and forms["segformer"] == "hf_dir"
    engine = Engine.from_build(mixed["dir"])
    image = smooth_image((64, 96), 5)  # sides multiples of the stride: no padding enters where the frameworks would not pad
    got = engine.predict([image], Want({MEMBERS, PROBS}))[0]
    wants = {}
    for member in engine.members:
        wants[member.name] = eager_member(mixed["forwards"][member.name], image, member)
        assert np.abs(got.members[member.name] - wants[member.name]).max() < 1e-3, member.name
    vote = sum(wants.values()) / len(wants)
    assert np.abs(got.probs - vote).max() < 1e-3 and (got.probs.argmax(0) == vote.argmax(0)).mean() > 0.999


@pytest.mark.slow
def test_every_framework_predicted_and_served_alike(mixed, tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    for k, hw in enumerate(((64, 96), (50, 70))):
        Image.fromarray(smooth_image(hw, 10 + k)).save(tmp_path / "images" / f"img{k}.png")
    done = cli("predict", tmp_path / "images", "--build", mixed["dir"], "--save-masks", tmp_path / "masks", "--format", "png")
    assert done.returncode == 0, done.stderr[-2000:]
    with running_server(mixed["dir"]) as (url, _):
        for path in sorted((tmp_path / "images").glob("*.png")):
            answer = httpx.post(f"{url}/segment?format=png", content=path.read_bytes(), headers={"content-type": "image/png"}, timeout=120)
            assert answer.status_code == 200, answer.text[:300]
            from test_postprocess import read_png_bytes

            offline = read_png(next((tmp_path / "masks").rglob(f"{path.stem}*.png")))
            assert (read_png_bytes(answer.content) == offline).all()
