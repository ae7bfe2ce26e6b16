"""The ensemble as one ONNX graph (``ensemble.onnx``): uint8 images in, labels and probabilities out.

Input ``image``: uint8 (N, H, W, 3) RGB as decoded; N, H and W dynamic. For each member m, scale s and TTA
view t, inside the graph: the member's base size (``input_size``, or the image's own H x W) times s, rounded
half up (float64 arithmetic, as Python computes it); bilinear resize with half-pixel centres (cv2
INTER_LINEAR); the member's own normalization; zero-pad bottom/right to the stride; augment; the model;
softmax; de-augment; crop. The TTA views of one model at one scale that keep H x W run as one batched call
(concatenated along N), and those that swap H and W (rot90, rot270, transpose) as a second one, so the
weights of each model are stored once and a GPU sees N x views per call. Views at one resolution are summed
before one resize to H x W.

Outputs (names also in the graph's metadata, key ``outputs``):

- ``labels``  (N, H, W) uint8 class ids (int32 past 256 classes): argmax of ``probs``;
- ``probs``   (N, C, H, W) float32: sum_m w_m P_m / sum_m w_m;
- ``member:<name>`` (N, C, H, W) float32: P_m, the mean over that member's views.

ONNX Runtime runs every node whatever outputs are asked for, so the ensemble is computed *from* the member
outputs (one weighted sum) and they cost nothing extra. A profile is its own graph file; ``views=True``
gives a variant whose outputs are every view's probabilities at H x W (``view:<j>``), for ``analyze``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segensemble.errors import SegEnsembleError
from segensemble.manifest import Manifest, MemberEntry
from segensemble.runtime.views import TTA, scaled_size

GRAPH_FILE = "ensemble.onnx"
GRAPH_FORMAT = "1"  # bump when the graph's contract (inputs, outputs, semantics) changes
MIN_OPSET = 18  # Split(num_outputs), Reduce*(axes as input), Resize with sizes
EXTERNAL_DATA_BYTES = 1_500_000_000  # past this, weights go to <file>.data (protobuf's 2 GB limit)


def member_output(name: str) -> str:
    return f"member:{name}"


def view_output(index: int) -> str:
    return f"view:{index}"


@dataclass(frozen=True)
class ViewId:
    """One view of the ensemble: member index, model index within it, scale, TTA name."""

    member: int
    model: int
    scale: float
    tta: str


def list_views(members: Sequence[MemberEntry]) -> list[ViewId]:
    """Every view, in the order the views graph emits them."""
    return [ViewId(mi, k, s, t) for mi, m in enumerate(members) for k in range(len(m.models)) for s in m.scales for t in m.tta]


def profile_file(profile: str | None) -> str:
    """The graph file of a profile (None: the whole ensemble)."""
    if profile is None:
        return GRAPH_FILE
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in profile)
    return f"ensemble.{safe}.onnx"


class _Builder:
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

    def total(self, terms: list[str], hint: str) -> str:
        return terms[0] if len(terms) == 1 else self.op("Sum", terms, hint)


@dataclass
class _Model:
    """A member model's graph, inlined once per call under its own names; weights shared by the calls."""

    graph: object
    prefix: str
    calls: int = 0

    def call(self, b: _Builder, x: str) -> str:
        self.calls += 1
        inits = {i.name for i in self.graph.initializer}
        source = next(i.name for i in self.graph.input if i.name not in inits)
        where = f"{self.prefix}/call{self.calls}"

        def rename(v: str) -> str:
            if not v:
                return v
            if v == source:
                return x
            return f"{self.prefix}/{v}" if v in inits else f"{where}/{v}"

        for node in self.graph.node:
            copy = b.helper.make_node(node.op_type, [rename(i) for i in node.input], [rename(o) for o in node.output],
                                      name=f"{where}/{node.name}", domain=node.domain)
            copy.attribute.extend(node.attribute)
            b.nodes.append(copy)
        return rename(self.graph.output[0].name)


