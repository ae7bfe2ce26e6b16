"""Fuse a build into one ONNX graph: every member, scale, TTA view, softmax and the weighted mean inside.

Input ``image`` (N, 3, H, W) normalized at a fixed H x W (the members must share mean/std); outputs
``probs`` (N, C, H, W) and ``labels`` (N, H, W, int64). Each member graph is inlined once per view with
its own node/value prefix while its weights (initializers) are shared by all of its views, so the file
holds each model's weights once. The maths is the engine's: resizing the normalized image equals
normalizing the resized image because bilinear weights sum to one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from segensemble.ensemble.views import padded_size, scaled_size
from segensemble.errors import SegEnsembleError
from segensemble.manifest import Manifest, MemberEntry

FUSED_OPSET = 18


class _Builder:
    def __init__(self):
        from onnx import helper

        self.helper = helper
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"fuse/{hint}_{self.count}"

    def const(self, value: np.ndarray, hint: str) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs) -> str:
        out = self.name(hint)
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def resize(self, x: str, hw: tuple[int, int]) -> str:
        """Bilinear, half-pixel centres (cv2 INTER_LINEAR), to a fixed H x W with a dynamic batch."""
        lead = self.op("Slice", [self.op("Shape", [x], "shape"), self.const(np.array([0]), "s"), self.const(np.array([2]), "e")], "nc")
        sizes = self.op("Concat", [lead, self.const(np.array(hw, dtype=np.int64), "hw")], "sizes", axis=0)
        return self.op("Resize", [x, "", "", sizes], "resize", mode="linear", coordinate_transformation_mode="half_pixel")

    def slice_hw(self, x: str, h: int, w: int) -> str:
        return self.op("Slice", [x, self.const(np.array([0, 0]), "s"), self.const(np.array([h, w]), "e"),
                                 self.const(np.array([2, 3]), "ax")], "crop")

    def flip(self, x: str, axis: int) -> str:
        big = np.iinfo(np.int64).max
        return self.op("Slice", [x, self.const(np.array([-1]), "s"), self.const(np.array([-big]), "e"),
                                 self.const(np.array([axis]), "ax"), self.const(np.array([-1]), "st")], "flip")

    def transpose_hw(self, x: str) -> str:
        return self.op("Transpose", [x], "t", perm=[0, 1, 3, 2])

    def tta(self, x: str, name: str, inverse: bool) -> str:
        """np.rot90(x, 1, (2, 3)) = transpose(flip_w(x)); its inverse is flip_w(transpose(x))."""
        if name == "identity":
            return x
        if name in ("hflip", "vflip"):
            return self.flip(x, 3 if name == "hflip" else 2)
        if name == "transpose":
            return self.transpose_hw(x)
        forward = (name == "rot90") != inverse  # rot270 forward is rot90's inverse
        return self.transpose_hw(self.flip(x, 3)) if forward else self.flip(self.transpose_hw(x), 3)

    def softmax(self, x: str) -> str:
        shifted = self.op("Sub", [x, self.op("ReduceMax", [x, self.const(np.array([1]), "ax")], "max", keepdims=1)], "shift")
        e = self.op("Exp", [shifted], "exp")
        return self.op("Div", [e, self.op("ReduceSum", [e, self.const(np.array([1]), "ax")], "sum", keepdims=1)], "softmax")


def _load_member_graph(path: Path):
    import onnx
    from onnx import inliner, version_converter

    model = onnx.load(str(path))
    if model.functions:
        model = inliner.inline_local_functions(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), FUSED_OPSET)
    if opset != FUSED_OPSET:
        model = version_converter.convert_version(model, FUSED_OPSET)
    return model


def _inline(b: _Builder, graph, prefix: str, call: str, x: str) -> str:
    """Copy ``graph``'s nodes reading ``x``; initializers keep one shared name per model."""
    init_names = {i.name for i in graph.initializer}
    input_name, output_name = graph.input[0].name, graph.output[0].name

    def rename(v: str) -> str:
        if not v:
            return v
        if v == input_name:
            return x
        return f"{prefix}/{v}" if v in init_names else f"{prefix}/{call}/{v}"

    for node in graph.node:
        copy = b.helper.make_node(node.op_type, [rename(i) for i in node.input], [rename(o) for o in node.output],
                                  name=f"{prefix}/{call}/{node.name}", domain=node.domain)
        copy.attribute.extend(node.attribute)
        b.nodes.append(copy)
    return rename(output_name)


