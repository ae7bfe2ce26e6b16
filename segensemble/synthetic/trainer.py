"""A tiny trainer: fits a small smp model on synthetic data in seconds on CPU, and saves it in every
checkpoint form people use (so loading is tested against real files, not mocks)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segensemble.constants import IMAGENET_MEAN, IMAGENET_STD
from segensemble.formats.images import read_image
from segensemble.models.registry import ModelSpec, create_model
from segensemble.progress import bar_off

TINY_KWARGS = {
    "Unet": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
    "FPN": {"decoder_pyramid_channels": 64, "decoder_segmentation_channels": 32},
}
SAVE_FORMS = ("state_dict", "nested_state_dict", "model_state_dict", "model_key", "dataparallel", "lightning", "smp_dir", "pickled")


def load_split_arrays(image_dir: Path, coco_images: list[dict], masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([read_image(Path(image_dir) / img["file_name"]) for img in coco_images])
    return images, np.stack(masks)


@dataclass(frozen=True)
class Recipe:
    """How a tiny model trains. The defaults are the tests' (seconds, any result); the demo's recipe trains
    members that learn every class, so that its ensemble is judged against members worth having."""

    lr: float = 3e-3
    dihedral: bool = False  # vertical flips and transposes besides horizontal flips: what vflip/rot90 TTA assumes
    dice: bool = False  # cross-entropy + soft Dice: a class of small objects is not left for background
    cosine: bool = False  # the learning rate decays to 0 along a cosine: the last snapshots settle


def train_tiny(spec: ModelSpec, images: np.ndarray, masks: np.ndarray, steps: int = 60, seed: int = 0,
               mean=IMAGENET_MEAN, std=IMAGENET_STD, recipe: Recipe = Recipe(), snapshots: tuple[int, ...] = (),
               crop: int | None = None, progress: str | None = None):
    """Train from random weights; returns the model and a state_dict copy at each step in ``snapshots``.

    ``crop`` trains on random square crops of that side (half the compute of 96x96 at 64: the demo's
    budget); ``progress`` names a step bar with the running loss, so a long fit never looks hung. Label maps
    (N, H, W) train a softmax model with cross-entropy; per-class masks (N, C, H, W) a sigmoid one with
    binary cross-entropy (multilabel and binary tasks).
    """
    import torch
    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = create_model(spec).train()
    x_all = torch.from_numpy(((images / 255.0 - np.asarray(mean)) / np.asarray(std)).astype(np.float32)).permute(0, 3, 1, 2)
    sigmoid = masks.ndim == 4
    y_all = torch.from_numpy(masks.astype(np.float32 if sigmoid else np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)) if recipe.cosine else 1.0)
    saved = {}
    bar = tqdm(range(1, steps + 1), desc=progress, unit="step", leave=False, disable=bar_off(progress is not None))
    for step in bar:
        idx = torch.from_numpy(rng.choice(len(x_all), size=min(8, len(x_all)), replace=False))
        x, y = _augment(*_random_crop(x_all[idx], y_all[idx], crop, rng), rng, recipe.dihedral)
        loss = _loss(model(x), y, sigmoid, recipe.dice)
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if step in snapshots:
            saved[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bar.close()
    return model.eval(), saved


def _augment(x, y, rng: np.random.Generator, dihedral: bool):
    """A random horizontal flip; with ``dihedral`` also a vertical flip and a transpose (square crops)."""
    if rng.random() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    if dihedral and rng.random() < 0.5:
        x, y = x.flip(-2), y.flip(-2)
    if dihedral and x.shape[-1] == x.shape[-2] and rng.random() < 0.5:
        x, y = x.transpose(-1, -2), y.transpose(-1, -2)
    return x, y


def _loss(logits, y, sigmoid: bool, dice: bool):
    import torch.nn.functional as F

    if sigmoid:
        return F.binary_cross_entropy_with_logits(logits, y)
    loss = F.cross_entropy(logits, y, ignore_index=255)  # 255 = void in real label maps
    if not dice:
        return loss
    valid = (y != 255).unsqueeze(1)
    p = logits.softmax(1) * valid
    truth = F.one_hot(y.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2) * valid
    overlap, total = (p * truth).sum((0, 2, 3)), (p + truth).sum((0, 2, 3))
    return loss + (1 - (2 * overlap + 1) / (total + 1)).mean()


def _random_crop(x, y, crop: int | None, rng: np.random.Generator):
    """One random window for the whole batch (NCHW images, NHW masks); the full image if it is smaller."""
    h, w = y.shape[-2:]
    if crop is None or (crop >= h and crop >= w):
        return x, y
    top, left = int(rng.integers(0, max(1, h - crop + 1))), int(rng.integers(0, max(1, w - crop + 1)))
    return x[..., top:top + crop, left:left + crop], y[..., top:top + crop, left:left + crop]


def save_checkpoint(model, path: Path, form: str, state: dict | None = None) -> Path:
    """Save in one of SAVE_FORMS; ``state`` overrides the model's own state_dict (epoch snapshots)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = state if state is not None else model.state_dict()
    if form == "state_dict":
        torch.save(state, path)
    elif form == "nested_state_dict":
        torch.save({"epoch": 3, "state_dict": state, "optimizer": {"lr": 0.001}}, path)
    elif form == "model_state_dict":
        torch.save({"epoch": 3, "model_state_dict": state, "best_miou": 0.5}, path)
    elif form == "model_key":
        torch.save({"model": state, "epoch": 3}, path)
    elif form == "dataparallel":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif form == "lightning":
        torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3, "global_step": 10}, path)
    elif form == "smp_dir":
        model.load_state_dict(state)
        model.save_pretrained(str(path))
    elif form == "pickled":
        torch.save(model, path)
    else:
        raise ValueError(f"unknown form {form!r}; choose from {SAVE_FORMS}")
    return path
