"""Post-processing after the vote, the steps winning write-ups tune on validation images: one home for the
plan's ``postprocess:`` section and the one function that applies it, which the engine runs after the graph
for every job (predict, evaluate, pseudo-label, serve, Ray, the Python API) and ``ensemble tune`` searches.

Steps, per class (a number for every class, or ``{class: value}``), on the host with OpenCV's connected
components (8-connected regions; holes are 4-connected, their topological dual), at the image's own size:

- ``fill_holes``: holes inside a class's region of at most this many pixels become that class;
- ``min_total_area``: a class with fewer pixels in the image is dropped from it;
- ``keep_largest``: only the class's largest component is kept (a list of classes, or true for all);
- ``min_area``: components of fewer pixels are removed;
- ``presence`` (multilabel and binary): ``{threshold, min_pixels}``, the SIIM "triplet" gate: a class is kept
  in an image only where at least ``min_pixels`` pixels have P > ``threshold``; the plan's ``thresholds``
  then draw the mask (the triplet's bottom threshold).

Multiclass: removed pixels take the most probable class not removed there, repeated until no component
smaller than its class's ``min_area`` (or a dropped class) remains; a pixel where every class has been
removed takes the label of the nearest pixel that keeps its own. Masks (multilabel, binary): removed pixels are off. Holes are filled first.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

Count = Annotated[int, Field(ge=0, le=1 << 40)]
PerClass = Count | dict[str, Count]


class Presence(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    threshold: float = Field(gt=0, lt=1)
    min_pixels: Count


class PostProcessSpec(BaseModel):
    """The plan's ``postprocess:`` section, as written (class names, or one value for all)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    fill_holes: PerClass | None = None
    min_total_area: PerClass | None = None
    keep_largest: bool | list[str] = False
    min_area: PerClass | None = None
    presence: Presence | dict[str, Presence] | None = None

    def resolve(self, classes: list[str], task: str) -> PostProcess:
        """One value per class; unknown class names and a presence gate on a multiclass task are refused."""
        def per_class(value, name: str) -> list[int]:
            if value is None:
                return [0] * len(classes)
            if isinstance(value, int):
                return [value] * len(classes)
            _known(value, classes, name)
            return [int(value.get(c, 0)) for c in classes]

        keep = self.keep_largest
        if isinstance(keep, list):
            _known(keep, classes, "keep_largest")
        presence = self.presence
        if presence is not None and task == "multiclass":
            raise ValueError("presence: gates multilabel and binary masks (a multiclass pixel always has a label; "
                             "use min_total_area to drop a class from an image)")
        if isinstance(presence, dict):
            _known(presence, classes, "presence")
        gates = [presence.get(c) if isinstance(presence, dict) else presence for c in classes]
        return PostProcess(fill_holes=per_class(self.fill_holes, "fill_holes"), min_total_area=per_class(self.min_total_area, "min_total_area"),
                           keep_largest=[keep is True or (isinstance(keep, list) and c in keep) for c in classes],
                           min_area=per_class(self.min_area, "min_area"),
                           presence_threshold=[g.threshold if g else 0.0 for g in gates],
                           presence_min_pixels=[g.min_pixels if g else 0 for g in gates])


def _known(names, classes: list[str], field: str) -> None:
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise ValueError(f"{field}: {unknown[0]!r} is not one of the plan's classes ({', '.join(classes)})")


class PostProcess(BaseModel):
    """The steps resolved to one value per class, as the manifest carries them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fill_holes: list[int]
    min_total_area: list[int]
    keep_largest: list[bool]
    min_area: list[int]
    presence_threshold: list[float]
    presence_min_pixels: list[int]

    @property
    def active(self) -> bool:
        return any(self.fill_holes) or any(self.min_total_area) or any(self.keep_largest) or any(self.min_area) or any(self.presence_min_pixels)

    def describe(self, classes: list[str]) -> str:
        parts = []
        for field in ("fill_holes", "min_total_area", "keep_largest", "min_area", "presence_min_pixels"):
            values = getattr(self, field)
            chosen = [f"{c}={v:g}" if not isinstance(v, bool) else c for c, v in zip(classes, values) if v]
            if chosen:
                parts.append(f"{field} {', '.join(chosen)}")
        return "; ".join(parts) or "none"


def apply(steps: PostProcess, probs: np.ndarray, labels: np.ndarray | None = None, masks: np.ndarray | None = None):
    """Post-process one image's decision: ``labels`` (H, W) of a multiclass task, or ``masks`` (C, H, W) of a
    multilabel/binary one, with the image's ``probs`` (C, H, W). Returns the new labels or masks."""
    if labels is not None:
        return _labels(steps, probs, labels)
    return _masks(steps, probs, np.asarray(masks, bool)).astype(np.uint8)