class _Member:
    """One member's views: shared preprocessing per size, one batched model call per TTA group."""

    def __init__(self, b: _Builder, entry: MemberEntry, models: list[_Model], image: str, image_hw: str):
        self.b, self.entry, self.models, self.image, self.image_hw = b, entry, models, image, image_hw

    def view_size(self, scale: float) -> tuple[str, bool]:
        """(int64 [h, w] of the view, whether it differs from the image's H x W)."""
        b, entry = self.b, self.entry
        if entry.input_size:
            return b.i64(*scaled_size(tuple(entry.input_size), scale)), True
        if scale == 1.0:
            return self.image_hw, False
        return b.scaled(self.image_hw, scale), True

    def scale_sums(self, scale: float, views_out: dict | None) -> tuple[str, str, bool]:
        """(sum of this scale's view probabilities at (h, w), int64 [h, w], resized?)."""
        b, entry = self.b, self.entry
        hw, resized = self.view_size(scale)
        x = b.resize(self.image, hw) if resized else self.image
        mean, std = np.asarray(entry.mean, np.float64), np.asarray(entry.std, np.float64)
        x = b.op("Add", [b.op("Mul", [x, b.f32((1 / (255 * std)).reshape(1, 3, 1, 1))]), b.f32((-mean / std).reshape(1, 3, 1, 1))], "norm")
        if entry.stride > 1:
            x = b.pad_to(x, hw, b.padded(hw, entry.stride))
        groups = [[t for t in entry.tta if TTA[t].swaps_hw == swap] for swap in (False, True)]
        terms = []
        for k, model in enumerate(self.models):
            for group in (g for g in groups if g):
                inputs = [b.tta(x, t, inverse=False) for t in group]
                batch = inputs[0] if len(inputs) == 1 else b.op("Concat", inputs, "views", axis=0)
                probs = b.softmax(model.call(b, batch))
                chunks = [probs] if len(group) == 1 else b.op("Split", [probs], "view", outputs=len(group), axis=0, num_outputs=len(group))
                for t, chunk in zip(group, chunks):
                    p = b.crop(b.tta(chunk, t, inverse=True), hw)
                    terms.append(p)
                    if views_out is not None:
                        views_out[(k, scale, t)] = (p, hw, resized)
        return b.total(terms, "scale_sum"), hw, resized


def _load_model(path: Path, opset: int):
    import onnx
    from onnx import inliner, version_converter

    model = onnx.load(str(path))
    if model.functions:
        model = inliner.inline_local_functions(model)
    if _opset(model) != opset:
        model = version_converter.convert_version(model, opset)
    for node in model.graph.node:
        if any(a.type in (5, 10) for a in node.attribute):  # GRAPH / GRAPHS: control flow with subgraphs
            raise SegEnsembleError(f"{path}: node {node.name or node.op_type} has a subgraph ({node.op_type}); "
                                   "the ensemble graph inlines members and supports only graphs without control flow")
    return model


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)


