"""Ensemble selection: greedy forward selection with replacement (Caruana et al., 2004), a weight search, then
per-class weights from the better of the two.

All only ever call ``score(weights) -> mIoU`` on the selection images, so they are cheap given the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from segensemble.formats.atomic import write_atomic
from segensemble.jobs.analyze.scoring import MemberProbs
from segensemble.plan import SOURCES, Plan

Score = Callable[[list[float]], float]


def greedy_selection(n_members: int, score: Score, rounds: int | None = None) -> dict:
    """Start from the best single member, then repeatedly add (with replacement) the member that helps most;
    returns the best bag seen, so it is never worse than the best single member on the selection data."""
    rounds = rounds or 2 * n_members
    counts = [0] * n_members
    best_counts, best_score, history = None, float("-inf"), []
    for _ in range(rounds):
        trials = []
        for m in range(n_members):
            trial = counts.copy()
            trial[m] += 1
            trials.append((score([float(c) for c in trial]), -m, trial))  # ties go to the earlier member
        value, _, counts = max(trials)
        history.append({"bag": counts.copy(), "miou": value})
        if value > best_score:
            best_score, best_counts = value, counts.copy()
    return {"weights": [float(c) for c in best_counts], "miou": best_score, "history": history}


def weight_search(initial: list[float], score: Score, grid: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0), passes: int = 2) -> dict:
    """Coordinate search: each member's weight over ``grid`` in turn, keeping improvements."""
    weights = list(initial)
    best = score(weights)
    for _ in range(passes):
        improved = False
        for m in range(len(weights)):
            for value in grid:
                if value == weights[m]:
                    continue
                trial = weights.copy()
                trial[m] = value
                if sum(trial) <= 0:
                    continue
                s = score(trial)
                if s > best + 1e-12:
                    best, weights, improved = s, trial, True
        if not improved:
            break
    return {"weights": weights, "miou": best}


def class_weight_search(weights: list[float], score: Callable[[np.ndarray], float], classes: int,
                        grid: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0), passes: int = 2) -> dict:
    """Per-class weights (members x classes), by coordinate search from the member ``weights``: a member that
    never learnt a class stops voting on it, one that knows it best leads it (contest teams tune weights per
    class on out-of-fold images). Every class keeps a member that weighs it."""
    table = np.repeat(np.asarray(weights, np.float64)[:, None], classes, 1)
    best = score(table)
    for _ in range(passes):
        improved = False
        for c in range(classes):
            for m in range(len(weights)):
                for value in grid:
                    if value == table[m, c] or table[:, c].sum() - table[m, c] + value <= 0:
                        continue
                    trial = table.copy()
                    trial[m, c] = value
                    s = score(trial)
                    if s > best + 1e-12:
                        best, table, improved = s, trial, True
        if not improved:
            break
    return {"weights": table.tolist(), "miou": best}


def as_member_weights(table) -> tuple[list[float], list[list[float] | None]]:
    """A (members x classes) table as the plan says it: each member's largest weight as its ``weight``, and its
    ``class_weights`` relative to that (None where every class has the same weight)."""
    weights, rows = [], []
    for row in np.asarray(table, np.float64):
        top = float(row.max())
        weights.append(top)
        rows.append(None if top <= 0 or np.all(row == top) else [float(v / top) for v in row])
    return weights, rows


def shares(weights: list[float], names: list[str]) -> str:
    """Weights as each member's share of the vote, largest first ("unet-swa 0.73, fpn 0.27; 4 others 0"):
    greedy selection's counts (0, 0, 8, 3) mean nothing until divided by their sum."""
    total = sum(weights)
    if total <= 0:
        return "no member"
    kept = sorted(((w / total, n) for w, n in zip(weights, names) if w > 0), reverse=True)
    dropped = len(names) - len(kept)
    return ", ".join(f"{n} {share:.2f}" for share, n in kept) + (f"; {dropped} other{'s' * (dropped > 1)} 0" if dropped else "")


def select_members(cache, members, gts, select, held, names, out, best) -> dict:
    """Greedy selection and weight search on the selection images; their figures, and on the held-out ones."""
    probs = MemberProbs(cache, members, out / "cache" / "members")
    score = lambda w: probs.score(w, gts, select, names)["miou"]  # noqa: E731
    plan_weights = [m.weight for m in members]
    greedy = greedy_selection(len(members), score)
    search = weight_search(plan_weights, score)
    chosen = max((greedy, "greedy"), (search, "weight search"), key=lambda t: t[0]["miou"])
    per_class = class_weight_search(chosen[0]["weights"], score, len(names))
    table = per_class["weights"] if per_class["miou"] > chosen[0]["miou"] + 1e-12 else \
        [[w] * len(names) for w in chosen[0]["weights"]]
    weights, class_weights = as_member_weights(table)
    method = chosen[1] + (", then per-class weights" if any(class_weights) else "")
    single = [0.0] * len(members)
    single[best] = 1.0
    result = {
        "greedy": greedy, "weight_search": search, "class_weight_search": per_class,
        "chosen": {"method": method, "weights": weights, "class_weights": class_weights, "miou_selection": score(table),
                   "shares": shares(chosen[0]["weights"], [m.name for m in members])},
        "plan_weights_miou_selection": score(plan_weights), "best_single_miou_selection": score(single),
    }
    if held:
        honest = lambda w: probs.score(w, gts, held, names)["miou"]  # noqa: E731
        result["holdout"] = {"plan_weights": honest(plan_weights), "chosen": honest(table), "best_single": honest(single)}
    return result


def write_tuned_plan(plan: Plan, weights: list[float], out: Path, fusion: dict | None = None, postprocess: dict | None = None,
                     by: str = "ensemble analyze", class_weights: list[list[float] | None] | None = None) -> Path:
    """The plan with the chosen weights (per-class ones too: ``class_weights``; vote, thresholds: ``fusion``;
    post-processing: ``postprocess``); members weighted 0 are left out. Paths are absolute; the plan's task and
    other top-level fields are kept."""
    members = []
    for k, (member, w) in enumerate(zip(plan.members, weights)):
        if w <= 0:
            continue
        data = member.model_dump(mode="json", exclude_defaults=True)
        for key in SOURCES:
            if getattr(member, key) is not None:
                data[key] = getattr(member, key)
        data["weight"] = float(w)
        if class_weights and class_weights[k] is not None:
            data["class_weights"] = class_weights[k]
        members.append(data)
    top = plan.model_dump(mode="json", include={"task", "vote", "min_votes", "tsharpen_t", "thresholds", "postprocess"},
                          exclude_defaults=True, exclude_none=True)
    top |= fusion or {}
    if postprocess is not None:
        top["postprocess"] = postprocess
    text = f"# written by `{by}`: chosen on the validation set\n" + \
        yaml.safe_dump({**top, "classes": list(plan.classes), "members": members}, sort_keys=False)
    target = out / "plan.tuned.yaml"
    write_atomic(target, lambda tmp: tmp.write_text(text))
    return target
