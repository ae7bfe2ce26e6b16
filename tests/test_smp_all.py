"""Every architecture smp lists, as members of one plan at their own view sizes (two scales and hflip), each
equal to its own eager forward: the adaptive-pooling ones (PSPNet, UPerNet) through one export per view size,
PAN at sizes its pyramid takes (PyTorch itself refuses smaller), DPT with a size-free ViT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_plan
from eager import eager_member

from segensemble.models.registry import ModelSpec, create_model, list_architectures
from segensemble.runtime.engine import MEMBERS, Engine, Want
from segensemble.synthetic.data import smooth_image

CLASSES = ["background", "a", "b"]
ENCODERS = {"Segformer": "mit_b0", "DPT": "tu-vit_tiny_patch16_224"}
KWARGS = {"DPT": {"dynamic_img_size": True}}  # timm ViTs take one size unless built to interpolate their position embedding
SIZES = {"PAN": ([128, 128], [1.0, 1.25])}  # PAN's pyramid pools the 1/32 map to 1/8 of it: at least 4 x 4 there


@pytest.fixture(scope="module")
def every_arch(tmp_path_factory):
    root = tmp_path_factory.mktemp("smp-all")
    models, members = {}, []
    for arch in list_architectures():
        torch.manual_seed(0)
        spec = ModelSpec(arch, ENCODERS.get(arch, "resnet18"), len(CLASSES), extra=KWARGS.get(arch, {}))
        models[arch] = create_model(spec).eval()
        torch.save(models[arch].state_dict(), root / f"{arch}.pth")
        size, scales = SIZES.get(arch, ([64, 64], [1.0, 1.5]))
        members.append({"name": arch, "arch": arch, "encoder": spec.encoder, "checkpoint": f"{arch}.pth", "input_size": size,
                        "scales": scales, "tta": ["identity", "hflip"], **({"model_kwargs": spec.extra} if spec.extra else {})})
    result = build_plan({"classes": CLASSES, "members": members}, root / "build", root)
    return {"dir": root / "build", "models": models, "result": result}


@pytest.mark.slow
def test_every_smp_architecture_equals_its_own_forward(every_arch):
    manifest = every_arch["result"].manifest
    assert {m.name for m in manifest.members} == set(list_architectures()) and len(manifest.members) == 12
    per_size = {m.name for m in manifest.members if m.models[0].sizes}
    assert {"PSPNet", "UPerNet"} <= per_size  # adaptive pooling: one export per view size (64 and 96)
    assert all(len(manifest.members[i].models[0].files()) == 2 for i, m in enumerate(manifest.members) if m.name in per_size)
    assert manifest.graphs[""].verified.max_abs_prob <= 1e-4
    engine = Engine.from_build(every_arch["dir"])
    image = smooth_image((96, 160), 4)
    got = engine.predict([image], Want({MEMBERS}))[0].members
    for member in engine.members:
        want = eager_member(every_arch["models"][member.name], image, member)
        assert np.abs(got[member.name] - want).max() < 1e-3, member.name
        assert (got[member.name].argmax(0) == want.argmax(0)).mean() > 0.999, member.name
