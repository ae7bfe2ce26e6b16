"""Variants of the ensemble as sets of views, and the soft-voting coefficients of a set.

A variant keeps some views; each member that keeps any view averages those it keeps, and members are
weighted as in the plan (or by given weights): exactly the engine's semantics restricted to the subset.
"""

from __future__ import annotations

from collections import Counter

from segensemble.graph_io import ViewId
from segensemble.manifest import MemberEntry


def coefficients(views: list[ViewId], kept: list[int], members: list[MemberEntry], weights: list[float] | None = None) -> dict[int, float]:
    """view index -> coefficient, for the views ``kept``, normalized by the weight members actually receive."""
    weights = weights or [m.weight for m in members]
    per_member = Counter(views[j].member for j in kept)
    total = sum(weights[m] for m in per_member if weights[m] > 0)
    if not total:
        return {}
    return {j: weights[views[j].member] / (per_member[views[j].member] * total) for j in kept if weights[views[j].member] > 0}


def all_views(views: list[ViewId]) -> list[int]:
    return list(range(len(views)))


def member_views(views: list[ViewId], member: int) -> list[int]:
    return [j for j, v in enumerate(views) if v.member == member]


def ablations(views: list[ViewId], members: list[MemberEntry], best_member: int) -> dict[str, list[int] | None]:
    """Each axis removed in turn; None where the plan does not use that axis."""

    def closest_scale(m: MemberEntry) -> float:
        return min(m.scales, key=lambda s: abs(s - 1.0))

    def first_tta(m: MemberEntry) -> str:
        return "identity" if "identity" in m.tta else m.tta[0]

    uses = {
        "scale": any(len(m.scales) > 1 for m in members),
        "fold": any(m.axis == "folds" and len(m.models) > 1 for m in members),
        "architecture": len({(m.arch, m.encoder) for m in members}) > 1,
        "tta": any(len(m.tta) > 1 for m in members),
        "epoch": any(m.axis == "epochs" and len(m.models) > 1 for m in members),
        "swa": any(m.axis == "swa" for m in members) and not all(m.axis == "swa" for m in members),
    }
    arch = (members[best_member].arch, members[best_member].encoder)
    keep = {
        "no multi-scale": lambda v, m: v.scale == closest_scale(m),
        "one fold": lambda v, m: m.axis != "folds" or v.model == 0,
        "one architecture": lambda v, m: (m.arch, m.encoder) == arch,
        "no TTA": lambda v, m: v.tta == first_tta(m),
        "no epoch snapshots": lambda v, m: m.axis != "epochs" or v.model == len(m.models) - 1,
        "no SWA": lambda v, m: m.axis != "swa",
    }
    axis_of = dict(zip(keep, uses))
    return {name: ([j for j, v in enumerate(views) if rule(v, members[v.member])] if uses[axis_of[name]] else None)
            for name, rule in keep.items()}
