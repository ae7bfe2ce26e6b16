"""COCO in and out: image lists, ground-truth label maps as the contest baseline paints them, and RLE.

Label maps: a category's class id is the position of its name in the plan's classes; annotations are
painted largest area first so small objects stay on top; unannotated pixels are class 0 when the first
class is a background, else ``IGNORE``.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from segensemble.errors import ImageError, SegEnsembleError
from segensemble.formats.images import ImageRef
from segensemble.formats.paths import check_image_name

IGNORE = 255
BACKGROUND_NAMES = {"background", "bg", "_background_", "backgroud"}


def load_coco(path: str | Path):
    """A pycocotools COCO object, quietly, with a clear error for a bad file."""
    from pycocotools.coco import COCO

    path = Path(path)
    if not path.is_file():
        raise SegEnsembleError(f"{path}: COCO annotation file not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as exc:
        raise SegEnsembleError(f"{path}: not a valid COCO annotation file ({exc})") from exc


def coco_images(coco_path: str | Path, image_root: str | Path, coco=None) -> list[ImageRef]:
    """The COCO file's images in its own order, as ImageRefs under ``image_root``: each ``file_name`` is a path
    relative to ``image_root`` (absolute names and '..' are refused, naming the image)."""
    coco = coco or load_coco(coco_path)
    root = Path(image_root)
    refs = []
    for img in coco.dataset.get("images", []):
        try:
            name = check_image_name(img.get("file_name"))
        except ImageError as exc:
            raise SegEnsembleError(f"{coco_path}: image id {img.get('id')}: file_name {exc}") from None
        refs.append(ImageRef(name, root / name, img["id"]))
    _check_root(refs, Path(coco_path), root)
    return refs


def _check_root(refs: list[ImageRef], coco_path: Path, root: Path) -> None:
    """A wrong image root, said as such (with the folder that would work, if one nearby does), rather than
    as every image missing; a few missing images are left to the job (--skip-bad)."""
    if not refs or any(ref.path.is_file() for ref in refs):
        return
    from segensemble.formats.coco_roots import likely_roots

    name = refs[0].image_id
    hint = next((f"; {c} holds {name!r}, so that is likely the root: --images {c}" for c in likely_roots(coco_path, root)
                 if c != root and (c / name).is_file()), "")
    raise SegEnsembleError(f"{coco_path}: none of its {len(refs)} images is under the image root {root} (no {root / name}); "
                           f"COCO file_names are relative to the image root{hint}")


def category_map(coco, classes: list[str], source: str) -> dict[int, int]:
    """COCO category id -> plan class id, matched by name."""
    lookup = {name.lower(): i for i, name in enumerate(classes)}
    mapping, unknown = {}, []
    for cat in coco.loadCats(coco.getCatIds()):
        idx = lookup.get(cat["name"].lower())
        if idx is None:
            unknown.append(cat["name"])
        else:
            mapping[cat["id"]] = idx
    if unknown:
        raise SegEnsembleError(f"{source}: categories {unknown} are not among the plan's classes {classes}")
    return mapping


def has_background(classes: list[str]) -> bool:
    return classes[0].lower() in BACKGROUND_NAMES


def label_map(coco, image_id: int, cats: dict[int, int], unlabeled: int) -> np.ndarray:
    """Ground truth (H, W) uint8 for one COCO image."""
    info = coco.imgs[image_id]
    out = np.full((info["height"], info["width"]), unlabeled, dtype=np.uint8)
    anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None)), key=lambda a: -a.get("area", 0))
    for ann in anns:
        out[coco.annToMask(ann) > 0] = cats[ann["category_id"]]
    return out


def class_masks(coco, image_id: int, cats: dict[int, int], classes: int) -> np.ndarray:
    """Ground truth (C, H, W) bool for one COCO image whose annotations may overlap: each class its own mask."""
    info = coco.imgs[image_id]
    out = np.zeros((classes, info["height"], info["width"]), dtype=bool)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None)):
        out[cats[ann["category_id"]]] |= coco.annToMask(ann) > 0
    return out


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a boolean mask, with counts as str (JSON-ready)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def mask_rles(masks: np.ndarray, classes: list[str], probs: np.ndarray | None = None) -> list[dict]:
    """``class_rles`` for (C, H, W) masks that may overlap: one entry per class with any pixel on."""
    out = []
    for c, mask in enumerate(masks.astype(bool)):
        if mask.any():
            item = {"class_id": c, "class_name": classes[c], "area": int(mask.sum()), "rle": encode_rle(mask)}
            if probs is not None:
                item["mean_confidence"] = float(probs[c][mask].mean())
            out.append(item)
    return out


def class_rles(labels: np.ndarray, classes: list[str] | int, probs: np.ndarray | None = None, skip=frozenset()) -> list[dict]:
    """One RLE per class present (ids below ``classes``, not in ``skip``): class id, name, pixel area and
    (with probs) mean confidence."""
    names = classes if isinstance(classes, list) else [str(i) for i in range(classes)]
    out = []
    for cls in np.unique(labels).tolist():
        if cls in skip or cls >= len(names):
            continue
        mask = labels == cls
        item = {"class_id": int(cls), "class_name": names[cls], "area": int(mask.sum()), "rle": encode_rle(mask)}
        if probs is not None:
            item["mean_confidence"] = float(probs[cls][mask].mean())
        out.append(item)
    return out
