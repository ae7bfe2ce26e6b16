"""Evaluate every member alone and the ensemble on labelled images: per-class IoU and mIoU of label maps
(multiclass), Dice and IoU of overlapping class masks (multilabel, binary), from COCO ground truth or, for
mask tasks, mask files laid out as ``predict --save-masks`` writes them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segensemble.errors import SegEnsembleError
from segensemble.formats.coco import IGNORE, category_map, class_masks, coco_images, has_background, label_map, load_coco
from segensemble.formats.images import ImageRef, list_images, read_image
from segensemble.formats.masks import mask_files
from segensemble.jobs.metrics import DiceMeter, IouMeter
from segensemble.progress import bar_off
from segensemble.runtime.engine import LABELS, MASKS, MEMBERS, Runner, Want

ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class EvaluateOptions:
    unlabeled: str | None = None  # "background" | "ignore" | None = decide from the plan's first class
    progress: bool = True


def evaluate(engine: Runner, coco_path: Path, image_root: Path, options: EvaluateOptions = EvaluateOptions()) -> dict:
    """{"ensemble": {...}, "members": {name: {...}}, "images": n}; each entry has miou, miou_per_image, iou
    (multiclass) or dice, iou and their per-class and dataset figures (multilabel, binary)."""
    coco = load_coco(coco_path)
    classes = engine.classes
    cats = category_map(coco, classes, str(coco_path))
    if engine.fusion.sigmoid:
        refs = coco_images(coco_path, image_root, coco)
        return evaluate_masks(engine, refs, lambda ref: class_masks(coco, ref.coco_id, cats, len(classes)), str(coco_path), options)
    unlabeled = unlabeled_value(options.unlabeled, classes)
    refs = coco_images(coco_path, image_root, coco)
    meters = {name: IouMeter(len(classes)) for name in [ENSEMBLE, *(m.name for m in engine.members)]}
    bar = tqdm(total=len(refs), unit="img", desc="evaluate", disable=bar_off(options.progress))
    for ref, result in engine.stream(refs, Want({LABELS, MEMBERS})):
        if isinstance(result, Exception):
            raise result
        gt = label_map(coco, ref.coco_id, cats, unlabeled)
        if gt.shape != result.labels.shape:
            raise SegEnsembleError(f"{ref.path}: image is {result.labels.shape} but {coco_path} says {gt.shape}")
        meters[ENSEMBLE].add(gt, result.labels)
        for name, probs in result.members.items():
            meters[name].add(gt, probs.argmax(0))
        bar.update()
    bar.close()
    return {
        "images": len(refs),
        "ensemble": meters[ENSEMBLE].summary(classes),
        "members": {name: meter.summary(classes) for name, meter in meters.items() if name != ENSEMBLE},
        "unlabeled": "background" if unlabeled == 0 else "ignore",
    }


def evaluate_masks(engine: Runner, refs: list[ImageRef], truth, source: str, options: EvaluateOptions = EvaluateOptions()) -> dict:
    """Dice and IoU of the ensemble's masks and of each member's (its probabilities > the plan's thresholds)
    against ``truth(ref)``, (C, H, W) bool per image."""
    classes, thresholds = engine.classes, np.asarray(engine.fusion.thresholds)[:, None, None]
    meters = {name: DiceMeter(len(classes)) for name in [ENSEMBLE, *(m.name for m in engine.members)]}
    bar = tqdm(total=len(refs), unit="img", desc="evaluate", disable=bar_off(options.progress))
    for ref, result in engine.stream(refs, Want({MASKS, MEMBERS})):
        if isinstance(result, Exception):
            raise result
        gt = truth(ref)
        if gt.shape != result.masks.shape:
            raise SegEnsembleError(f"{ref.path}: image is {result.masks.shape[1:]} but {source} says {gt.shape[1:]}")
        meters[ENSEMBLE].add(gt, result.masks)
        for name, probs in result.members.items():
            meters[name].add(gt, probs > thresholds)
        bar.update()
    bar.close()
    return {"images": len(refs), "task": engine.fusion.task, "ensemble": meters[ENSEMBLE].summary(classes),
            "members": {name: meter.summary(classes) for name, meter in meters.items() if name != ENSEMBLE}}


def evaluate_mask_files(engine: Runner, image_root: Path, masks_dir: Path, options: EvaluateOptions = EvaluateOptions()) -> dict:
    """``evaluate_masks`` with ground truth from mask files named as ``predict --save-masks`` writes them
    (x.jpg.png for binary, x.jpg.<class>.png per class for multilabel; any non-zero pixel is on)."""
    refs = list_images(image_root)
    task, classes = engine.fusion.task, engine.classes

    def truth(ref: ImageRef) -> np.ndarray:
        files = mask_files(masks_dir, ref.image_id, None, classes, task)
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise SegEnsembleError(f"{missing[0]}: no ground-truth mask for {ref.image_id} (--masks {masks_dir} names one file per "
                                   f"{'class' if task == 'multilabel' else 'image'}: {files[0].name})")
        return np.stack([read_image(f)[..., 0] > 0 for f in files])

    return evaluate_masks(engine, refs, truth, str(masks_dir), options)


def unlabeled_value(choice: str | None, classes: list[str]) -> int:
    if choice is None:
        return 0 if has_background(classes) else IGNORE
    if choice not in ("background", "ignore"):
        raise SegEnsembleError(f"--unlabeled: expected background or ignore, got {choice!r}")
    return 0 if choice == "background" else IGNORE

