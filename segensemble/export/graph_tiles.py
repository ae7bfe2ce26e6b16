"""Sliding-window tiles inside the ensemble graph, for one region of the image at a time (the definitions are
``tiles.py``'s).

A tiled member computes, per scale, only what an output region [r0, r1) x [c0, c1) of the image needs, on the
tile grid of the whole (scaled, padded) image, so that regions stitched together equal the whole image run at
once and the runtime can bound memory by the region in flight (``runtime/regions.py``). Per axis
(``_Window``): the scaled rows the region's back-resize reads, the tiles of the global grid that cover them,
the scaled rows those tiles read and the source rows those read. The image is resized by gathering its rows
and columns and interpolating (bilinear, half-pixel centres, edges clamped: ``views.bilinear``'s arithmetic,
in float64 coordinates), so a region's resize is exactly the crop of the whole image's; then normalized,
zero-padded where the scaled image is shorter than a tile, cut into tiles with two Gathers (the tiles become
the batch, each TTA view of a model runs once over all of them), weighted by the importance map, added back
into place with two ScatterElements(add) (columns, then rows), divided by the summed weights, cropped and
resized back to the region. In the vote (``sliding_sum``), the model calls run in a Loop over equal chunks of
at most ``tile_batch`` tiles, each chunk's weighted values added into one accumulator as it is computed: the
models' activations follow the chunk and nothing is kept per tile, so memory follows the chunk and the region's
windows, not the region's tile count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segensemble.export.graph_ops import GraphBuilder
from segensemble.tiles import TileOptions, importance_map

FULL = 1 << 62  # a region's default stop: the image's far edge


@dataclass(frozen=True)
class _Lerp:
    """Linear interpolation along an axis: out[j] = x[i0[j]] + f[j] (x[i1[j]] - x[i0[j]])."""

    i0: str  # int64 [n]
    i1: str
    f: str  # float32 [n]


@dataclass(frozen=True)
class _Window:
    """One axis of one member's scale, for one region: names of int64 tensors ([1] unless said)."""

    source: _Lerp | tuple[str, str]  # the scaled window's rows from the image (a Lerp, or [start, stop) at scale 1)
    pad: tuple[str, str]  # zeros before and after (a scaled side shorter than the tile)
    index: str  # [n * tile]: each tiled row's row in the padded window
    n: str  # tiles along the axis
    length: str  # the padded window's length
    crop: tuple[str, str]  # [start, stop) of the scaled rows the region reads, in window coordinates
    back: _Lerp | None  # the region's rows from the cropped scaled rows (None at scale 1)


def _i(b: GraphBuilder, x: str) -> str:
    return b.op("Cast", [x], "i64", to=7)


def _source(b: GraphBuilder, start: str, stop: str, n_in: str, n_out: str) -> _Lerp:
    """Where output rows [start, stop) of an n_in -> n_out bilinear resize read (``views.bilinear``)."""
    def f64(v: str) -> str:
        return b.op("Cast", [v], "f64", to=11)

    y = f64(b.op("Range", [b.op("Squeeze", [start]), b.op("Squeeze", [stop]), b.const(np.int64(1))], "rows"))
    src = b.op("Sub", [b.op("Mul", [b.op("Add", [y, b.const(np.float64(0.5))]), b.op("Div", [f64(n_in), f64(n_out)])]), b.const(np.float64(0.5))])
    last = f64(b.op("Sub", [n_in, b.i64(1)]))
    src = b.op("Min", [b.op("Max", [src, b.const(np.float64(0.0))]), last], "src")
    floor = b.op("Floor", [src])
    i0 = _i(b, floor)
    i1 = b.op("Min", [b.op("Add", [i0, b.i64(1)]), b.op("Sub", [n_in, b.i64(1)])], "next")
    return _Lerp(i0, i1, b.op("Cast", [b.op("Sub", [src, floor])], "frac", to=1))


def _span(b: GraphBuilder, lerp: _Lerp) -> tuple[str, str]:
    """[first, last + 1) of the rows a Lerp reads."""
    return b.op("ReduceMin", [lerp.i0], "lo", keepdims=1), b.op("Add", [b.op("ReduceMax", [lerp.i1], "hi", keepdims=1), b.i64(1)])


