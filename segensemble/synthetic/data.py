"""Coloured shapes on textured backgrounds, with COCO annotations written through pycocotools.

Each non-background class has its own colour family and shape, so a tiny model can learn it in seconds;
textures, jitter and overlaps keep it from being trivial.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from segensemble.formats.atomic import write_atomic
from segensemble.formats.coco import encode_rle
from segensemble.views import bilinear

TRASH_CLASSES = ["Background", "General trash", "Paper", "Paper pack", "Metal", "Glass",
                 "Plastic", "Styrofoam", "Plastic bag", "Battery", "Clothing"]
_SHAPES = ("circle", "rect", "triangle", "ellipse")


@dataclass(frozen=True)
class SyntheticSplit:
    images: Path  # image root
    coco: Path  # annotations
    masks: list[np.ndarray]  # ground-truth label maps, in COCO image order


def _class_colour(cls: int, classes: int) -> np.ndarray:
    hue = int(180 * (cls - 1) / max(1, classes - 1))
    hsv = np.uint8([[[hue, 200, 220]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def make_sample(rng: np.random.Generator, size_hw: tuple[int, int], classes: int, max_objects: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 image and its label map (0 = background)."""
    h, w = size_hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    freq = rng.uniform(0.05, 0.3)
    texture = 90 + 30 * np.sin(xx * freq + rng.uniform(0, 6)) * np.cos(yy * freq * 0.7) + rng.normal(0, 12, (h, w))
    image = np.stack([texture * rng.uniform(0.7, 1.1) for _ in range(3)], axis=2)
    labels = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(1, classes))
        mask = _shape_mask(rng, (h, w), _SHAPES[(cls - 1) % len(_SHAPES)], radius=(10, 4))
        colour = _class_colour(cls, classes) + rng.normal(0, 10, 3)
        on = mask.astype(bool)
        image[on] = colour + rng.normal(0, 8, (int(on.sum()), 3))
        labels[on] = cls
    return np.clip(image, 0, 255).astype(np.uint8), labels


def make_multilabel_sample(rng: np.random.Generator, size_hw: tuple[int, int], classes: int,
                           max_objects: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 image and its (C, H, W) uint8 masks: translucent shapes, one colour and shape per class,
    that may overlap (where they do, both classes are on and the colours mix), as bones do in an X-ray."""
    h, w = size_hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = 70 + 20 * np.sin(xx * rng.uniform(0.05, 0.3)) * np.cos(yy * 0.1) + rng.normal(0, 8, (h, w))
    image = np.repeat(image[..., None], 3, axis=2)
    masks = np.zeros((classes, h, w), np.uint8)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(0, classes))
        mask = _shape_mask(rng, (h, w), _SHAPES[cls % len(_SHAPES)], radius=(8, 3), central=True)
        on = mask.astype(bool)
        image[on] = 0.45 * image[on] + 0.55 * (_class_colour(cls + 1, classes + 1) + rng.normal(0, 6, 3))
        masks[cls] |= mask
    return np.clip(image, 0, 255).astype(np.uint8), masks


def _shape_mask(rng: np.random.Generator, hw: tuple[int, int], shape: str, radius: tuple[int, int], central: bool = False) -> np.ndarray:
    """A filled shape whose radius lies between min(h, w) / radius[0] and / radius[1]; ``central`` keeps its
    centre in the middle half, so that shapes often overlap."""
    h, w = hw
    mask = np.zeros((h, w), np.uint8)
    cy, cx = (int(rng.integers(h // 4, 3 * h // 4 + 1)), int(rng.integers(w // 4, 3 * w // 4 + 1))) if central else \
        (int(rng.integers(0, h)), int(rng.integers(0, w)))
    r = int(rng.integers(max(3, min(h, w) // radius[0]), max(4, min(h, w) // radius[1])))
    if shape == "circle":
        cv2.circle(mask, (cx, cy), r, 1, -1)
    elif shape == "rect":
        cv2.rectangle(mask, (cx - r, cy - r // 2), (cx + r, cy + r // 2), 1, -1)
    elif shape == "triangle":
        cv2.fillPoly(mask, [np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)], 1)
    else:
        cv2.ellipse(mask, (cx, cy), (r, max(2, r // 2)), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask


def write_split(root: str | Path, count: int, class_names: list[str], size_hw: tuple[int, int] = (64, 64), seed: int = 0,
                name: str = "images") -> SyntheticSplit:
    """Write ``count`` PNG images under root/name and root/name.json (COCO, one RLE per class per image)."""
    def sample(rng):
        image, labels = make_sample(rng, size_hw, len(class_names))
        return image, labels, {cls: labels == cls for cls in np.unique(labels).tolist() if cls != 0}

    cats = [{"id": c, "name": n, "supercategory": "object"} for c, n in enumerate(class_names) if c > 0]
    return _write(Path(root), name, count, size_hw, seed, sample, cats)


def write_multilabel_split(root: str | Path, count: int, class_names: list[str], size_hw: tuple[int, int] = (64, 64),
                           seed: int = 0, name: str = "images") -> SyntheticSplit:
    """Like ``write_split`` for overlapping classes: COCO with one annotation per class present in an image
    (annotations of one image may overlap); ``masks`` holds each image's (C, H, W) masks."""
    def sample(rng):
        image, masks = make_multilabel_sample(rng, size_hw, len(class_names))
        return image, masks, {c + 1: m.astype(bool) for c, m in enumerate(masks) if m.any()}

    cats = [{"id": c + 1, "name": n, "supercategory": "object"} for c, n in enumerate(class_names)]
    return _write(Path(root), name, count, size_hw, seed, sample, cats)


def _write(root: Path, name: str, count: int, size_hw: tuple[int, int], seed: int, sample, cats: list[dict]) -> SyntheticSplit:
    """Images from ``sample(rng)`` -> (image, truth, {category id: mask}) as PNGs, and their COCO file."""
    from PIL import Image

    img_dir = root / name
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations, truths = [], [], []
    for i in range(count):
        image, truth, by_category = sample(rng)
        file_name = f"{name}_{i:04d}.png"
        Image.fromarray(image).save(img_dir / file_name)
        images.append({"id": i + 1, "file_name": file_name, "height": size_hw[0], "width": size_hw[1]})
        for cat, mask in by_category.items():
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cat, "iscrowd": 0,
                                "area": int(mask.sum()), "bbox": _bbox(mask), "segmentation": encode_rle(mask)})
        truths.append(truth)
    coco = {"images": images, "annotations": annotations, "categories": cats}
    coco_path = root / f"{name}.json"
    write_atomic(coco_path, lambda tmp: tmp.write_text(json.dumps(coco)))
    return SyntheticSplit(img_dir, coco_path, truths)


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def smooth_image(hw: tuple[int, int], seed: int) -> np.ndarray:
    """Low-frequency random RGB: image-like regions, so predictions are not all near-ties."""
    coarse = np.random.default_rng(seed).uniform(0, 255, (max(2, hw[0] // 8), max(2, hw[1] // 8), 3))
    return np.clip(bilinear(coarse, *hw), 0, 255).astype(np.uint8)
