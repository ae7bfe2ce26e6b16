"""A large image run region by region through a graph whose members are all tiled (its ``region`` input), so
that memory follows the region in flight, not the image's area.

The regions are a grid of rectangles of about equal size, cut where a single tile covers the image (so a
region k tile intervals long needs k + 1 tiles along that side): of every grid whose largest model call (its
tiles x the TTA views run together x the tile's pixels) and outputs fit the budget's memory
(``cost.ACTIVATION_BYTES_PER_PIXEL``), the one that computes the fewest tiles. Every tile a region's output reads is computed for
that region, so tiles under a cut are computed twice: fewer, larger regions waste less. The stitched outputs
equal the whole image run at once (the graph's tile grid is the whole image's; ``export/graph_tiles.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segensemble.cost import ACTIVATION_BYTES_PER_PIXEL, Budget
from segensemble.manifest import MemberEntry
from segensemble.progress import bar_off
from segensemble.tiles import region_tiles, seams, window_tiles
from segensemble.views import TTA, scaled_size

Region = tuple[int, int, int, int]  # row start, row stop, column start, column stop
MAX_REGIONS = 4096
MAX_PIECES = 256  # along one axis


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


def split(members: Sequence[MemberEntry], hw: tuple[int, int], classes: int, batch: int, budget: Budget) -> list[Region]:
    """The grid of regions that computes the fewest tiles while every region's call fits ``budget.max_memory_mb``.

    Rows and columns are searched apart (a grid region's tiles are its rows' times its columns'), each axis cut
    into n pieces on the seams of the member scale with the most tiles, every n from 1 up; then every pair."""
    limit = budget.max_memory_mb * 2**20
    views = [(m, s) for m in members for s in m.scales]
    ref = max(views, key=lambda ms: region_tiles(hw, (0, hw[0], 0, hw[1]), ms[0].tiles, ms[1]))
    axes = [_axis_options(views, hw, a, ref) for a in (0, 1)]
    group = np.array([max(sum(TTA[t].swaps_hw == swap for t in m.tta) for swap in (False, True)) * m.tiles.size[0] * m.tiles.size[1]
                      for m, _ in views])
    per_view = np.array([len(m.tta) * m.model_count for m, _ in views])
    best = None
    for rows, r_cuts, r_max, r_sum, r_len in axes[0]:
        for cols, c_cuts, c_max, c_sum, c_len in axes[1]:
            if rows * cols > MAX_REGIONS:
                break
            memory = batch * (int((r_max * c_max * group).max()) * ACTIVATION_BYTES_PER_PIXEL + classes * r_len * c_len * 4 * (len(members) + 3))
            if memory > limit:
                continue
            key = (int((r_sum * c_sum * per_view).sum()), rows * cols)
            if best is None or key < best[0]:
                best = (key, r_cuts, c_cuts)
    if best is None:  # nothing fits: the finest grid searched
        best = (None, axes[0][-1][1], axes[1][-1][1])
    _, r, c = best
    return [(r[i], r[i + 1], c[j], c[j + 1]) for i in range(len(r) - 1) for j in range(len(c) - 1)]


def _axis_options(views, hw: tuple[int, int], axis: int, ref) -> list[tuple]:
    """Per piece count n along ``axis``: (n, cuts, per view-scale the most tiles a piece needs, their sum over
    the pieces, the longest piece)."""
    length = hw[axis]
    cut_at = seams(length, ref[1], ref[0].tiles, axis)
    most = min(length, MAX_PIECES, 4 * (len(cut_at) + 1) + 4)
    options = []
    for n in range(1, most + 1):
        cuts = _cuts(length, n, cut_at)
        pieces = list(zip(cuts[:-1], cuts[1:]))
        counts = np.array([[window_tiles(length, scaled_size(hw, s)[axis], a, b, m.tiles.size[axis], m.tiles.overlap, s != 1)
                            for a, b in pieces] for m, s in views])
        options.append((n, cuts, counts.max(1), counts.sum(1), max(b - a for a, b in pieces)))
    return options


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