def _window(b: GraphBuilder, length: str, scaled: str, start: str, stop: str, tile: int, overlap: float, resized: bool) -> _Window:
    """One axis: image side ``length``, scaled side ``scaled``, the region's [start, stop) (see the module docstring)."""
    back = _source(b, start, stop, scaled, length) if resized else None
    lo, hi = _span(b, back) if back else (start, stop)
    t = b.i64(tile)
    padded = b.op("Max", [scaled, t], "padded")
    before = b.op("Div", [b.op("Sub", [padded, scaled]), b.i64(2)], "pad_before")
    step = b.op("Where", [b.op("Equal", [padded, t]), t, b.i64(max(int(tile * (1 - overlap)), 1))], "step")
    count = b.op("Add", [b.op("Div", [b.op("Add", [b.op("Sub", [padded, t]), b.op("Sub", [step, b.i64(1)])]), step]), b.i64(1)], "tiles")
    starts = b.op("Mul", [b.op("Range", [b.const(np.int64(0)), b.op("Squeeze", [count]), b.const(np.int64(1))]), step], "starts")
    starts = b.op("Min", [starts, b.op("Sub", [padded, t])], "starts")
    lo_p, hi_p = b.op("Add", [lo, before]), b.op("Add", [hi, before])
    def count_where(cond: str) -> str:
        return b.op("ReduceSum", [_i(b, cond)], "count", keepdims=1)

    first = count_where(b.op("LessOrEqual", [b.op("Add", [starts, t]), lo_p]))  # tiles ending before the rows
    end = count_where(b.op("Less", [starts, hi_p]))
    starts = b.op("Slice", [starts, first, end, b.i64(0)], "band_starts")
    p0 = b.op("Slice", [starts, b.i64(0), b.i64(1)], "window_start")
    p1 = b.op("Add", [b.op("Slice", [starts, b.i64(-1), b.i64(FULL)]), t], "window_stop")
    grid = b.op("Add", [b.op("Unsqueeze", [b.op("Sub", [starts, p0]), b.i64(1)]), b.const(np.arange(tile, dtype=np.int64)[None])], "grid")
    u0, u1 = b.op("Sub", [p0, before]), b.op("Sub", [p1, before])  # the window in scaled coordinates, padding included
    q0, q1 = b.op("Max", [u0, b.i64(0)]), b.op("Min", [u1, scaled])
    source = _source(b, q0, q1, length, scaled) if resized else (q0, q1)
    back = _Lerp(*(b.op("Sub", [i, lo]) for i in (back.i0, back.i1)), back.f) if back else None
    return _Window(source, (b.op("Sub", [q0, u0]), b.op("Sub", [u1, q1])), b.op("Reshape", [grid, b.i64(-1)], "index"),
                   b.op("Sub", [end, first], "n"), b.op("Sub", [p1, p0], "window"), (b.op("Sub", [lo_p, p0]), b.op("Sub", [hi_p, p0])), back)


def _lerp(b: GraphBuilder, x: str, lerp: _Lerp, axis: int, rank: int, cast: bool = False) -> str:
    """``x`` interpolated along ``axis`` (float32 out; ``cast``: x is uint8, cast after the gathers)."""
    shape = [1] * rank
    shape[axis] = -1
    a, c = (b.op("Gather", [x, i], "rows", axis=axis) for i in (lerp.i0, lerp.i1))
    if cast:
        a, c = (b.op("Cast", [v], "float", to=1) for v in (a, c))
    f = b.op("Reshape", [lerp.f, b.i64(*shape)])
    return b.op("Add", [a, b.op("Mul", [f, b.op("Sub", [c, a])])], "lerp")


def _read(b: GraphBuilder, x: str, source, axis: int) -> str:
    """The scaled window's rows of NHWC ``x`` (uint8 in, float32 out) along ``axis``."""
    if isinstance(source, _Lerp):
        return _lerp(b, x, source, axis, 4, cast=axis == 1)
    x = b.op("Slice", [x, source[0], source[1], b.i64(axis)], "window")
    return b.op("Cast", [x], "float", to=1) if axis == 1 else x


