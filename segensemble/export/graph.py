"""The ensemble as one ONNX graph (``ensemble.onnx``): uint8 images in, labels and probabilities out.

Input ``image``: uint8 (N, H, W, 3) RGB as decoded; N, H and W dynamic. For each member m, scale s and TTA
view t, inside the graph: the member's base size (``input_size``, or the image's own H x W) times s, rounded
half up (float64 arithmetic, as Python computes it); bilinear resize with half-pixel centres (cv2
INTER_LINEAR); the member's own normalization; zero-pad bottom/right to the stride; augment; the model;
the vote rule's value of the logits (softmax by default; ``graph_vote``); de-augment; crop. The TTA views
of one model at one scale that keep H x W run as one batched call
(concatenated along N), and those that swap H and W (rot90, rot270, transpose) as a second one, so the
weights of each model are stored once and a GPU sees N x views per call. Views at one resolution are summed
before one resize to H x W.

Outputs (names also in the graph's metadata, key ``outputs``):

- ``labels``  (N, H, W) uint8 class ids (int32 past 256 classes): argmax of ``probs`` (multiclass), or
  ``masks`` (N, C, H, W) uint8 (multilabel) or ``mask`` (N, H, W) uint8 (binary): probs > threshold;
- ``probs``   (N, C, H, W) float32: the vote (by default sum_m w_m P_m / sum_m w_m);
- ``member:<name>`` (N, C, H, W) float32: the member's probabilities from its own views.

ONNX Runtime runs every node whatever outputs are asked for, so the ensemble is computed *from* the member
outputs (one weighted sum) and they cost nothing extra. A profile is its own graph file; ``views=True``
gives a variant whose outputs are every view's probabilities at H x W (``view:<j>``), for ``analyze``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segensemble.errors import SegEnsembleError
from segensemble.export.graph_ops import GraphBuilder
from segensemble.export.graph_tiles import FULL, blend, cut, sliding_sum
from segensemble.export.graph_vote import logits_of, view_value, vote_outputs
from segensemble.graph_io import (
    GRAPH_FORMAT,
    INPUT,
    LABELS,
    MASK,
    MASKS,
    PROBS,
    REGION,
    TILE_BATCH,
    decision_output,
    list_views,
    member_output,
    view_output,
)
from segensemble.manifest import Manifest, MemberEntry
from segensemble.task import Fusion
from segensemble.views import TTA, padded_size, scaled_size

MIN_OPSET = 18  # Split(num_outputs), Reduce*(axes as input), Resize with sizes
EXTERNAL_DATA_BYTES = 1_500_000_000  # past this, weights go to <file>.data (protobuf's 2 GB limit)


@dataclass
class _Model:
    """A member model's graph, inlined once per call under its own names; weights shared by the calls. A model
    exported per view size has one graph per (h, w), their equal weights stored once."""

    graphs: dict  # (h, w) or None -> (graph, {initializer name: name in the ensemble graph})
    prefix: str
    calls: int = 0

    def call(self, b: GraphBuilder, x: str, hw: tuple[int, int] | None = None) -> str:
        self.calls += 1
        graph, names = self.graphs.get(hw) or self.graphs[None]
        source = next(i.name for i in graph.input if i.name not in names)
        where = f"{self.prefix}/call{self.calls}"

        def rename(v: str) -> str:
            if not v:
                return v
            if v == source:
                return x
            return names.get(v) or f"{where}/{v}"

        for node in graph.node:
            copy = b.helper.make_node(node.op_type, [rename(i) for i in node.input], [rename(o) for o in node.output],
                                      name=f"{where}/{node.name}", domain=node.domain)
            copy.attribute.extend(node.attribute)
            b.nodes.append(copy)
        return rename(graph.output[0].name)


class _Member:
    """One member's views: shared preprocessing per size, one batched model call per TTA group."""

    def __init__(self, b: GraphBuilder, entry: MemberEntry, models: list[_Model], image, image_hw: str, region: str, tile_batch: str,
                 fusion: Fusion, rule: str | None = None):
        self.b, self.entry, self.models, self.image, self.image_hw = b, entry, models, image, image_hw
        self.region = region  # int64 [4]: the output rows and columns a tiled member computes (graph_tiles)
        self.tile_batch = tile_batch  # int64 [1]: the most tiles one model call takes
        self.fusion, self.rule = fusion, rule  # rule: the per-view quantity (None: the plan's vote; "mean": probabilities)

    def view_size(self, scale: float) -> tuple[str, bool]:
        """(int64 [h, w] of the view, whether it differs from the image's H x W)."""
        b, entry = self.b, self.entry
        if entry.input_size:
            return b.i64(*scaled_size(tuple(entry.input_size), scale)), True
        if scale == 1.0:
            return self.image_hw, False
        return b.scaled(self.image_hw, scale), True

    def model_hw(self, scale: float, swapped: bool) -> tuple[int, int] | None:
        """The (h, w) the model sees at this scale, where the plan fixes it (input_size or tiles)."""
        entry = self.entry
        if entry.tiles:
            h, w = entry.tiles.size
        elif entry.input_size:
            h, w = padded_size(scaled_size(tuple(entry.input_size), scale), entry.stride)
        else:
            return None
        return (w, h) if swapped else (h, w)

    def _normalize(self, x: str) -> str:
        b, entry = self.b, self.entry
        mean, std = np.asarray(entry.mean, np.float64), np.asarray(entry.std, np.float64)
        return b.op("Add", [b.op("Mul", [x, b.f32((1 / (255 * std)).reshape(1, 3, 1, 1))]), b.f32((-mean / std).reshape(1, 3, 1, 1))], "norm")

    def scale_sums(self, scale: float, views_out: dict | None) -> tuple[str, str, bool]:
        """(sum of this scale's view values, int64 [h, w] of the view, resized?): probabilities, logits or their
        logs, as the vote rule needs (``graph_vote.view_value``); a tiled member's already at the region's size."""
        b, entry = self.b, self.entry
        hw, resized = self.view_size(scale)
        if entry.tiles:  # every view's probabilities (analyze's views graph); the vote's sum is tiled_sum's
            x, grid = cut(b, INPUT, self.image_hw, hw, self.region, scale, entry.tiles, self._normalize)
            terms = []
            for k, t, p in self._views(x, scale):
                terms.append(blend(b, p, grid, entry.tiles))
                views_out[(k, scale, t)] = (terms[-1], hw, False)
            return b.total(terms, "scale_sum"), hw, False
        x = self._normalize(b.resize(self.image(), hw) if resized else self.image())
        if entry.stride > 1:
            x = b.pad_to(x, hw, b.padded(hw, entry.stride))
        terms = []
        for k, t, p in self._views(x, scale):
            terms.append(b.crop(p, hw))
            if views_out is not None:
                views_out[(k, scale, t)] = (terms[-1], hw, resized)
        return b.total(terms, "scale_sum"), hw, resized

    def tiled_sum(self, channels: int) -> str:
        """A tiled member's view values (``channels`` of them) summed over its views and scales, at the region's
        size: every scale's tiles in one Loop over chunks of ``tile_batch`` (graph_tiles.sliding_sum)."""
        b, entry = self.b, self.entry
        cuts = [cut(b, INPUT, self.image_hw, self.view_size(s)[0], self.region, s, entry.tiles, self._normalize) for s in entry.scales]
        sums = sliding_sum(b, cuts, self.tile_batch, channels, entry.tiles,
                           lambda xc: b.total([p for _, _, p in self._views(xc, 1.0)], "tile_sum"))
        return b.total(sums, "member_sum")

    def _views(self, x: str, scale: float):
        """(model index, TTA view, de-augmented view value at x's size) of every view of normalized NCHW ``x``:
        one batched model call per model and TTA group (views that swap H and W form their own group)."""
        b, entry = self.b, self.entry
        groups = [[t for t in entry.tta if TTA[t].swaps_hw == swap] for swap in (False, True)]
        for k, model in enumerate(self.models):
            for group in (g for g in groups if g):
                inputs = [b.tta(x, t, inverse=False) for t in group]
                batch = inputs[0] if len(inputs) == 1 else b.op("Concat", inputs, "views", axis=0)
                logits = logits_of(b, model.call(b, batch, self.model_hw(scale, TTA[group[0]].swaps_hw)), entry.models[k], self.fusion, batch)
                values = view_value(b, logits, self.fusion, self.rule)
                chunks = [values] if len(group) == 1 else b.op("Split", [values], "view", outputs=len(group), axis=0, num_outputs=len(group))
                for t, chunk in zip(group, chunks):
                    yield k, t, b.tta(chunk, t, inverse=True)


