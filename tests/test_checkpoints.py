"""Checkpoint loading in every save form, the pickle opt-in, and clear mismatch errors."""

from __future__ import annotations

import pytest
import torch
from conftest import CLASSES, UNET_KW

from segensemble.errors import CheckpointError
from segensemble.models.checkpoints import PartialSpec, load_checkpoint
from segensemble.synthetic.trainer import SAVE_FORMS, save_checkpoint

UNET = PartialSpec("Unet", "resnet18", len(CLASSES), 3, UNET_KW)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("form", [f for f in SAVE_FORMS if f != "pickled"])
def test_every_form_loads_the_same_weights(form, trained, tmp_path):
    path = save_checkpoint(trained["unet"], tmp_path / f"ckpt_{form}.pth", form)
    spec = UNET if form != "smp_dir" else None  # an smp directory carries its own spec
    loaded = load_checkpoint(path, spec)
    assert _same_weights(loaded.model, trained["unet"])
    assert loaded.spec.arch == "Unet" and loaded.spec.classes == len(CLASSES)
    assert len(loaded.sha256) == 64


def test_classes_are_read_from_the_checkpoint_when_not_given(trained, tmp_path):
    path = save_checkpoint(trained["unet"], tmp_path / "plain.pth", "state_dict")
    loaded = load_checkpoint(path, PartialSpec("Unet", "resnet18", None, 3, UNET_KW))
    assert loaded.spec.classes == len(CLASSES)


def test_pickled_model_needs_opt_in(trained, tmp_path):
    path = save_checkpoint(trained["unet"], tmp_path / "whole.pt", "pickled")
    with pytest.raises(CheckpointError, match="--trust-pickle") as err:
        load_checkpoint(path, UNET)
    assert str(path) in str(err.value)
    loaded = load_checkpoint(path, UNET, trust_pickle=True)
    assert loaded.form == "pickled_module" and _same_weights(loaded.model, trained["unet"])


def test_wrong_classes_names_file_and_keys(trained, tmp_path):
    path = save_checkpoint(trained["unet"], tmp_path / "u.pth", "state_dict")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, PartialSpec("Unet", "resnet18", 7, 3, UNET_KW))
    msg = str(err.value)
    assert str(path) in msg and f"the checkpoint was trained for {len(CLASSES)} classes, but 7 are asked for" in msg


def test_other_decoder_widths_are_not_called_a_class_count(trained, tmp_path):
    """Same keys, other decoder_channels: the head's input width differs, its class count does not (the message
    once said "trained for 5 classes, but 5 are asked for")."""
    path = save_checkpoint(trained["unet"], tmp_path / "u.pth", "state_dict")
    wider = {**UNET_KW, "decoder_channels": [2 * c for c in UNET_KW["decoder_channels"]]}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, PartialSpec("Unet", "resnet18", len(CLASSES), 3, wider))
    msg = str(err.value)
    assert "classes, but" not in msg and "shape mismatches" in msg and "decoder.blocks.0.conv1.0.weight" in msg


def test_wrong_encoder_lists_missing_and_unexpected_keys(trained, tmp_path):
    path = save_checkpoint(trained["unet"], tmp_path / "u.pth", "state_dict")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, PartialSpec("Unet", "mobilenet_v2", len(CLASSES), 3, UNET_KW))
    msg = str(err.value)
    assert str(path) in msg and "missing keys" in msg and "unexpected keys" in msg and "encoder." in msg


def test_wrong_architecture_is_an_error_not_a_half_load(trained, tmp_path):
    path = save_checkpoint(trained["unet"], tmp_path / "u.pth", "state_dict")
    with pytest.raises(CheckpointError, match="does not fit FPN"):
        load_checkpoint(path, PartialSpec("FPN", "resnet18", len(CLASSES)))


def test_unknown_architecture_lists_the_valid_ones(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="available: .*Unet"):
        load_checkpoint(path, PartialSpec("Unett", "resnet18", 4))


def test_smp_dir_spec_conflict(ckpt_dir):
    with pytest.raises(CheckpointError, match="asked for Unet"):
        load_checkpoint(ckpt_dir / "fpn_dir", PartialSpec("Unet", None, None))


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pth"):
        load_checkpoint(path, UNET)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pth", UNET)