@dataclass(frozen=True)
class Grid:
    """A member's scale over one region: its row and column windows."""

    rows: _Window
    cols: _Window


def cut(b: GraphBuilder, image: str, image_hw: str, scaled_hw: str, region: str, scale: float, tiles: TileOptions,
        normalize) -> tuple[str, Grid]:
    """uint8 (N, H, W, 3) -> the tiles the region needs, (N * n_h * n_w, 3, th, tw), normalized; and their grid."""
    th, tw = tiles.size
    resized = scale != 1.0

    def side(hw: str, i: int) -> str:
        return b.op("Slice", [hw, b.i64(i), b.i64(i + 1)])

    def part(i: int) -> str:
        return side(region, i)

    windows = []
    for axis, tile in ((0, th), (1, tw)):
        length = side(image_hw, axis)
        stop = b.op("Min", [b.op("Max", [part(2 * axis + 1), b.i64(1)]), length], "region_stop")
        start = b.op("Min", [b.op("Max", [part(2 * axis), b.i64(0)]), b.op("Sub", [stop, b.i64(1)])], "region_start")
        windows.append(_window(b, length, side(scaled_hw, axis), start, stop, tile, tiles.overlap, resized))
    rows, cols = windows
    x = _read(b, _read(b, image, rows.source, 1), cols.source, 2)
    x = normalize(b.op("Transpose", [x], "nchw", perm=[0, 3, 1, 2]))
    pads = b.op("Concat", [b.i64(0, 0), rows.pad[0], cols.pad[0], b.i64(0, 0), rows.pad[1], cols.pad[1]], "pads", axis=0)
    x = b.op("Pad", [x, pads], "tile_pad")
    lead = b.op("Slice", [b.op("Shape", [x]), b.i64(0), b.i64(2)], "nc")
    x = b.op("Gather", [x, rows.index], "tile_rows", axis=2)  # (N, 3, n_h * th, window w)
    x = b.op("Gather", [x, cols.index], "tile_cols", axis=3)  # (N, 3, n_h * th, n_w * tw)
    x = b.op("Reshape", [x, b.op("Concat", [lead, rows.n, b.i64(th), cols.n, b.i64(tw)], "shape", axis=0)])
    x = b.op("Transpose", [x], "tiles", perm=[0, 2, 4, 1, 3, 5])  # (N, n_h, n_w, 3, th, tw)
    return b.op("Reshape", [x, b.i64(-1, 3, th, tw)], "tile_batch"), Grid(rows, cols)


def blend(b: GraphBuilder, v: str, grid: Grid, tiles: TileOptions) -> str:
    """(N * n_h * n_w, K, th, tw) tile values -> (N, K, region h, region w): weighted, added into place, averaged
    by the summed weights, cropped to the rows the region reads and resized back to the region."""
    th, tw = tiles.size
    weights = importance_map((th, tw), tiles.blend, tiles.sigma_scale)
    v = b.op("Mul", [v, b.f32(weights[None, None])], "weighted")
    k = b.op("Slice", [b.op("Shape", [v]), b.i64(1), b.i64(2)], "k")
    v = b.op("Reshape", [v, b.op("Concat", [b.i64(-1), grid.rows.n, grid.cols.n, k, b.i64(th, tw)], "shape", axis=0)])
    v = b.op("Transpose", [v], "blocks", perm=[0, 3, 1, 4, 2, 5])  # (N, K, n_h, th, n_w, tw)
    lead = b.op("Slice", [b.op("Shape", [v]), b.i64(0), b.i64(2)], "nk")
    rows_n = b.op("Mul", [grid.rows.n, b.i64(th)])
    cols_n = b.op("Mul", [grid.cols.n, b.i64(tw)])
    v = b.op("Reshape", [v, b.op("Concat", [lead, rows_n, cols_n], "shape", axis=0)])
    total = _place(b, v, grid)
    return _finish(b, total, grid, tiles)


