"""Hugging Face members: a save_pretrained folder of a tiny SegformerForSemanticSegmentation (random weights,
written here), its preprocessing read from preprocessor_config.json, its 1/4-resolution logits resized in the
graph before the softmax; equal to Hugging Face's own processor + model + upsampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_plan

from segensemble.errors import CheckpointError, PlanError
from segensemble.runtime.engine import MEMBERS, Engine, Want
from segensemble.synthetic.data import smooth_image

transformers = pytest.importorskip("transformers")
CLASSES = ["background", "road", "car"]


def _segformer(folder, size=(64, 64), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)):
    torch.manual_seed(0)
    config = transformers.SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 16, 16], num_attention_heads=[1, 1, 1, 1],
                                          decoder_hidden_size=16, num_labels=3, id2label=dict(enumerate(CLASSES)),
                                          label2id={c: i for i, c in enumerate(CLASSES)})
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    processor = transformers.SegformerImageProcessor(size={"height": size[0], "width": size[1]}, image_mean=list(mean), image_std=list(std))
    processor.save_pretrained(folder)
    return model, processor


def test_a_segformer_folder_equals_hugging_faces_own_pipeline(tmp_path):
    model, processor = _segformer(tmp_path / "segformer")
    plan = {"classes": CLASSES, "members": [{"name": "segformer", "framework": "transformers", "checkpoint": "segformer",
                                              "tta": ["identity", "hflip"]}]}
    result = build_plan(plan, tmp_path / "build", tmp_path)
    member = result.manifest.members[0]
    assert member.input_size == (64, 64) and np.allclose(member.mean, (0.5, 0.4, 0.3)) and np.allclose(member.std, (0.2, 0.25, 0.3))
    assert member.models[0].resize_output and member.models[0].form == "hf_dir"
    assert result.manifest.graphs[""].verified.max_abs_prob <= 1e-4
    image = smooth_image((64, 64), 3)  # at the processor's size: its resize is the identity, so only the model differs
    got = Engine.from_build(tmp_path / "build").predict([image], Want({MEMBERS}))[0].members["segformer"]
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    views = []
    with torch.no_grad():
        for flip in (False, True):
            x = pixels.flip(-1) if flip else pixels
            logits = model(pixel_values=x).logits
            p = torch.nn.functional.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False).softmax(1)
            views.append(p.flip(-1) if flip else p)
    want = torch.stack(views).mean(0)[0].numpy()
    assert np.abs(got - want).max() < 1e-4


def test_folder_checks(tmp_path):
    _segformer(tmp_path / "seg")
    (tmp_path / "seg" / "model.safetensors").rename(tmp_path / "seg" / "other.bin")
    plan = {"classes": CLASSES, "members": [{"name": "s", "framework": "transformers", "checkpoint": "seg"}]}
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        build_plan(plan, tmp_path / "build", tmp_path)
    plan["members"][0]["encoder"] = "mit_b0"
    with pytest.raises(PlanError, match="framework transformers: the folder's config.json says the model"):
        build_plan(plan, tmp_path / "build", tmp_path)
    _segformer(tmp_path / "seg4")
    plan = {"classes": CLASSES + ["extra"], "members": [{"name": "s", "framework": "transformers", "checkpoint": "seg4"}]}
    with pytest.raises(CheckpointError, match="config.json has 3 labels"):
        build_plan(plan, tmp_path / "b4", tmp_path)


@pytest.mark.slow
def test_a_tiny_upernet_folder_equals_its_own_forward(tmp_path):
    torch.manual_seed(0)
    backbone = transformers.ConvNextConfig(num_channels=3, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                                           out_features=["stage1", "stage2", "stage3", "stage4"])
    config = transformers.UperNetConfig(backbone_config=backbone, hidden_size=16, auxiliary_in_channels=16, auxiliary_channels=8,
                                        use_auxiliary_head=False, num_labels=3)
    model = transformers.UperNetForSemanticSegmentation(config).eval()
    model.save_pretrained(tmp_path / "upernet", safe_serialization=True)
    # UperNet's pyramid pooling is adaptive: exported at a fixed size (input_size), as smp's PSPNet is
    plan = {"classes": CLASSES, "members": [{"name": "upernet", "framework": "transformers", "checkpoint": "upernet", "input_size": [64, 96]}]}
    result = build_plan(plan, tmp_path / "build", tmp_path)
    assert result.manifest.graphs[""].verified.max_abs_prob <= 1e-4
    image = smooth_image((64, 96), 4)
    got = Engine.from_build(tmp_path / "build").predict([image], Want({MEMBERS}))[0].members["upernet"]
    from segensemble.constants import IMAGENET_MEAN, IMAGENET_STD

    x = torch.from_numpy(((image / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)[None].astype(np.float32))
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    want = torch.nn.functional.interpolate(logits, size=(64, 96), mode="bilinear", align_corners=False).softmax(1)[0].numpy()
    assert np.abs(got - want).max() < 1e-4


def _vit_heads():
    """Tiny DPT and BEiT configs (ViT backbones, 4 layers of width 32, 64 x 64 inputs in 16-pixel patches)."""
    vit = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 37, "image_size": 64,
           "patch_size": 16, "num_labels": 3, "use_auxiliary_head": False}
    return {
        "dpt": lambda: transformers.DPTForSemanticSegmentation(transformers.DPTConfig(
            **vit, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 16, 16], fusion_hidden_size=16,
            reassemble_factors=[4, 2, 1, 0.5])),
        "beit": lambda: transformers.BeitForSemanticSegmentation(transformers.BeitConfig(
            **vit, out_indices=[0, 1, 2, 3], pool_scales=[1, 2], auxiliary_channels=8)),
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dpt", "beit"])
def test_tiny_dpt_and_beit_folders_equal_their_own_forward(tmp_path, kind):
    """DPT (full-size logits) and BEiT (1/4-size logits, adaptive pyramid pooling: one export per view size)."""
    from eager import eager_member

    torch.manual_seed(0)
    model = _vit_heads()[kind]().eval()
    model.save_pretrained(tmp_path / kind, safe_serialization=True)
    plan = {"classes": CLASSES, "members": [{"name": kind, "framework": "transformers", "checkpoint": kind, "input_size": [64, 64],
                                             "tta": ["identity", "hflip"]}]}
    result = build_plan(plan, tmp_path / "build", tmp_path)
    assert result.manifest.graphs[""].verified.max_abs_prob <= 1e-4
    image = smooth_image((64, 96), 4)
    got = Engine.from_build(tmp_path / "build").predict([image], Want({MEMBERS}))[0].members[kind]
    want = eager_member(lambda x: model(pixel_values=x).logits, image, result.manifest.members[0])
    assert np.abs(got - want).max() < 1e-4