def _once(make):
    """``make()``'s result, computed on the first call only (nodes nobody reads are not written)."""
    done: list = []
    return lambda: done[0] if done else done.append(make()) or done[0]


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
    from onnx import TensorProto, helper, numpy_helper

    manifest = manifest.profile(profile)
    b = GraphBuilder()
    weights = _Weights(build_dir, manifest.members)
    image = _once(lambda: b.op("Transpose", [b.op("Cast", [INPUT], "float", to=1)], "nchw", perm=[0, 3, 1, 2]))
    image_hw = b.op("Slice", [b.op("Shape", [INPUT]), b.i64(1), b.i64(3)], "image_hw")
    regional = all(m.tiles for m in manifest.members)  # a region input: the runtime may run a large image part by part
    region = REGION if regional else b.i64(0, FULL, 0, FULL)
    tile_batch = TILE_BATCH if regional else b.i64(FULL)
    fusion = manifest.fusion
    members = [_Member(b, entry, weights.models(mi, entry), image, image_hw, region, tile_batch, fusion, "mean" if views else None)
               for mi, entry in enumerate(manifest.members)]
    classes = len(manifest.classes)
    outputs = _view_outputs(b, members, image_hw) if views else _vote_outputs(b, members, image_hw, fusion, classes)
    spatial = ["batch", classes, "height", "width"]
    types = {LABELS: (TensorProto.UINT8 if classes <= 256 else TensorProto.INT32, ["batch", "height", "width"]),
             MASKS: (TensorProto.UINT8, spatial), MASK: (TensorProto.UINT8, ["batch", "height", "width"])}
    infos = [helper.make_tensor_value_info(name, *types.get(name, (TensorProto.FLOAT, spatial))) for name in outputs]
    inputs = [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, ["batch", "height", "width", 3])]
    defaults = []
    if regional:  # an input with a default (the whole image): callers that do not feed it get the whole image
        inputs.append(helper.make_tensor_value_info(REGION, TensorProto.INT64, [4]))
        defaults.append(numpy_helper.from_array(np.array([0, FULL, 0, FULL], np.int64), REGION))
        inputs.append(helper.make_tensor_value_info(TILE_BATCH, TensorProto.INT64, [1]))
        defaults.append(numpy_helper.from_array(np.array([FULL], np.int64), TILE_BATCH))
    outer = _into_loops(b.nodes, weights.initializers)
    graph = helper.make_graph(b.nodes, "segensemble", inputs, infos, initializer=b.inits + defaults + outer)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", weights.opset)], producer_name="segensemble")
    model.ir_version = min(model.ir_version, 10)
    for key, value in _metadata(manifest, profile, views, cache_key).items():
        model.metadata_props.add(key=key, value=value)
    return _save(model, out)


