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

    def score(self, weights, gts, images: list[int], names: list[str]) -> dict:
        """mIoU of the vote with member ``weights`` (one per member) or per-class weights (members x classes),
        normalized per class as the graph's vote is (``fusion_weights``)."""
        w = np.asarray(weights, np.float64)
        w = np.repeat(w[:, None], len(names), 1) if w.ndim == 1 else w
        column = w.sum(0)
        if np.any(column <= 0):
            return {"miou": float("nan")}
        share = (w / column).astype(np.float32)[:, :, None, None]
        meter = IouMeter(len(names))
        for i in images:
            p = None
            for m in range(len(w)):
                if w[m].any():
                    q = self.store.get(m, i) * share[m]
                    p = q if p is None else p + q
            meter.add(gts(i), p.argmax(0))
        return meter.summary(names)