def _count(b: GraphBuilder, grid: Grid, tiles: TileOptions) -> str:
    """(1, 1, window h, window w): the importance weights summed over the tiles that cover each pixel."""
    weights = importance_map(tuple(tiles.size), tiles.blend, tiles.sigma_scale)
    count = b.op("Tile", [b.f32(weights[None, None]), b.op("Concat", [b.i64(1, 1), grid.rows.n, grid.cols.n], "reps", axis=0)], "count")
    return _place(b, count, grid)


def _finish(b: GraphBuilder, total: str, grid: Grid, tiles: TileOptions) -> str:
    """(N, K, window h, window w) weighted sums -> divided by the summed weights, cropped to the rows the region
    reads and resized back to the region."""
    out = b.op("Div", [total, _count(b, grid, tiles)], "blended")
    crop = grid.rows.crop, grid.cols.crop
    out = b.op("Slice", [out, b.op("Concat", [crop[0][0], crop[1][0]], "from", axis=0),
                         b.op("Concat", [crop[0][1], crop[1][1]], "to", axis=0), b.i64(2, 3)], "tile_crop")
    for axis, window in ((2, grid.rows), (3, grid.cols)):
        if window.back:
            out = _lerp(b, out, window.back, axis, 4)
    return out


def _place(b: GraphBuilder, x: str, grid: Grid) -> str:
    """(N, K, n_h * th, n_w * tw) -> (N, K, window h, window w): every tiled pixel added onto its window pixel,
    by two ScatterElements(add) (columns, then rows). Not ScatterND: ONNX Runtime's CPU ScatterND(add) split
    its updates across threads and raced on the indices that overlapping tiles share (wrong sums, seen in CI)."""
    lead = b.op("Slice", [b.op("Shape", [x]), b.i64(0), b.i64(2)], "nk")
    rows_n = b.op("Slice", [b.op("Shape", [x]), b.i64(2), b.i64(3)])
    wide = b.op("ConstantOfShape", [b.op("Concat", [lead, rows_n, grid.cols.length], "shape", axis=0)], "zeros", value=_zero())
    cols = b.op("Expand", [b.op("Reshape", [grid.cols.index, b.i64(1, 1, 1, -1)]), b.op("Shape", [x])], "col_index")
    x = b.op("ScatterElements", [wide, cols, x], "place_cols", axis=3, reduction="add")
    tall = b.op("ConstantOfShape", [b.op("Concat", [lead, grid.rows.length, grid.cols.length], "shape", axis=0)], "zeros", value=_zero())
    rows = b.op("Expand", [b.op("Reshape", [grid.rows.index, b.i64(1, 1, -1, 1)]), b.op("Shape", [x])], "row_index")
    return b.op("ScatterElements", [tall, rows, x], "place_rows", axis=2, reduction="add")


def _zero():
    from onnx import numpy_helper

    return numpy_helper.from_array(np.zeros(1, np.float32))