def _into_loops(nodes: list, initializers: list) -> list:
    """Move each weight that only one Loop's body reads into that body; the others are returned. ONNX Runtime's
    CPU layout optimizer (NCHWc convolutions) only rewrites convolutions whose weights are initializers of their
    own graph, not of an outer scope (seen in its optimized model: no NCHWc node in a body reading outer weights)."""
    readers: dict[str, set] = {}
    for i, node in enumerate(nodes):
        bodies = [a.g for a in node.attribute if a.type == 5]  # GRAPH
        for name in node.input:
            readers.setdefault(name, set()).add(None)
        for body in bodies:
            for inner in body.node:
                for name in inner.input:
                    readers.setdefault(name, set()).add(i)
    outer = []
    for init in initializers:
        where = readers.get(init.name, set())
        if len(where) == 1 and None not in where:
            body = next(a.g for a in nodes[next(iter(where))].attribute if a.type == 5)
            body.initializer.append(init)
        else:
            outer.append(init)
    return outer


class _Weights:
    """The member graphs at one opset; each model's initializers are renamed once and shared by its calls (and,
    by content, by its per-size graphs)."""

    def __init__(self, build_dir: Path, members: Sequence[MemberEntry]):
        import onnx

        files = sorted({f for m in members for e in m.models for f in e.files()})
        self.opset = max(MIN_OPSET, *(_opset(onnx.load(str(build_dir / f), load_external_data=False)) for f in files))
        self.loaded = {f: _load_model(build_dir / f, self.opset) for f in files}
        self.initializers: list = []

    def models(self, mi: int, entry: MemberEntry) -> list[_Model]:
        out = []
        for k, e in enumerate(entry.models):
            prefix, stored = f"m{mi}_{k}", {}  # content digest -> name in the ensemble graph
            graphs = {None: self._graph(e.file, prefix, stored)}
            for sized in e.sizes:
                graphs[tuple(sized.hw)] = self._graph(sized.file, prefix, stored)
            out.append(_Model(graphs, prefix))
        return out

    def _graph(self, file: str, prefix: str, stored: dict) -> tuple:
        import hashlib

        from onnx import TensorProto, numpy_helper

        graph, names = self.loaded[file].graph, {}
        for init in graph.initializer:
            value = numpy_helper.to_array(init)
            digest = hashlib.sha256(f"{value.dtype}{value.shape}".encode() + value.tobytes()).hexdigest()
            if digest not in stored:
                copy = TensorProto()
                copy.CopyFrom(init)
                taken = f"{prefix}/{init.name}" in stored.values()  # the same name, other values, in another size's graph
                copy.name = stored[digest] = f"{prefix}/{init.name}" + (f"#{len(stored)}" if taken else "")
                self.initializers.append(copy)
            names[init.name] = stored[digest]
        return graph, names