def _components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(component id per pixel, area per id; id 0 is the background)."""
    import cv2

    count, ids, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=connectivity)
    return ids, stats[:, cv2.CC_STAT_AREA]


def _removed(steps: PostProcess, c: int, mask: np.ndarray) -> np.ndarray:
    """The pixels of class ``c``'s ``mask`` that min_total_area, keep_largest and min_area remove."""
    if not mask.any():
        return np.zeros_like(mask)
    if steps.min_total_area[c] and mask.sum() < steps.min_total_area[c]:
        return mask.copy()
    if not (steps.keep_largest[c] or steps.min_area[c]):
        return np.zeros_like(mask)
    ids, areas = _components(mask)
    keep = np.ones(len(areas), bool)
    keep[0] = False
    if steps.min_area[c]:
        keep &= areas >= steps.min_area[c]
    if steps.keep_largest[c] and len(areas) > 1:
        largest = 1 + int(np.argmax(areas[1:]))
        keep &= np.arange(len(areas)) == largest
    keep[0] = True  # background stays as it is
    return ~keep[ids] & mask


def _holes(mask: np.ndarray, max_area: int) -> np.ndarray:
    """Holes of ``mask`` (4-connected components of its complement not touching the border) of at most
    ``max_area`` pixels."""
    ids, areas = _components(~mask, connectivity=4)
    border = np.unique(np.concatenate([ids[0], ids[-1], ids[:, 0], ids[:, -1]]))
    small = areas <= max_area
    small[0] = False
    small[border] = False
    return small[ids]


def _masks(steps: PostProcess, probs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    out = masks.copy()
    for c in range(out.shape[0]):
        if steps.presence_min_pixels[c] and (probs[c] > steps.presence_threshold[c]).sum() < steps.presence_min_pixels[c]:
            out[c] = False
            continue
        if steps.fill_holes[c]:
            out[c] |= _holes(out[c], steps.fill_holes[c])
        out[c] &= ~_removed(steps, c, out[c])
    return out


def _labels(steps: PostProcess, probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    classes = probs.shape[0]
    out = labels.copy()
    for c in range(classes):
        if steps.fill_holes[c]:
            out[_holes(out == c, steps.fill_holes[c])] = c
    banned = np.zeros(probs.shape, bool)  # (class, pixel) pairs removed so far
    for _ in range(2 * classes + 1):
        changed = False
        for c in range(classes):
            removed = _removed(steps, c, out == c)
            if removed.any():
                banned[c] |= removed
                changed = True
        if not changed:
            break
        where = banned[out.astype(np.int64), np.arange(out.shape[0])[:, None], np.arange(out.shape[1])]
        scores = np.where(banned[:, where], -np.inf, probs[:, where])
        best = scores.argmax(0)
        fallback = np.isinf(scores.max(0))  # every class removed here: the label stays
        out[where] = np.where(fallback, out[where], best).astype(out.dtype)
        if fallback.all():
            break
    return _fill_from_neighbours(steps, out)


def _fill_from_neighbours(steps: PostProcess, labels: np.ndarray) -> np.ndarray:
    """Pixels still in a component their class removes (every class was removed there) take the label of the
    nearest pixel that is not: each joins the component it borders, which only grows."""
    import cv2

    bad = np.zeros(labels.shape, bool)
    for c in range(len(steps.min_area)):
        bad |= _removed(steps, c, labels == c)
    if not bad.any() or bad.all():
        return labels
    _, nearest = cv2.distanceTransformWithLabels(bad.astype(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL)
    table = np.zeros(int(nearest.max()) + 1, labels.dtype)
    table[nearest[~bad]] = labels[~bad]
    out = labels.copy()
    out[bad] = table[nearest[bad]]
    return out
