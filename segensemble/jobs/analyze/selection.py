"""Ensemble selection: greedy forward selection with replacement (Caruana et al., 2004) and a weight search.

Both only ever call ``score(weights) -> mIoU`` on the selection images, so they are cheap given the cache.
"""

from __future__ import annotations

from collections.abc import Callable

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
