"""The ONNX building blocks of the ensemble graph: constants stored once, and the array steps (resize with
cv2's semantics, size arithmetic, padding, crop, the TTA views and their inverses, softmax) as node chains.

Each method mirrors a numpy step of the reference loop (``reference.py``), which is how it is tested."""

from __future__ import annotations

import numpy as np


class GraphBuilder:
    """Appends nodes and constants; constants with equal values are stored once."""

    def __init__(self):
        from onnx import helper

        self.helper = helper
        self.nodes: list = []
        self.inits: list = []
        self._consts: dict[tuple, str] = {}
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"g/{hint}_{self._count}"

    def const(self, value) -> str:
        from onnx import numpy_helper

        array = np.asarray(value)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            name = self.name("c")
            self.inits.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, outputs: int = 1, **attrs):
        names = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, inputs, names, name=names[0], **attrs))
        return names[0] if outputs == 1 else names

    def i64(self, *values: int) -> str:
        return self.const(np.array(values, dtype=np.int64))

    def f32(self, value) -> str:
        return self.const(np.asarray(value, dtype=np.float32))

    # shapes ---------------------------------------------------------------------------------------
    def resize(self, x: str, hw: str) -> str:
        """Bilinear, half-pixel centres, no antialias (cv2 INTER_LINEAR) of NCHW ``x`` to ``hw`` (int64 [2])."""
        lead = self.op("Slice", [self.op("Shape", [x]), self.i64(0), self.i64(2)], "nc")
        sizes = self.op("Concat", [lead, hw], "sizes", axis=0)
        return self.op("Resize", [x, "", "", sizes], "resize", mode="linear", coordinate_transformation_mode="half_pixel")

    def scaled(self, hw: str, scale: float) -> str:
        """floor(hw * scale + 0.5), at least 1, in float64 as ``views.scaled_size`` computes it."""
        x = self.op("Cast", [hw], "hw64", to=11)  # DOUBLE
        x = self.op("Floor", [self.op("Add", [self.op("Mul", [x, self.const(np.float64(scale))]), self.const(np.float64(0.5))])])
        return self.op("Max", [self.op("Cast", [x], "hw", to=7), self.i64(1)], "hw")  # INT64

    def padded(self, hw: str, stride: int) -> str:
        s = self.i64(stride)
        return self.op("Mul", [self.op("Div", [self.op("Add", [hw, self.i64(stride - 1)]), s]), s], "padded")

    def pad_to(self, x: str, hw: str, target: str) -> str:
        """Zero-pad NCHW ``x`` of size ``hw`` bottom/right to ``target``."""
        tail = self.op("Sub", [target, hw], "padding")
        pads = self.op("Concat", [self.i64(0, 0, 0, 0, 0, 0), tail], "pads", axis=0)
        return self.op("Pad", [x, pads], "pad")

    def crop(self, x: str, hw: str) -> str:
        return self.op("Slice", [x, self.i64(0, 0), hw, self.i64(2, 3)], "crop")

    # views ----------------------------------------------------------------------------------------
    def flip(self, x: str, axis: int) -> str:
        return self.op("Slice", [x, self.i64(-1), self.i64(np.iinfo(np.int64).min), self.i64(axis), self.i64(-1)], "flip")

    def transpose_hw(self, x: str) -> str:
        return self.op("Transpose", [x], "t", perm=[0, 1, 3, 2])

    def tta(self, x: str, name: str, inverse: bool) -> str:
        """np.rot90(x, 1, (2, 3)) == transpose(flip_w(x)); its inverse is flip_w(transpose(x))."""
        if name == "identity":
            return x
        if name in ("hflip", "vflip"):
            return self.flip(x, 3 if name == "hflip" else 2)
        if name == "transpose":
            return self.transpose_hw(x)
        forward = (name == "rot90") != inverse  # rot270 forward is rot90's inverse
        return self.transpose_hw(self.flip(x, 3)) if forward else self.flip(self.transpose_hw(x), 3)

    def softmax(self, x: str) -> str:
        """Over the class axis; decomposed (ORT's Softmax on axis 1 of NCHW measured slower)."""
        axis = self.i64(1)
        e = self.op("Exp", [self.op("Sub", [x, self.op("ReduceMax", [x, axis], "max", keepdims=1)], "shift")], "exp")
        return self.op("Div", [e, self.op("ReduceSum", [e, axis], "sum", keepdims=1)], "softmax")

    def log_softmax(self, x: str) -> str:
        """x - max - log Σ exp(x - max) over the class axis: exact where softmax underflows."""
        axis = self.i64(1)
        shift = self.op("Sub", [x, self.op("ReduceMax", [x, axis], "max", keepdims=1)], "shift")
        lse = self.op("Log", [self.op("ReduceSum", [self.op("Exp", [shift], "exp"), axis], "sum", keepdims=1)], "lse")
        return self.op("Sub", [shift, lse], "log_softmax")

    def total(self, terms: list[str], hint: str) -> str:
        return terms[0] if len(terms) == 1 else self.op("Sum", terms, hint)