def _vote_outputs(b: GraphBuilder, members: list[_Member], image_hw: str, fusion: Fusion, classes: int) -> list[str]:
    """The decision, probs and each member's probabilities (``graph_vote``), from each member's mean view value."""
    values = []
    for member in members:
        if member.entry.tiles:
            total = member.tiled_sum(1 if fusion.task == "binary" else classes)
        else:
            sums = [b.resize(p, image_hw) if resized else p for p, _, resized in (member.scale_sums(s, None) for s in member.entry.scales)]
            total = b.total(sums, "member_sum")
        values.append(b.op("Mul", [total, b.f32(1.0 / member.entry.views)], "member"))
    return vote_outputs(b, values, [m.entry for m in members], fusion, classes)


def _view_outputs(b: GraphBuilder, members: list[_Member], image_hw: str) -> list[str]:
    """Every view's probabilities at H x W, in ``list_views`` order (for analyze)."""
    names = []
    for member in members:
        per_view: dict = {}
        for s in member.entry.scales:
            member.scale_sums(s, per_view)
        entry = member.entry
        for k, s, t in ((k, s, t) for k in range(len(entry.models)) for s in entry.scales for t in entry.tta):
            p, _, resized = per_view[(k, s, t)]
            names.append(view_output(len(names)))
            b.nodes.append(b.helper.make_node("Identity", [b.resize(p, image_hw) if resized else p], [names[-1]], name=f"out/{names[-1]}"))
    return names


def _metadata(manifest: Manifest, profile: str | None, views: bool, cache_key: str) -> dict[str, str]:
    members = manifest.members
    decision = decision_output(manifest.fusion.task)
    outputs: dict = {"views": [view_output(j) for j in range(len(list_views(members)))]} if views else {
        decision: decision, "probs": PROBS, "members": {m.name: member_output(m.name) for m in members}}
    return {
        "segensemble_graph": GRAPH_FORMAT, "cache_key": cache_key, "profile": profile or "",
        "input": json.dumps({"name": INPUT, "dtype": "uint8", "shape": ["batch", "height", "width", 3], "channels": "RGB"}),
        "outputs": json.dumps(outputs), "classes": json.dumps(list(manifest.classes)),
        "fusion": manifest.fusion.model_dump_json(),
        "views": json.dumps([[v.member, v.model, v.scale, v.tta] for v in list_views(members)]),
        "members": json.dumps([{"name": m.name, "weight": m.weight, "class_weights": m.class_weights, "views": m.views} for m in members]),
    }


def external_data(graph: Path) -> list[str]:
    """The external weight files a graph reads (names relative to its folder), from the graph itself."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    return sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})


def _save(model, out: Path) -> Path:
    """Write under a temporary name and rename; weights past protobuf's limit go to ``<out>.<token>.data``.

    The weights file has a name of its own each time, written before the graph that names it is renamed into
    place, so a kill at any moment leaves either the old graph with its old weights or the new with its new;
    stale weights files are removed after the switch. Both get the permissions a plain new file gets."""
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    big = sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
    data = out.with_name(f"{out.name}.{uuid.uuid4().hex[:12]}.data") if big else None
    # no onnx.checker pass: build loads and runs the graph in ONNX Runtime right after, which checks more
    if data is not None:
        onnx.save(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
        _fsync(data)
    else:
        onnx.save(model, str(tmp))
    for path in (tmp, data):
        if path is not None:
            os.chmod(path, _new_file_mode())
    _fsync(tmp)
    tmp.replace(out)
    for stale in out.parent.glob(f"{out.name}.*data"):
        if data is None or stale.name != data.name:
            stale.unlink(missing_ok=True)
    return out


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _new_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