def build_graph(manifest: Manifest, build_dir: Path, out: Path, *, profile: str | None = None, views: bool = False,
                cache_key: str = "") -> Path:
    """Write the ensemble graph of ``manifest`` (restricted to ``profile``) to ``out``; see the module docstring."""
    import onnx
    from onnx import TensorProto, helper

    manifest = manifest.profile(profile)
    members = manifest.members
    files = {e.file for m in members for e in m.models}
    opset = max(MIN_OPSET, *(_opset(onnx.load(str(build_dir / f), load_external_data=False)) for f in files))
    b = _Builder()
    loaded = {f: _load_model(build_dir / f, opset) for f in sorted(files)}
    image = b.op("Transpose", [b.op("Cast", ["image"], "float", to=1)], "nchw", perm=[0, 3, 1, 2])
    image_hw = b.op("Slice", [b.op("Shape", ["image"]), b.i64(1), b.i64(3)], "image_hw")
    shared_inits: dict[str, object] = {}
    total_weight = sum(m.weight for m in members)
    member_probs, outputs, view_values = [], [], []
    for mi, entry in enumerate(members):
        models = []
        for k, e in enumerate(entry.models):
            prefix = f"m{mi}_{k}"
            for init in loaded[e.file].graph.initializer:
                copy = TensorProto()
                copy.CopyFrom(init)
                copy.name = f"{prefix}/{init.name}"
                shared_inits[copy.name] = copy
            models.append(_Model(loaded[e.file].graph, prefix))
        member = _Member(b, entry, models, image, image_hw)
        per_view: dict | None = {} if views else None
        at_full = []
        for s in entry.scales:
            sums, _, resized = member.scale_sums(s, per_view)
            at_full.append(b.resize(sums, image_hw) if resized else sums)
        if views:
            for k, s, t in ((k, s, t) for k in range(len(models)) for s in entry.scales for t in entry.tta):  # list_views order
                p, _, resized = per_view[(k, s, t)]
                view_values.append(b.resize(p, image_hw) if resized else p)
            continue
        probs = b.op("Mul", [b.total(at_full, "member_sum"), b.f32(1.0 / entry.views)], "member")
        outputs.append((member_output(entry.name), b.op("Identity", [probs], member_output(entry.name))))
        member_probs.append(b.op("Mul", [probs, b.f32(entry.weight / total_weight)], "weighted"))
    classes = len(manifest.classes)
    spatial = ["batch", classes, "height", "width"]
    if views:
        value_infos = [helper.make_tensor_value_info(view_output(j), TensorProto.FLOAT, spatial) for j in range(len(view_values))]
        for j, v in enumerate(view_values):
            b.nodes.append(helper.make_node("Identity", [v], [view_output(j)], name=f"out/{view_output(j)}"))
    else:
        probs = b.total(member_probs, "vote")
        b.nodes.append(helper.make_node("Identity", [probs], ["probs"], name="out/probs"))
        label_type = TensorProto.UINT8 if classes <= 256 else TensorProto.INT32
        b.nodes.append(helper.make_node("Cast", [b.op("ArgMax", ["probs"], "argmax", axis=1, keepdims=0)], ["labels"],
                                        name="out/labels", to=label_type))
        for name, value in outputs:
            b.nodes.append(helper.make_node("Identity", [value], [name], name=f"out/{name}"))
        value_infos = [helper.make_tensor_value_info("labels", label_type, ["batch", "height", "width"]),
                       helper.make_tensor_value_info("probs", TensorProto.FLOAT, spatial)]
        value_infos += [helper.make_tensor_value_info(name, TensorProto.FLOAT, spatial) for name, _ in outputs]
    graph = helper.make_graph(b.nodes, "segensemble", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", "height", "width", 3])],
                              value_infos, initializer=b.inits + list(shared_inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="segensemble")
    model.ir_version = min(model.ir_version, 10)
    meta = _metadata(manifest, profile, views, cache_key)
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    return _save(model, out)


def _metadata(manifest: Manifest, profile: str | None, views: bool, cache_key: str) -> dict[str, str]:
    members = manifest.members
    outputs: dict = {"views": [view_output(j) for j in range(len(list_views(members)))]} if views else {
        "labels": "labels", "probs": "probs", "members": {m.name: member_output(m.name) for m in members}}
    return {
        "segensemble_graph": GRAPH_FORMAT, "cache_key": cache_key, "profile": profile or "",
        "input": json.dumps({"name": "image", "dtype": "uint8", "shape": ["batch", "height", "width", 3], "channels": "RGB"}),
        "outputs": json.dumps(outputs), "classes": json.dumps(list(manifest.classes)),
        "views": json.dumps([[v.member, v.model, v.scale, v.tta] for v in list_views(members)]),
        "members": json.dumps([{"name": m.name, "weight": m.weight, "views": m.views} for m in members]),
    }


def _save(model, out: Path) -> Path:
    """Write under a temporary name and rename; weights past protobuf's limit go to ``<out>.data``."""
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    big = sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
    data = out.with_name(out.name + ".data")
    if big:  # the .data file's name is written inside the graph, so it is renamed into place first
        onnx.save(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True, location=f".{data.name}.tmp")
        model = onnx.load(str(tmp), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = data.name
        out.with_name(f".{data.name}.tmp").replace(data)
        onnx.save(model, str(tmp))
    else:  # no onnx.checker pass: build loads and runs the graph in ONNX Runtime right after, which checks more
        onnx.save(model, str(tmp))
        data.unlink(missing_ok=True)
    tmp.replace(out)
    return out
