"""Run-length encoding as segmentation contests submit it: 1-indexed ``start length`` pairs over the mask
flattened row-major (``order="C"``: the hand-bone X-ray contest) or column-major (``order="F"``: Kaggle's
SIIM, Severstal, Understanding Clouds); an empty mask is the empty string. Parsing checks what a contest's
scorer would refuse: numbers, pairs, starts from 1, runs sorted, apart and inside the image.
"""

from __future__ import annotations

import numpy as np


def encode_runs(mask: np.ndarray, order: str = "C") -> str:
    """``start length`` pairs (1-indexed) of the on pixels of a 2-D mask."""
    flat = np.asarray(mask, dtype=bool).ravel(order=order)
    edges = np.flatnonzero(np.diff(np.concatenate([[False], flat, [False]]).astype(np.int8)))
    starts, ends = edges[::2], edges[1::2]
    pairs = np.empty(2 * len(starts), dtype=np.int64)
    pairs[0::2], pairs[1::2] = starts + 1, ends - starts
    return " ".join(map(str, pairs.tolist()))


def parse_runs(text: str, pixels: int) -> tuple[np.ndarray, str | None]:
    """((runs, 2) int64 starts and lengths, the first problem or None) for a mask of ``pixels`` pixels."""
    fields = text.split()
    if not all(f.isdigit() for f in fields):
        bad = next(f for f in fields if not f.isdigit())
        return np.zeros((0, 2), np.int64), f"{bad!r} is not a whole number"
    if len(fields) % 2:
        return np.zeros((0, 2), np.int64), f"{len(fields)} numbers: runs are start-length pairs, an even count"
    runs = np.array(fields, dtype=np.int64).reshape(-1, 2) if fields else np.zeros((0, 2), np.int64)
    starts, lengths = runs[:, 0], runs[:, 1]
    problem = None
    if (starts < 1).any():
        problem = f"run {int(np.argmax(starts < 1)) + 1} starts at {int(starts[starts < 1][0])}; starts count from 1"
    elif (lengths < 1).any():
        problem = f"run {int(np.argmax(lengths < 1)) + 1} has length {int(lengths[lengths < 1][0])}; lengths are at least 1"
    elif len(runs) > 1 and (starts[1:] < starts[:-1] + lengths[:-1]).any():
        i = int(np.argmax(starts[1:] < starts[:-1] + lengths[:-1])) + 1
        problem = (f"run {i + 1} (start {int(starts[i])}) is not after run {i} (pixels {int(starts[i - 1])}.."
                   f"{int(starts[i - 1] + lengths[i - 1] - 1)}): runs must be sorted and must not overlap")
    elif len(runs) and int(starts[-1] + lengths[-1] - 1) > pixels:
        problem = f"the last run ends at pixel {int(starts[-1] + lengths[-1] - 1)}, past the image's {pixels} pixels"
    return runs, problem
