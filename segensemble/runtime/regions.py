"""A large image run region by region through a graph whose members are all tiled (its ``region`` input), so
that memory follows the region in flight, not the image's area.

The regions are a grid of rectangles of about equal size, cut where a single tile covers the image (so a
region k tile intervals long needs k + 1 tiles along that side), the longer side cut first, until the largest
model call a region needs (its tiles x the TTA views run together x the tile's pixels) and its outputs fit
the budget's memory (``cost.ACTIVATION_BYTES_PER_PIXEL``). Every tile a region's output reads is computed for
that region, so tiles under a cut are computed twice: fewer, larger regions waste less. The stitched outputs
equal the whole image run at once (the graph's tile grid is the whole image's; ``export/graph_tiles.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segensemble.cost import ACTIVATION_BYTES_PER_PIXEL, Budget
from segensemble.manifest import MemberEntry
from segensemble.progress import bar_off
from segensemble.tiles import region_tiles, seams
from segensemble.views import TTA

Region = tuple[int, int, int, int]  # row start, row stop, column start, column stop
MAX_REGIONS = 4096


def region_bytes(members: Sequence[MemberEntry], hw: tuple[int, int], region: Region, classes: int, batch: int) -> int:
    """Memory of one region's run: its largest model call and its full-precision outputs (``cost.py``'s estimate)."""
    largest = 0
    for m in members:
        group = max(sum(TTA[t].swaps_hw == swap for t in m.tta) for swap in (False, True))
        th, tw = m.tiles.size
        for s in m.scales:
            largest = max(largest, region_tiles(hw, region, m.tiles, s) * group * th * tw)
    outputs = classes * (region[1] - region[0]) * (region[3] - region[2]) * 4 * (len(members) + 3)
    return batch * (largest * ACTIVATION_BYTES_PER_PIXEL + outputs)


def _cuts(length: int, parts: int, seams: list[int]) -> list[int]:
    """Cuts into ``parts`` (nearly) equal pieces, each moved to the nearest seam not taken (``tiles.seams``)."""
    cuts, free = [0], sorted(seams)
    for j in range(1, parts):
        ideal = round(length * j / parts)
        near = [s for s in free if s > cuts[-1]]
        cut = min(near, key=lambda s: abs(s - ideal)) if near else ideal
        if near and abs(cut - ideal) > length / parts / 2:
            cut = ideal
        cuts.append(max(cut, cuts[-1] + 1))
    return [*cuts, length] if cuts[-1] < length else cuts


def grid(members: Sequence[MemberEntry], hw: tuple[int, int], rows: int, cols: int) -> list[Region]:
    """``rows`` x ``cols`` regions covering an image of ``hw``, cut on the seams of the member scale with the
    most tiles (where the others' cost least is not searched)."""
    m, s = max(((m, s) for m in members for s in m.scales), key=lambda ms: region_tiles(hw, (0, hw[0], 0, hw[1]), ms[0].tiles, ms[1]))
    r, c = (_cuts(hw[a], n, seams(hw[a], s, m.tiles, a)) for a, n in ((0, rows), (1, cols)))
    return [(r[i], r[i + 1], c[j], c[j + 1]) for i in range(len(r) - 1) for j in range(len(c) - 1)]


def split(members: Sequence[MemberEntry], hw: tuple[int, int], classes: int, batch: int, budget: Budget) -> list[Region]:
    """The fewest regions found (the longer side cut first) whose every call fits ``budget.max_memory_mb``."""
    limit = budget.max_memory_mb * 2**20
    rows = cols = 1
    while True:
        regions = grid(members, hw, rows, cols)
        if max(region_bytes(members, hw, r, classes, batch) for r in regions) <= limit or rows * cols >= MAX_REGIONS:
            return regions
        if (hw[0] / rows >= hw[1] / cols and rows < hw[0]) or cols >= hw[1]:
            rows = min(hw[0], rows + max(1, rows // 4))
        else:
            cols = min(hw[1], cols + max(1, cols // 4))
        if rows >= hw[0] and cols >= hw[1]:
            return grid(members, hw, rows, cols)


def tiles_of(members: Sequence[MemberEntry], hw: tuple[int, int], region: Region) -> int:
    """Tile views a region runs (the progress bar's unit)."""
    return sum(region_tiles(hw, region, m.tiles, s) * len(m.tta) * m.model_count for m in members for s in m.scales)


def run_regions(graph, batch: np.ndarray, names: list[str], regions: list[Region], members: Sequence[MemberEntry],
                control=None) -> list[np.ndarray]:
    """The graph's outputs ``names`` for ``batch``, region by region, stitched; a bar over the tiles shows on a
    terminal when the image takes more than a few seconds."""
    from tqdm.auto import tqdm

    hw = batch.shape[1:3]
    outputs: list[np.ndarray] | None = None
    bar = tqdm(total=sum(tiles_of(members, hw, r) for r in regions), unit="tile", desc=f"{hw[0]}x{hw[1]} image", delay=3,
               leave=False, disable=bar_off(True))
    with bar:
        for region in regions:
            parts = graph.run(batch, names, control, region)
            if outputs is None:
                outputs = [np.empty((*p.shape[:-2], *hw), p.dtype) for p in parts]
            for out, part in zip(outputs, parts):
                out[..., region[0]:region[1], region[2]:region[3]] = part
            bar.update(tiles_of(members, hw, region))
    return outputs
