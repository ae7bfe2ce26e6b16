"""Sliding-window tiles inside the ensemble graph, as node chains (the definitions are ``tiles.py``'s).

The tile grid is computed in the graph from the (scaled) image's size: zero padding of a side shorter than
the tile (centred), the scan interval, the tile starts (the last flush with the far edge). Tiles are cut with
two Gathers (rows, then columns, by index grids of n x tile entries) into the batch dimension, so each TTA
view of a model runs once over every tile; the tiles' values are weighted by the importance map and added
back into place with two ScatterElements(add) (columns, then rows), divided by the summed weights, and the
padding cropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segensemble.export.graph_ops import GraphBuilder
from segensemble.tiles import TileOptions, importance_map


@dataclass(frozen=True)
class Grid:
    """Names of the grid's tensors: padded size, padding before, row and column index grids, tile counts."""

    padded: str  # int64 [2]
    before: str  # int64 [2]
    rows: str  # int64 [n_h * th]: the image row of each tiled row
    cols: str  # int64 [n_w * tw]
    n_h: str  # int64 [1]
    n_w: str  # int64 [1]


def _axis(b: GraphBuilder, side: str, tile: int, overlap: float) -> tuple[str, str]:
    """(index grid [n * tile], n [1]) along one padded side (int64 [1])."""
    t = b.i64(tile)
    step = b.op("Where", [b.op("Equal", [side, t]), t, b.i64(max(int(tile * (1 - overlap)), 1))], "step")
    n = b.op("Add", [b.op("Div", [b.op("Add", [b.op("Sub", [side, t]), b.op("Sub", [step, b.i64(1)])]), step]), b.i64(1)], "tiles")
    first = b.op("Mul", [b.op("Range", [b.const(np.int64(0)), b.op("Squeeze", [n, b.i64(0)]), b.const(np.int64(1))]), step], "starts")
    first = b.op("Min", [first, b.op("Sub", [side, t])], "starts")
    grid = b.op("Add", [b.op("Unsqueeze", [first, b.i64(1)]), b.const(np.arange(tile, dtype=np.int64)[None])], "grid")
    return b.op("Reshape", [grid, b.i64(-1)], "index"), n


def cut(b: GraphBuilder, x: str, hw: str, tiles: TileOptions) -> tuple[str, Grid]:
    """(N, 3, h, w) -> (N * n_h * n_w, 3, th, tw) tiles, and the grid to blend them back."""
    th, tw = tiles.size
    size = b.i64(th, tw)
    padded = b.op("Max", [hw, size], "padded")
    before = b.op("Div", [b.op("Sub", [padded, hw]), b.i64(2)], "pad_before")
    after = b.op("Sub", [b.op("Sub", [padded, hw]), before], "pad_after")
    pads = b.op("Concat", [b.i64(0, 0), before, b.i64(0, 0), after], "pads", axis=0)
    x = b.op("Pad", [x, pads], "tile_pad")
    rows, n_h = _axis(b, b.op("Slice", [padded, b.i64(0), b.i64(1)]), th, tiles.overlap)
    cols, n_w = _axis(b, b.op("Slice", [padded, b.i64(1), b.i64(2)]), tw, tiles.overlap)
    lead = b.op("Slice", [b.op("Shape", [x]), b.i64(0), b.i64(2)], "nc")
    x = b.op("Gather", [x, rows], "tile_rows", axis=2)  # (N, 3, n_h * th, pw)
    x = b.op("Gather", [x, cols], "tile_cols", axis=3)  # (N, 3, n_h * th, n_w * tw)
    x = b.op("Reshape", [x, b.op("Concat", [lead, n_h, b.i64(th), n_w, b.i64(tw)], "shape", axis=0)])
    x = b.op("Transpose", [x], "tiles", perm=[0, 2, 4, 1, 3, 5])  # (N, n_h, n_w, 3, th, tw)
    x = b.op("Reshape", [x, b.i64(-1, 3, th, tw)], "tile_batch")
    return x, Grid(padded, before, rows, cols, n_h, n_w)


def blend(b: GraphBuilder, v: str, grid: Grid, hw: str, tiles: TileOptions) -> str:
    """(N * n_h * n_w, K, th, tw) tile values -> (N, K, h, w): weighted, added into place, averaged, cropped."""
    th, tw = tiles.size
    weights = importance_map((th, tw), tiles.blend, tiles.sigma_scale)
    v = b.op("Mul", [v, b.f32(weights[None, None])], "weighted")
    k = b.op("Slice", [b.op("Shape", [v]), b.i64(1), b.i64(2)], "k")
    v = b.op("Reshape", [v, b.op("Concat", [b.i64(-1), grid.n_h, grid.n_w, k, b.i64(th, tw)], "shape", axis=0)])
    v = b.op("Transpose", [v], "blocks", perm=[0, 3, 1, 4, 2, 5])  # (N, K, n_h, th, n_w, tw)
    lead = b.op("Slice", [b.op("Shape", [v]), b.i64(0), b.i64(2)], "nk")
    rows_n = b.op("Mul", [grid.n_h, b.i64(th)])
    cols_n = b.op("Mul", [grid.n_w, b.i64(tw)])
    v = b.op("Reshape", [v, b.op("Concat", [lead, rows_n, cols_n], "shape", axis=0)])
    count = b.op("Tile", [b.f32(weights[None, None]), b.op("Concat", [b.i64(1, 1), grid.n_h, grid.n_w], "reps", axis=0)], "count")
    total, count = (_place(b, t, grid) for t in (v, count))
    out = b.op("Div", [total, count], "blended")
    return b.op("Slice", [out, grid.before, b.op("Add", [grid.before, hw]), b.i64(2, 3)], "tile_crop")


def _place(b: GraphBuilder, x: str, grid: Grid) -> str:
    """(N, K, n_h * th, n_w * tw) -> (N, K, ph, pw): every tiled pixel added onto its image pixel."""
    lead = b.op("Slice", [b.op("Shape", [x]), b.i64(0), b.i64(2)], "nk")
    ph, pw = (b.op("Slice", [grid.padded, b.i64(i), b.i64(i + 1)]) for i in (0, 1))
    rows_n = b.op("Slice", [b.op("Shape", [x]), b.i64(2), b.i64(3)])
    wide = b.op("ConstantOfShape", [b.op("Concat", [lead, rows_n, pw], "shape", axis=0)], "zeros", value=_zero())
    cols = b.op("Expand", [b.op("Reshape", [grid.cols, b.i64(1, 1, 1, -1)]), b.op("Shape", [x])], "col_index")
    x = b.op("ScatterElements", [wide, cols, x], "place_cols", axis=3, reduction="add")
    tall = b.op("ConstantOfShape", [b.op("Concat", [lead, ph, pw], "shape", axis=0)], "zeros", value=_zero())
    rows = b.op("Expand", [b.op("Reshape", [grid.rows, b.i64(1, 1, -1, 1)]), b.op("Shape", [x])], "row_index")
    return b.op("ScatterElements", [tall, rows, x], "place_rows", axis=2, reduction="add")


def _zero():
    from onnx import numpy_helper

    return numpy_helper.from_array(np.zeros(1, np.float32))
