"""A large image run region by region through a graph whose members are all tiled (its ``region`` input), so
that memory follows the region in flight, not the image's area.

Two knobs bound a run's memory. The graph's model calls take at most ``tile_batch`` tiles at a time (its
chunks run one after another), chosen so that their activations (the tiles x the TTA views run together x the
tile's pixels x ``cost.ACTIVATION_BYTES_PER_PIXEL``) take half the budget. The regions are a grid of
rectangles of about equal size, cut where a single tile covers the image (so a region k tile intervals long
needs k + 1 tiles along that side): of every grid whose region's tile values and outputs fit the other half, the
one that computes the fewest tiles. Every tile a region's output reads is computed for that region, so tiles
under a cut are computed twice: fewer, larger regions waste less. The stitched outputs equal the whole image
run at once (the graph's tile grid is the whole image's; ``export/graph_tiles.py``).
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
# Bytes per tile pixel of a region's run beside the model calls (estimates, like cost.ACTIVATION_BYTES_PER_PIXEL):
TILE_BYTES = 2 * 3 * 4 + 8  # every tile of the region: its normalized pixels (and their padded copy), its flat index
ACCUMULATOR_BYTES = 2 * 4  # per class: the accumulator (in and out of a Loop step), bounded by the tiles' pixels
CHUNK_VALUE_BYTES = 3 * 4  # per class per view: a chunk's values, weighted and transposed


def _group_pixels(m: MemberEntry) -> int:
    """Pixels of one tile's model call: the tile times the TTA views run with it (views that swap H and W apart)."""
    th, tw = m.tiles.size
    return max(sum(TTA[t].swaps_hw == swap for t in m.tta) for swap in (False, True)) * th * tw


def tile_batch(members: Sequence[MemberEntry], budget: Budget) -> int:
    """Tiles per model call (the graph's ``tile_batch``): the most whose activations take half the memory budget,
    at least one; the other half holds the region's tile values and outputs."""
    per_tile = max(_group_pixels(m) for m in members) * ACTIVATION_BYTES_PER_PIXEL
    return max(1, int(budget.max_memory_mb * 2**20 / 2 // per_tile))


def _member_bytes(m: MemberEntry, tiles: int, classes: int, chunk: int | None) -> int:
    """A tiled member's peak over a region of ``tiles`` tiles (all its scales'), ``chunk`` of them per model call."""
    th, tw = m.tiles.size
    called = (tiles if chunk is None else min(tiles, chunk)) * _group_pixels(m)
    return called * (ACTIVATION_BYTES_PER_PIXEL + classes * CHUNK_VALUE_BYTES) + tiles * th * tw * (TILE_BYTES + classes * ACCUMULATOR_BYTES)


def _output_bytes(members: Sequence[MemberEntry], region_pixels: int, classes: int) -> int:
    return classes * region_pixels * 4 * (len(members) + 3)  # member outputs, sums, probs (``cost.py``'s)


def region_bytes(members: Sequence[MemberEntry], hw: tuple[int, int], region: Region, classes: int, batch: int,
                 chunk: int | None = None) -> int:
    """Memory of one region's run with ``chunk`` tiles per model call (None: all at once): the largest member's
    model calls and tile values, and the full-precision outputs (estimates, as ``cost.py``'s)."""
    largest = max(_member_bytes(m, batch * sum(region_tiles(hw, region, m.tiles, s) for s in m.scales), classes, chunk)
                  for m in members)
    return largest + batch * _output_bytes(members, (region[1] - region[0]) * (region[3] - region[2]), classes)


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


def split(members: Sequence[MemberEntry], hw: tuple[int, int], classes: int, batch: int, budget: Budget,
          chunk: int | None = None) -> list[Region]:
    """The grid of regions that computes the fewest tiles while every region's run (``chunk`` tiles per model
    call) fits ``budget.max_memory_mb``.

    Rows and columns are searched apart (a grid region's tiles are its rows' times its columns'), each axis cut
    into n pieces on the seams of the member scale with the most tiles, every n from 1 up; then every pair."""
    limit = budget.max_memory_mb * 2**20
    views = [(m, s) for m in members for s in m.scales]
    ref = max(views, key=lambda ms: region_tiles(hw, (0, hw[0], 0, hw[1]), ms[0].tiles, ms[1]))
    axes = [_axis_options(views, hw, a, ref) for a in (0, 1)]
    owner = np.array([i for i, m in enumerate(members) for _ in m.scales])
    per_view = np.array([len(m.tta) * m.model_count for m, _ in views])
    best = None
    for rows, r_cuts, r_max, r_sum, r_len in axes[0]:
        for cols, c_cuts, c_max, c_sum, c_len in axes[1]:
            if rows * cols > MAX_REGIONS:
                break
            tiles = np.bincount(owner, r_max * c_max, len(members)).astype(int)  # per member, its scales' (a bound)
            memory = max(_member_bytes(m, batch * int(n), classes, chunk) for m, n in zip(members, tiles)) \
                + batch * _output_bytes(members, r_len * c_len, classes)
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
                control=None, chunk: int | None = None) -> list[np.ndarray]:
    """The graph's outputs ``names`` for ``batch``, region by region (``chunk`` tiles per model call), stitched; a
    bar over the tiles shows on a terminal when the image takes more than a few seconds."""
    from tqdm.auto import tqdm

    hw = batch.shape[1:3]
    outputs: list[np.ndarray] | None = None
    bar = tqdm(total=sum(tiles_of(members, hw, r) for r in regions), unit="tile", desc=f"{hw[0]}x{hw[1]} image", delay=3,
               leave=False, disable=bar_off(True))
    with bar:
        for region in regions:
            parts = graph.run(batch, names, control, region, chunk)
            if outputs is None:
                outputs = [np.empty((*p.shape[:-2], *hw), p.dtype) for p in parts]
            for out, part in zip(outputs, parts):
                out[..., region[0]:region[1], region[2]:region[3]] = part
            bar.update(tiles_of(members, hw, region))
    return outputs