def fuse(manifest: Manifest, build_dir: Path, size_hw: tuple[int, int], out: Path) -> Path:
    """Write the fused graph for images of ``size_hw`` to ``out``."""
    import onnx
    from onnx import TensorProto, helper

    _check_fusable(manifest)
    b = _Builder()
    total = sum(m.weight for m in manifest.members)
    weighted: list[str] = []
    shared_inits = {}
    for mi, member in enumerate(manifest.members):
        for k, entry in enumerate(member.models):
            graph = _load_member_graph(build_dir / entry.file).graph
            prefix = f"m{mi}_{k}"
            for init in graph.initializer:
                copy = onnx.TensorProto()
                copy.CopyFrom(init)
                copy.name = f"{prefix}/{init.name}"
                shared_inits[copy.name] = copy
            weighted += _member_views(b, graph, member, prefix, size_hw, member.weight / (member.views * total))
    probs = b.op("Sum", weighted, "vote") if len(weighted) > 1 else weighted[0]
    b.nodes.append(helper.make_node("Identity", [probs], ["probs"], name="fuse/probs"))
    b.nodes.append(helper.make_node("ArgMax", ["probs"], ["labels"], name="fuse/labels", axis=1, keepdims=0))
    h, w = size_hw
    classes = len(manifest.classes)
    graph = helper.make_graph(
        b.nodes, "segensemble_fused",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, h, w])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes, h, w]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, ["batch", h, w])],
        initializer=b.inits + list(shared_inits.values()),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", FUSED_OPSET)], producer_name="segensemble")
    model.ir_version = min(model.ir_version, 10)
    first = manifest.members[0]
    meta = {"fused_hw": json.dumps([h, w]), "classes": str(classes), "class_names": json.dumps(manifest.classes),
            "mean": json.dumps(list(first.mean)), "std": json.dumps(list(first.std)),
            "views": str(sum(m.views for m in manifest.members)), "members": json.dumps([m.name for m in manifest.members])}
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(out)
    return out


def _member_views(b: _Builder, graph, member: MemberEntry, prefix: str, size_hw, coeff: float) -> list[str]:
    outs = []
    for s in member.scales:
        th, tw = scaled_size(member.input_size or size_hw, s)
        x = b.resize("image", (th, tw)) if (th, tw) != tuple(size_hw) else "image"
        ph, pw = padded_size((th, tw), member.stride)
        if (ph, pw) != (th, tw):
            x = b.op("Pad", [x, b.const(np.array([0, 0, 0, 0, 0, 0, ph - th, pw - tw], dtype=np.int64), "pads")], "pad")
        for t in member.tta:
            logits = _inline(b, graph, prefix, b.name(f"s{s:g}_{t}").split("/")[-1], b.tta(x, t, inverse=False))
            p = b.softmax(b.slice_hw(b.tta(logits, t, inverse=True), th, tw))
            if (th, tw) != tuple(size_hw):
                p = b.resize(p, size_hw)
            outs.append(b.op("Mul", [p, b.const(np.array(coeff, dtype=np.float32), "w")], "weighted"))
    return outs


def _check_fusable(manifest: Manifest) -> None:
    first = manifest.members[0]
    for m in manifest.members:
        if (m.mean, m.std) != (first.mean, first.std):
            raise SegEnsembleError(f"cannot fuse: member {m.name} normalizes with mean/std {m.mean}/{m.std}, "
                                   f"{first.name} with {first.mean}/{first.std}; one graph takes one normalized input")


def verify_fused(build_dir: Path, fused: Path, size_hw: tuple[int, int], seed: int = 0) -> dict:
    """Fused graph vs the engine on a random image of ``size_hw``: {max_abs_prob, argmax_agreement}."""
    import onnxruntime as ort

    from segensemble.ensemble.engine import Engine

    engine = Engine.from_build(build_dir)
    image = np.random.default_rng(seed).integers(0, 256, (*size_hw, 3), dtype=np.uint8)
    want = engine.predict([image])[0]
    first = engine.members[0].entry
    x = ((image.astype(np.float32) / 255.0 - np.asarray(first.mean, np.float32)) / np.asarray(first.std, np.float32))
    session = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])
    probs, labels = session.run(None, {"image": x.transpose(2, 0, 1)[None]})
    figures = {"max_abs_prob": float(np.abs(probs[0] - want.probs).max()),
               "argmax_agreement": float((labels[0] == want.labels).mean())}
    if figures["max_abs_prob"] > 1e-4 or figures["argmax_agreement"] < 0.999:
        raise SegEnsembleError(f"{fused}: the fused graph disagrees with the engine: {figures}")
    return figures
