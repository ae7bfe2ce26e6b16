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


def starts(side: int, tile: int, overlap: float) -> list[int]:
    """Tile starts along a (padded, >= tile) side: multiples of the interval, the last flush with the edge."""
    step = interval(side, tile, overlap)
    count = next((d for d in range(-(-side // step)) if d * step + tile >= side), 0) + 1
    return [min(i * step, side - tile) for i in range(count)]


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
