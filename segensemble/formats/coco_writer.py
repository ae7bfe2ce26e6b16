"""Writing COCO: pseudo-label annotations (one RLE per class present per image) and merging files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from segensemble.errors import SegEnsembleError
from segensemble.formats.coco import class_rles, mask_rles


def categories(classes: list[str], background: int | None) -> list[dict]:
    """COCO categories from the plan's class names; id = class id; the background class is implicit."""
    return [{"id": i, "name": n, "supercategory": "object"} for i, n in enumerate(classes) if i != background]


def image_annotations(labels: np.ndarray, background: int | None, classes: int) -> list[dict]:
    """Annotations (without ids) for one label map: one RLE per non-background class present."""
    return _annotations(class_rles(labels, classes, skip={background}))  # background is implicit; ignore_index is not a class


def mask_annotations(masks: np.ndarray) -> list[dict]:
    """Annotations (without ids) for (C, H, W) class masks that may overlap: one RLE per class present."""
    return _annotations(mask_rles(masks, [str(c) for c in range(len(masks))]))


def _annotations(items: list[dict]) -> list[dict]:
    from pycocotools import mask as mask_utils

    out = []
    for item in items:
        rle = item["rle"]
        x, y, w, h = mask_utils.toBbox({**rle, "counts": rle["counts"].encode()}).tolist()
        out.append({"category_id": item["class_id"], "iscrowd": 0, "area": item["area"], "bbox": [x, y, w, h], "segmentation": rle})
    return out


class CocoFileWriter:
    """``predict --format coco-rle``: a COCO file (images, one RLE annotation per class present per image,
    categories with id = class id), written under a temporary name and renamed once every image is done."""

    def __init__(self, target: Path, classes: list[str]):
        self.target, self.classes, self.records = Path(target), classes, []

    def write(self, image_id: str, masks: np.ndarray) -> None:
        self.records.append({"file_name": image_id, "height": masks.shape[1], "width": masks.shape[2],
                             "annotations": mask_annotations(masks)})

    def finish(self) -> Path:
        from segensemble.formats.atomic import write_atomic

        coco = assemble(self.records, categories(self.classes, None))
        write_atomic(self.target, lambda tmp: tmp.write_text(json.dumps(coco)))
        return self.target

    def abort(self) -> None:
        """Nothing was written: the file appears only complete."""


def assemble(records: list[dict], cats: list[dict]) -> dict:
    """A COCO dict from per-image records {file_name, height, width, annotations}; fresh unique ids."""
    images, anns = [], []
    for image_id, rec in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": rec["file_name"], "height": rec["height"], "width": rec["width"]})
        for ann in rec["annotations"]:
            anns.append({**ann, "id": len(anns) + 1, "image_id": image_id})
    return {"images": images, "annotations": anns, "categories": cats}


def merge(base: dict, extra: dict, source: str, base_prefix: str = "") -> tuple[dict, list[str]]:
    """(base + extra, the file_names of extra's images that base already has, left out with their annotations):
    extra's image and annotation ids shifted past base's; categories matched by name; ``base_prefix`` is
    prepended to base's file_names (both rebased onto one image root)."""
    by_name = {c["name"].lower(): c["id"] for c in base.get("categories", [])}
    remap = {}
    for cat in extra["categories"]:
        if cat["name"].lower() not in by_name:
            raise SegEnsembleError(f"{source}: has no category {cat['name']!r}; its categories are {sorted(by_name)}")
        remap[cat["id"]] = by_name[cat["name"].lower()]
    img_off = max((i["id"] for i in base.get("images", [])), default=0)
    ann_off = max((a["id"] for a in base.get("annotations", [])), default=0)
    images = [{**i, "file_name": base_prefix + i["file_name"]} for i in base.get("images", [])]
    known = {os.path.normpath(i["file_name"]) for i in images}
    duplicate = {i["id"] for i in extra["images"] if os.path.normpath(i["file_name"]) in known}
    images += [{**i, "id": i["id"] + img_off} for i in extra["images"] if i["id"] not in duplicate]
    anns = base.get("annotations", []) + [
        {**a, "id": a["id"] + ann_off, "image_id": a["image_id"] + img_off, "category_id": remap[a["category_id"]]}
        for a in extra["annotations"] if a["image_id"] not in duplicate
    ]
    return {**base, "images": images, "annotations": anns}, [i["file_name"] for i in extra["images"] if i["id"] in duplicate]


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SegEnsembleError(f"{path}: cannot read COCO json ({exc})") from exc
