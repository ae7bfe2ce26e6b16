"""IoU from confusion matrices: dataset-level (all pixels pooled) and the contest's per-image average."""

from __future__ import annotations

import numpy as np

from segensemble.formats.coco import IGNORE


def confusion(gt: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) counts, rows = ground truth; IGNORE pixels are skipped."""
    valid = gt != IGNORE
    idx = gt[valid].astype(np.int64) * classes + pred[valid].astype(np.int64)
    return np.bincount(idx, minlength=classes * classes).reshape(classes, classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU per class; NaN where a class is in neither ground truth nor prediction."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(ious: np.ndarray) -> float:
    """The mean over defined classes; NaN when none is (no class in ground truth or prediction)."""
    return float("nan") if np.all(np.isnan(ious)) else float(np.nanmean(ious))


def image_miou(gt: np.ndarray, pred: np.ndarray, classes: int) -> float:
    """One image's mIoU, as the contest's per-image average counts it."""
    return mean_iou(iou_per_class(confusion(gt, pred, classes)))


class IouMeter:
    """Accumulates both figures over a stream of (gt, pred) pairs."""

    def __init__(self, classes: int):
        self.classes = classes
        self.total = np.zeros((classes, classes), dtype=np.int64)
        self.per_image: list[float] = []

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        cm = confusion(gt, pred, self.classes)
        self.total += cm
        miou = mean_iou(iou_per_class(cm))
        if not np.isnan(miou):
            self.per_image.append(miou)

    def summary(self, names: list[str]) -> dict:
        ious = iou_per_class(self.total)
        return {
            "miou": mean_iou(ious),
            "miou_per_image": float(np.mean(self.per_image)) if self.per_image else float("nan"),
            "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, ious)},
            "pixel_accuracy": float(np.diag(self.total).sum() / max(1, self.total.sum())),
        }


def dice_iou(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class of (C, H, W) bool masks: Dice, IoU (an empty prediction on an empty truth scores 1), and the
    (intersection, |gt|, |pred|) counts for pooling."""
    inter = (gt & pred).sum((1, 2)).astype(np.int64)
    g, p = gt.sum((1, 2)).astype(np.int64), pred.sum((1, 2)).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(g + p > 0, 2 * inter / (g + p), 1.0)
        iou = np.where(g + p - inter > 0, inter / (g + p - inter), 1.0)
    return dice, iou, np.stack([inter, g, p])


class DiceMeter:
    """Dice and IoU of overlapping class masks: per image and class, their means (the hand-bone contest's
    metric is the mean Dice over images and classes), and over the dataset (pixels pooled per class)."""

    def __init__(self, classes: int):
        self.dice: list[np.ndarray] = []
        self.iou: list[np.ndarray] = []
        self.counts = np.zeros((3, classes), np.int64)

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        dice, iou, counts = dice_iou(gt.astype(bool), pred.astype(bool))
        self.dice.append(dice)
        self.iou.append(iou)
        self.counts += counts

    def summary(self, names: list[str]) -> dict:
        dice, iou = np.array(self.dice), np.array(self.iou)
        inter, g, p = self.counts
        with np.errstate(invalid="ignore", divide="ignore"):
            pooled_dice = np.where(g + p > 0, 2 * inter / (g + p), np.nan)
            pooled_iou = np.where(g + p - inter > 0, inter / (g + p - inter), np.nan)
        return {
            "dice": float(dice.mean()), "iou": float(iou.mean()),
            "dice_per_class": {n: float(v) for n, v in zip(names, dice.mean(0))},
            "iou_per_class": {n: float(v) for n, v in zip(names, iou.mean(0))},
            "dice_dataset": {n: None if np.isnan(v) else float(v) for n, v in zip(names, pooled_dice)},
            "iou_dataset": {n: None if np.isnan(v) else float(v) for n, v in zip(names, pooled_iou)},
        }
