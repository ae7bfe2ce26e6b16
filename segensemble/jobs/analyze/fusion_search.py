"""The vote rule and (multilabel, binary) the per-class thresholds, chosen on the selection images and measured
per class on the held-out ones: the rule is a plan field because the choice must be made on data the score
is not read from (a Severstal write-up records RMS averaging raising the public score and costing the
private one).

Every rule is computed here from the cached views' probabilities with the reference loop's own formulas
(``export/reference.py``): each view's value is recovered from its probabilities (log p for logit-mean of a
softmax, where the log-sum-exp cancels; log p − log(1 − p) for a sigmoid), so saturated probabilities in a
float16 cache are clipped to [1e-6, 1 − 1e-6]. The figures are the search's; ``ensemble evaluate`` on the
rebuilt plan gives the exact ones.
"""

from __future__ import annotations

import numpy as np

from segensemble.export.reference import decide, fuse
from segensemble.jobs.analyze.cache import ViewCache
from segensemble.jobs.analyze.variants import member_views
from segensemble.jobs.metrics import DiceMeter, IouMeter
from segensemble.manifest import MemberEntry
from segensemble.task import VOTES, Fusion

THRESHOLD_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
CLIP = 1e-6


def view_value(p: np.ndarray, fusion: Fusion, rule: str) -> np.ndarray:
    """What a view contributes under ``rule``, from its probabilities (the reference's view_value of its logits)."""
    if rule in ("mean", "majority"):
        return p
    if rule == "tsharpen":
        return p ** fusion.tsharpen_t
    q = np.clip(p.astype(np.float64), CLIP, 1 - CLIP)
    if rule == "gmean" or not fusion.sigmoid:  # gmean: log p; logit-mean of a softmax: its logits are log p + a constant
        return np.log(q)
    return np.log(q) - np.log1p(-q)  # logit-mean of a sigmoid: the logit itself


def ensemble_probs(views: list[np.ndarray], cache: ViewCache, members: list[MemberEntry], fusion: Fusion) -> np.ndarray:
    """The ensemble's probabilities of one image under ``fusion``, from its cached views."""
    values = []
    for mi in range(len(members)):
        kept = member_views(cache.views, mi)
        parts = [view_value(views[j], fusion, fusion.vote) for j in kept]
        values.append(sum(parts) / len(parts))
    probs, _ = fuse(values, members, fusion)
    return probs


class _Scores:
    """Per-class figures of one candidate over a set of images: IoU (multiclass, pooled) or Dice (per image)."""

    def __init__(self, fusion: Fusion, classes: int):
        self.sigmoid = fusion.sigmoid
        self.meter = DiceMeter(classes) if self.sigmoid else IouMeter(classes)

    def add(self, gt: np.ndarray, decision: np.ndarray) -> None:
        self.meter.add(gt, decision)

    def per_class(self, names: list[str]) -> dict[str, float | None]:
        s = self.meter.summary(names)
        return s["dice_per_class"] if self.sigmoid else s["iou"]

    def mean(self, names: list[str]) -> float:
        s = self.meter.summary(names)
        return s["dice"] if self.sigmoid else s["miou"]


def search_fusion(cache: ViewCache, members: list[MemberEntry], fusion: Fusion, gts, select: list[int], held: list[int],
                  names: list[str]) -> dict:
    """Each rule scored on the selection images; the best kept, then (sigmoid tasks) each class's threshold
    from ``THRESHOLD_GRID``; the plan's fusion and the chosen one compared per class on the held-out images."""
    metric = "dice" if fusion.sigmoid else "miou"
    candidates = [fusion.model_copy(update={"vote": rule}) for rule in VOTES]
    rules = {f.vote: scores.mean(names) for f, scores in zip(candidates, _score(cache, members, candidates, gts, select, names))}
    best_rule = max(VOTES, key=lambda r: (rules[r], r == fusion.vote))
    chosen = fusion.model_copy(update={"vote": best_rule})
    if fusion.sigmoid:
        chosen = chosen.model_copy(update={"thresholds": _thresholds(cache, members, chosen, gts, select, names)})
    report = {"metric": metric, "rules_on_selection": rules, "plan": _fields(fusion), "chosen": _fields(chosen),
              "selection_images": len(select), "holdout_images": len(held)}
    if held:
        before, after = _score(cache, members, [fusion, chosen], gts, held, names)
        b, a = before.per_class(names), after.per_class(names)
        report["holdout"] = {"plan": before.mean(names), "chosen": after.mean(names),
                             "gain_per_class": {c: None if b[c] is None or a[c] is None else a[c] - b[c] for c in names}}
    # what plan.tuned.yaml gets: the choice, unless the held-out images say it loses to the plan's own
    worse = held and report["holdout"]["chosen"] < report["holdout"]["plan"]
    report["kept"] = report["plan"] if worse else report["chosen"]
    report["kept_why"] = ("the plan's: the chosen one scores lower on the held-out images" if worse else
                          "the chosen one" + ("" if held else " (no held-out images to check it on)"))
    return report


def _fields(fusion: Fusion) -> dict:
    return {"vote": fusion.vote, **({"thresholds": fusion.thresholds} if fusion.sigmoid else {})}


def _score(cache: ViewCache, members, fusions: list[Fusion], gts, images: list[int], names: list[str]) -> list[_Scores]:
    """Each candidate's figures over ``images``; every image's views are read from the cache once for all."""
    scores = [_Scores(f, len(names)) for f in fusions]
    for i in images:
        views = [cache.get(j, i) for j in range(len(cache.views))]
        gt = gts(i)
        for f, s in zip(fusions, scores):
            s.add(gt, decide(ensemble_probs(views, cache, members, f), f))
    return scores


def _thresholds(cache: ViewCache, members, fusion: Fusion, gts, images: list[int], names: list[str]) -> list[float]:
    """Per class, the grid threshold with the best mean Dice on ``images`` (ties: the plan's, then the lower)."""
    uniform = [fusion.model_copy(update={"thresholds": [t] * len(names)}) for t in THRESHOLD_GRID]
    by_threshold = {t: s.per_class(names) for t, s in zip(THRESHOLD_GRID, _score(cache, members, uniform, gts, images, names))}
    return [max(THRESHOLD_GRID, key=lambda t: (by_threshold[t][c], t == fusion.thresholds[k], -t)) for k, c in enumerate(names)]
