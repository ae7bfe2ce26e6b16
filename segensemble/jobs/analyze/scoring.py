"""Scoring combinations from the cache: mIoU over a subset of images, with member-level sums precomputed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segensemble.jobs.analyze.cache import ViewCache
from segensemble.jobs.analyze.variants import member_views
from segensemble.jobs.metrics import IouMeter
from segensemble.manifest import MemberEntry
from segensemble.postprocess import PostProcess, apply


def score_views(cache: ViewCache, coeffs: dict[int, float], gts, images: list[int], names: list[str],
                post: PostProcess | None = None) -> dict:
    """mIoU figures of the combination ``coeffs`` (after the plan's post-processing ``post``, as every job
    applies it); ``confusion`` holds the pooled confusion matrix."""
    meter = IouMeter(len(names))
    for i in images:
        p = cache.combine(coeffs, i)
        labels = p.argmax(0)
        meter.add(gts(i), apply(post, p, labels=labels) if post else labels)
    return meter.summary(names) | {"confusion": meter.total.tolist()}


class MemberProbs:
    """P_m of every member for every image, computed once from the view cache (same disk layout)."""

    def __init__(self, cache: ViewCache, members: list[MemberEntry], root: Path):
        self.members = members
        views = cache.views
        self.store = ViewCache(root, [views[0]] * len(members), cache.sizes, cache.classes, cache.files[0].dtype.name)
        for m in range(len(members)):
            kept = member_views(views, m)
            coeffs = {j: 1.0 / len(kept) for j in kept}
            for i in range(len(cache.sizes)):
                self.store.put(m, i, cache.combine(coeffs, i))

    def score(self, weights: list[float], gts, images: list[int], names: list[str]) -> dict:
        total = sum(weights)
        if total <= 0:
            return {"miou": float("nan")}
        meter = IouMeter(len(names))
        for i in images:
            p = None
            for m, w in enumerate(weights):
                if w > 0:
                    q = self.store.get(m, i) * np.float32(w / total)
                    p = q if p is None else p + q
            meter.add(gts(i), p.argmax(0))
        return meter.summary(names)