def sliding_sum(b: GraphBuilder, cuts: list[tuple[str, Grid]], chunk: str, channels: int, tiles: TileOptions, body) -> list[str]:
    """Per scale (``cuts``: its tiles from ``cut`` and their grid), ``body(tiles)`` (K = ``channels``) blended as
    ``blend`` does, with every scale's tiles run in one Loop over equal chunks of at most ``chunk`` (int64 [1])
    tiles whose weighted values are added into one accumulator as they come (ScatterElements(add) on flat
    indices); ``body`` must treat its tiles independently (the model calls, their views, their sum). The Loop's
    body holds the weights (``graph._into_loops``)."""
    from onnx import TensorProto, helper

    th, tw = tiles.size
    def first(x: str) -> str:
        return b.op("Slice", [b.op("Shape", [x]), b.i64(0), b.i64(1)], "n")

    index, sizes, offset = [], [], b.i64(0)  # per scale: each tile pixel's place in the flat accumulator
    for x, grid in cuts:
        window = b.op("Mul", [grid.rows.length, grid.cols.length], "window_px")
        images = b.op("Div", [first(x), b.op("Mul", [grid.rows.n, grid.cols.n])], "images")
        image_at = b.op("Mul", [b.op("Range", [b.const(np.int64(0)), b.op("Squeeze", [images]), b.const(np.int64(1))]), window])
        rows = b.op("Mul", [b.op("Reshape", [grid.rows.index, b.op("Concat", [b.i64(1), grid.rows.n, b.i64(1, th, 1)], "shape", axis=0)]),
                            grid.cols.length])
        cols = b.op("Reshape", [grid.cols.index, b.op("Concat", [b.i64(1, 1), grid.cols.n, b.i64(1, tw)], "shape", axis=0)])
        at = b.op("Add", [b.op("Add", [b.op("Reshape", [image_at, b.i64(-1, 1, 1, 1, 1)]), rows]), cols], "tile_px")
        index.append(b.op("Add", [b.op("Reshape", [at, b.i64(-1, th, tw)]), offset], "flat_px"))
        sizes.append(b.op("Mul", [images, window], "scale_px"))
        offset = b.op("Add", [offset, sizes[-1]])
    x = b.op("Concat", [x for x, _ in cuts], "scale_tiles", axis=0) if len(cuts) > 1 else cuts[0][0]
    index = b.op("Concat", index, "flat_index", axis=0) if len(index) > 1 else index[0]
    n, one = first(x), b.i64(1)
    parts = b.op("Div", [b.op("Sub", [b.op("Add", [n, chunk]), one]), chunk], "parts")
    size = b.op("Div", [b.op("Sub", [b.op("Add", [n, parts]), one]), parts], "chunk")
    shape = b.op("Reshape", [b.op("Concat", [b.i64(channels), offset], "shape", axis=0), b.i64(2)])  # a rank OpenVINO can see
    acc = b.op("ConstantOfShape", [shape], "acc", value=_zero())

    outer, b.nodes = b.nodes, []
    step, cond, acc_in = b.name("chunk_step"), b.name("chunk_cond"), b.name("acc_in")
    start = b.op("Mul", [b.op("Unsqueeze", [step, b.i64(0)]), size], "chunk_start")
    stop = b.op("Min", [b.op("Add", [start, size]), n], "chunk_stop")
    values = body(b.op("Slice", [x, start, stop, b.i64(0)], "chunk_x"))
    weights = importance_map((th, tw), tiles.blend, tiles.sigma_scale)
    values = b.op("Mul", [values, b.f32(weights[None, None])], "weighted")
    updates = b.op("Reshape", [b.op("Transpose", [values], "kc", perm=[1, 0, 2, 3]), b.i64(channels, -1)], "updates")
    at = b.op("Expand", [b.op("Reshape", [b.op("Slice", [index, start, stop, b.i64(0)]), b.i64(1, -1)]), b.op("Shape", [updates])], "at")
    acc_out = b.op("ScatterElements", [acc_in, at, updates], "accumulate", axis=1, reduction="add")
    keep = b.op("Identity", [cond], "chunk_keep")
    body_graph = helper.make_graph(b.nodes, b.name("chunks"),
                                   [helper.make_tensor_value_info(step, TensorProto.INT64, []),
                                    helper.make_tensor_value_info(cond, TensorProto.BOOL, []),
                                    helper.make_tensor_value_info(acc_in, TensorProto.FLOAT, [channels, None])],
                                   [helper.make_tensor_value_info(keep, TensorProto.BOOL, []),
                                    helper.make_tensor_value_info(acc_out, TensorProto.FLOAT, [channels, None])])
    b.nodes = outer
    acc = b.op("Loop", [b.op("Squeeze", [parts]), "", acc], "chunks", body=body_graph)

    out, start = [], b.i64(0)
    for (_, grid), px in zip(cuts, sizes):
        stop = b.op("Add", [start, px])
        part = b.op("Slice", [acc, start, stop, b.i64(1)], "scale_acc")
        part = b.op("Reshape", [part, b.op("Concat", [b.i64(channels, -1), grid.rows.length, grid.cols.length], "shape", axis=0)])
        out.append(_finish(b, b.op("Transpose", [part], "nk", perm=[1, 0, 2, 3]), grid, tiles))
        start = stop
    return out
