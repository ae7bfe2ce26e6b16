"""Sliding-window tiles as MONAI's ``sliding_window_inference`` defines them, so that MONAI is the oracle and
users get what they know: an image smaller than a tile is zero-padded (after normalization) to the tile,
centred (the extra pixel after); the scan interval is ``int(side x (1 - overlap))`` (at least 1; the side
itself where the image is exactly one tile); tiles start at multiples of it, the last one moved back flush
with the far edge; each tile's values are weighted by an importance map (all ones, or a gaussian with
``sigma = sigma_scale x side``, normalized to a peak of 1 and floored at max(its minimum, 1e-3)) and the
overlaps averaged by the summed weights. The graph (``export/graph_tiles.py``) and the reference loop both
follow these functions.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TILE_SIDE = 4096


class TileOptions(BaseModel):
    """A member's ``tiles:`` field."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    size: tuple[int, int] = Field(description="[height, width] of a tile, as the model was trained on crops")
    overlap: float = Field(0.25, ge=0, lt=1)
    blend: Literal["gaussian", "constant"] = "gaussian"
    sigma_scale: float = Field(0.125, gt=0, le=10)

    @field_validator("size")
    @classmethod
    def _size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not all(1 <= s <= MAX_TILE_SIDE for s in v):
            raise ValueError(f"must be [height, width] with both in 1..{MAX_TILE_SIDE}")
        return v


def padding(side: int, tile: int) -> tuple[int, int]:
    """(before, after) zero padding of an image side shorter than the tile (MONAI: half before)."""
    diff = max(tile - side, 0)
    return diff // 2, diff - diff // 2


def interval(side: int, tile: int, overlap: float) -> int:
    """The scan interval along a (padded) side."""
    if tile == side:
        return tile
    return max(int(tile * (1 - overlap)), 1)


@lru_cache(maxsize=1024)
def starts(side: int, tile: int, overlap: float) -> tuple[int, ...]:
    """Tile starts along a (padded, >= tile) side: multiples of the interval, the last flush with the edge."""
    step = interval(side, tile, overlap)
    count = next((d for d in range(-(-side // step)) if d * step + tile >= side), 0) + 1
    return tuple(min(i * step, side - tile) for i in range(count))


def importance_map(size: tuple[int, int], blend: str, sigma_scale: float) -> np.ndarray:
    """(h, w) float32 weights of a tile's pixels."""
    if blend == "constant":
        weights = np.ones(size, np.float32)
    else:
        axes = []
        for side in size:
            x = np.arange(-(side - 1) / 2.0, (side - 1) / 2.0 + 1, dtype=np.float32)
            axes.append(np.exp(x ** 2 / np.float32(-2 * (side * sigma_scale) ** 2)).astype(np.float32))
        weights = (axes[0][:, None] * axes[1][None, :]).astype(np.float32)
    return np.maximum(weights, max(float(weights.min()), 1e-3)).astype(np.float32)


def tile_count(hw: tuple[int, int], tiles: TileOptions) -> int:
    """Tiles a (scaled) image of ``hw`` is cut into."""
    th, tw = tiles.size
    h, w = max(hw[0], th), max(hw[1], tw)
    return len(starts(h, th, tiles.overlap)) * len(starts(w, tw, tiles.overlap))


def _reads(start: int, stop: int, n_in: int, n_out: int) -> tuple[int, int]:
    """[first, last + 1) of the input rows that output rows [start, stop) of an n_in -> n_out bilinear resize
    read (``views.bilinear``'s arithmetic; the source index grows with the output's)."""
    def src(y: int) -> float:
        return min(max((y + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)

    return int(np.floor(src(start))), min(int(np.floor(src(stop - 1))) + 1, n_in - 1) + 1


def window_tiles(length: int, scaled: int, start: int, stop: int, tile: int, overlap: float, resized: bool) -> int:
    """Tiles along one axis that output rows [start, stop) of an image side ``length`` need, its tile grid laid
    on the side scaled to ``scaled`` (``export/graph_tiles.py`` computes the same in the graph)."""
    lo, hi = _reads(start, stop, scaled, length) if resized else (start, stop)
    padded = max(scaled, tile)
    before = (padded - scaled) // 2
    return sum(1 for s in starts(padded, tile, overlap) if s + tile > lo + before and s < hi + before)


def region_tiles(hw: tuple[int, int], region: tuple[int, int, int, int], tiles: TileOptions, scale: float) -> int:
    """Tiles of a member's scale that a region (row start, row stop, column start, column stop) of an image of
    ``hw`` needs."""
    from segensemble.views import scaled_size

    scaled = scaled_size(hw, scale)
    n = 1
    for axis in (0, 1):
        n *= window_tiles(hw[axis], scaled[axis], region[2 * axis], region[2 * axis + 1], tiles.size[axis], tiles.overlap,
                          scale != 1.0)
    return n


def seams(length: int, scale: float, tiles: TileOptions, axis: int) -> list[int]:
    """Output rows where cutting the image costs one tile row, not two: the middle of each stretch that a single
    tile covers on the scaled grid (a region whose cuts lie there needs k + 1 tile rows for k intervals)."""
    scaled = max(1, int(np.floor(length * scale + 0.5)))
    tile = tiles.size[axis]
    padded = max(scaled, tile)
    before = (padded - scaled) // 2
    s = starts(padded, tile, tiles.overlap)
    ends = [0, *(a + tile for a in s[:-1])]  # where each tile's stretch begins (the previous tile's end)
    begins = [*s[1:], padded]  # and ends (the next tile's start)
    middles = [(e + b) / 2 for e, b in zip(ends, begins) if e < b]
    return sorted({int(round((m - before) / scale)) for m in middles} - {0, length})
