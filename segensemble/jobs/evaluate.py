"""Evaluate: per-class IoU and mIoU of every member alone and of the ensemble on a labelled COCO set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from segensemble.errors import SegEnsembleError
from segensemble.formats.coco import IGNORE, category_map, coco_images, has_background, label_map, load_coco
from segensemble.jobs.metrics import IouMeter
from segensemble.runtime.engine import LABELS, MEMBERS, Runner, Want

ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class EvaluateOptions:
    unlabeled: str | None = None  # "background" | "ignore" | None = decide from the plan's first class
    progress: bool = True


def evaluate(engine: Runner, coco_path: Path, image_root: Path, options: EvaluateOptions = EvaluateOptions()) -> dict:
    """{"ensemble": {...}, "members": {name: {...}}, "images": n}; each entry has miou, miou_per_image, iou."""
    coco = load_coco(coco_path)
    classes = engine.classes
    cats = category_map(coco, classes, str(coco_path))
    unlabeled = unlabeled_value(options.unlabeled, classes)
    refs = coco_images(coco_path, image_root, coco)
    meters = {name: IouMeter(len(classes)) for name in [ENSEMBLE, *(m.name for m in engine.members)]}
    bar = tqdm(total=len(refs), unit="img", desc="evaluate", disable=not options.progress)
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


def unlabeled_value(choice: str | None, classes: list[str]) -> int:
    if choice is None:
        return 0 if has_background(classes) else IGNORE
    if choice not in ("background", "ignore"):
        raise SegEnsembleError(f"--unlabeled: expected background or ignore, got {choice!r}")
    return 0 if choice == "background" else IGNORE

