"""The runtime: decoded images in, the ensemble graph run once per batch of same-size images, predictions out.

Every job (predict, evaluate, pseudo-label, serve, the Ray actors) runs the build's ``ensemble.onnx`` (or a
profile's graph) through this engine; the vote's maths lives in that graph alone (``export/graph.py``).
Python decodes images ahead of the model in a bounded prefetch, groups consecutive images of one size into
a batch, asks the graph only for the outputs the job needs, and hands results back in input order.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from segensemble import postprocess
from segensemble.cost import Budget, Cost, image_cost
from segensemble.errors import ImageError, SegEnsembleError
from segensemble.formats.images import ImageRef, ReadOptions
from segensemble.graph_io import LABELS, MASK, MASKS, PROBS, decision_output, member_output
from segensemble.manifest import Build, Manifest, MemberEntry
from segensemble.run_config import RunConfig
from segensemble.runtime.regions import Region, region_bytes, run_regions, split, tile_batch
from segensemble.runtime.sessions import GraphSession, RunControl, RuntimeOptions, open_graph
from segensemble.task import Fusion

MEMBERS = "members"  # with LABELS, MASKS and PROBS (graph_io): what a job may ask of the graph
Want = frozenset  # of LABELS, MASKS, PROBS, MEMBERS: what a job needs back from the graph


@dataclass
class Prediction:
    """One image's outputs, those that were asked for: labels (H, W) of a multiclass task, masks (C, H, W)
    uint8 0/1 of a multilabel or binary one (C = 1), probs (C, H, W), {member: (C, H, W)}."""

    labels: np.ndarray | None = None
    probs: np.ndarray | None = None
    members: dict[str, np.ndarray] | None = None
    masks: np.ndarray | None = None

    def class_masks(self, classes: int) -> np.ndarray:
        """(C, H, W) bool, one mask per class, for any task (a label map is split by class)."""
        if self.masks is not None:
            return self.masks.astype(bool)
        if self.labels is None:
            raise ValueError("the prediction holds neither labels nor masks")
        return self.labels[None] == np.arange(classes).reshape(-1, 1, 1)


class Runner(Protocol):
    """What jobs need of an engine; the local engine and the Ray engine both implement it."""

    @property
    def classes(self) -> list[str]: ...

    @property
    def members(self) -> list[MemberEntry]: ...

    @property
    def fusion(self) -> Fusion: ...

    def stream(self, refs: Iterable[ImageRef], want: Want) -> Iterator[tuple[ImageRef, Prediction | ImageError]]: ...

    def describe(self) -> str: ...


class Engine:
    """One ONNX Runtime session over a build's ensemble graph (thread-safe, built once)."""

    def __init__(self, build: Build, options: RuntimeOptions = RuntimeOptions(), images_per_call: int = 1,
                 workers: int = 1, profile: str | None = None, graphs: dict | None = None, budget: Budget = Budget(),
                 reading: ReadOptions = ReadOptions()):
        self.build = build
        self.reading = reading
        self.build_dir = build.dir
        self.budget = budget
        self.base_manifest = build.manifest
        self.manifest = build.manifest.profile(profile)
        self.profile = profile
        self.options = options
        self.images_per_call = max(1, images_per_call)  # same-size images stacked into one graph run
        self.workers = max(1, workers)  # batches in flight in stream()
        self._graphs = graphs if graphs is not None else {}  # profile -> session, shared by with_profile views
        if profile not in self._graphs:
            path = build.graph(profile)
            graph = open_graph(path, options, trt_default_shapes(self.manifest, self.images_per_call))
            _check_classes(graph, self.manifest.classes)
            self._graphs[profile] = graph
        self.graph: GraphSession = self._graphs[profile]

    @classmethod
    def from_build(cls, build_dir: str | Path, options: RuntimeOptions = RuntimeOptions(), images_per_call: int = 1,
                   workers: int = 1, profile: str | None = None, budget: Budget = Budget(),
                   reading: ReadOptions = ReadOptions()) -> Engine:
        if options.trt_cache_dir is None:
            from dataclasses import replace

            options = replace(options, trt_cache_dir=str(Path(build_dir) / "trt-cache"))
        return cls(Build.open(build_dir), options, images_per_call, workers, profile, budget=budget, reading=reading)

    def with_profile(self, name: str | None) -> Engine:
        """The engine of a named profile of this build (its own graph file; sessions opened once)."""
        if name == self.profile:
            return self
        return Engine(self.build, self.options, self.images_per_call, self.workers, name, self._graphs, self.budget, self.reading)

    def without_postprocess(self) -> Engine:
        """This engine returning the graph's decisions as they are (``ensemble tune`` searches from them)."""
        import copy

        raw = copy.copy(self)
        raw.manifest = self.manifest.model_copy(update={"postprocess": None})
        return raw

    def cost(self, image_hw: tuple[int, int], batch: int = 1) -> Cost:
        return image_cost(self.members, image_hw, len(self.classes), batch)

    def _in_parts(self, image_hw: tuple[int, int], batch: int) -> bool:
        """Whether a batch of images of ``image_hw`` runs in parts: the graph is regional and the whole call would
        exceed the memory budget."""
        return self.graph.regional and self.cost(image_hw, batch).memory_mb > self.budget.max_memory_mb

    def tile_batch(self, image_hw: tuple[int, int], batch: int = 1) -> int | None:
        """Tiles per model call for a batch of images of ``image_hw`` (``regions.py``); None: all at once (the
        call fits, or a graph built before ``tile_batch`` existed)."""
        if not self._in_parts(image_hw, batch) or not self.graph.chunked:
            return None
        return tile_batch(self.members, self.budget)

    def regions(self, image_hw: tuple[int, int], batch: int = 1) -> list[Region]:
        """The regions a batch of images of ``image_hw`` runs in: one, unless even with ``tile_batch`` tiles per
        model call the whole image's run exceeds the memory budget."""
        if not self._in_parts(image_hw, batch):
            return [(0, image_hw[0], 0, image_hw[1])]
        return split(self.members, image_hw, len(self.classes), batch, self.budget, self.tile_batch(image_hw, batch))

    def read(self, path: str | Path) -> np.ndarray:
        """An input file decoded under the engine's read options, admitted by its budget from the header."""
        return self.reading.read(path, admit=lambda hw: self.admit(hw, str(path)))

    def admit(self, image_hw: tuple[int, int], source: str) -> None:
        """Refuse (ImageError naming ``source``) an image whose estimated cost exceeds the budget (a regional
        graph's memory is its largest region's)."""
        cost = self.cost(image_hw)
        if self.graph.regional:
            chunk = self.tile_batch(image_hw)
            memory = max(region_bytes(self.members, image_hw, r, len(self.classes), 1, chunk) for r in self.regions(image_hw))
            cost = replace(cost, memory_mb=memory / 2**20)
        reason = cost.over(self.budget)
        if reason:
            raise ImageError(source, f"{image_hw[0]}x{image_hw[1]} {reason}")

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    @property
    def members(self) -> list[MemberEntry]:
        return self.manifest.members

    @property
    def active_providers(self) -> list[str]:
        return list(self.graph.active)

    @property
    def fell_back(self) -> bool:
        return self.graph.fell_back

    @property
    def forward_passes(self) -> int:
        return sum(m.views for m in self.members)

    @property
    def precision(self) -> str:
        return self.graph.precision

    @property
    def runtime(self) -> str:
        return "openvino" if self.precision == "bf16" else "onnxruntime"

    def describe(self) -> str:
        fusion = "" if self.fusion == Fusion() else f"; {self.fusion.describe()}"
        if self.manifest.postprocess:
            fusion += f"; post-processing {self.manifest.postprocess.describe(self.classes)}"
        return f"{self.forward_passes} views per image in one graph on {', '.join(self.active_providers)} ({self.precision}){fusion}"

    def run(self, images: list[np.ndarray], want: Want = Want({LABELS}), control: RunControl | None = None) -> list[Prediction]:
        """One graph run over same-size RGB uint8 images (region by region where they are too large for the
        memory budget in one call and every member is tiled: ``regions.py``)."""
        post = self.manifest.postprocess if want & {LABELS, MASKS} else None
        names = self._names(want | {PROBS} if post else want)
        batch = images[0][None] if len(images) == 1 else np.stack(images)  # one large image is not copied
        hw = batch.shape[1:3]
        if self._in_parts(hw, len(images)):
            regions, chunk = self.regions(hw, len(images)), self.tile_batch(hw, len(images))
            outputs = dict(zip(names, run_regions(self.graph, batch, names, regions, self.members, control, chunk)))
        else:
            outputs = dict(zip(names, self.graph.run(batch, names, control)))
        members = {m.name: outputs[member_output(m.name)] for m in self.members} if MEMBERS in want else None
        masks = outputs.get(MASKS, outputs[MASK][:, None] if MASK in outputs else None)
        if post:  # the plan's post-processing, the same for every job (postprocess.py)
            if LABELS in outputs:
                outputs[LABELS] = np.stack([postprocess.apply(post, p, labels=x) for p, x in zip(outputs[PROBS], outputs[LABELS])])
            else:
                masks = np.stack([postprocess.apply(post, p, masks=x) for p, x in zip(outputs[PROBS], masks)])
        return [Prediction(outputs[LABELS][i] if LABELS in outputs else None, outputs[PROBS][i] if PROBS in want else None,
                           {k: v[i] for k, v in members.items()} if members else None, masks[i] if masks is not None else None)
                for i in range(len(images))]

    def predict(self, images: list[np.ndarray], want: Want = Want({LABELS})) -> list[Prediction]:
        """Predictions for RGB uint8 images of any sizes: one run per group of same-size images."""
        for i, img in enumerate(images):
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise SegEnsembleError(f"image {i}: expected RGB uint8 (H, W, 3), got {img.dtype} {img.shape}")
        results: list[Prediction | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            by_size.setdefault(img.shape[:2], []).append(i)
        for indices in by_size.values():
            for start in range(0, len(indices), self.images_per_call):
                chunk = indices[start:start + self.images_per_call]
                for i, pred in zip(chunk, self.run([images[i] for i in chunk], want)):
                    results[i] = pred
        return results  # type: ignore[return-value]

    @property
    def fusion(self) -> Fusion:
        return self.manifest.fusion

    @property
    def task(self) -> str:
        return self.fusion.task

    def _names(self, want: Want) -> list[str]:
        """Graph outputs for ``want``; LABELS and MASKS both mean "the decision": labels of a multiclass task,
        masks (or a binary task's mask) otherwise."""
        unknown = set(want) - {LABELS, MASKS, PROBS, MEMBERS}
        if unknown:
            raise ValueError(f"unknown outputs {sorted(unknown)}")
        decision = [decision_output(self.task)] if want & {LABELS, MASKS} else []
        return decision + ([PROBS] if PROBS in want else []) + ([member_output(m.name) for m in self.members] if MEMBERS in want else [])

    def stream(self, refs: Iterable[ImageRef], want: Want = Want({LABELS}), prefetch: int = 8,
               reader: Callable[[ImageRef], np.ndarray] | None = None, workers: int | None = None,
               ) -> Iterator[tuple[ImageRef, Prediction | ImageError]]:
        """Predict a stream of images in input order; a bad image yields its ImageError instead.

        Consecutive same-size images are stacked into one graph run, up to the engine's ``images_per_call``.
        Decoding runs ``prefetch`` images ahead in threads, and ``workers`` batches (default: the engine's)
        run at once (the session is thread-safe; pair workers > 1 with fewer ONNX Runtime threads). At most
        ``prefetch`` decoded images plus ``workers`` batches are held, so memory is bounded however many
        images run.
        """
        read = reader or (lambda ref: self.read(ref.path))
        workers = workers or self.workers
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode") as decoders, \
                ThreadPoolExecutor(max_workers=workers, thread_name_prefix="engine") as runners:
            running: deque = deque()  # (refs of a batch, future of its predictions) or (ref, ImageError), in input order
            for refs_, batch in _batches(_window(decoders, read, refs, prefetch), self.images_per_call):
                running.append((refs_, batch if isinstance(batch, ImageError) else runners.submit(self.run, batch, want)))
                while len(running) > workers or (running and isinstance(running[0][1], ImageError)):
                    yield from _settled(running.popleft())
            while running:
                yield from _settled(running.popleft())


def open_engine(build_dir: str | Path, config: RunConfig = RunConfig(), profile: str | None = None, **options) -> Engine:
    """The one way every entry point opens a build: its graph (or a profile's) under ``config``.

    ``options`` are the session settings a RunConfig does not carry (RuntimeOptions fields such as
    ``trt_cache_dir``), for callers that tune the session itself."""
    from dataclasses import replace

    runtime = replace(RuntimeOptions(config.providers, config.threads, precision=config.precision.value, streams=config.calls_in_flight,
                                     io_binding=config.io_binding, trt_shapes=config.trt_shapes), **options)
    return Engine.from_build(build_dir, runtime, images_per_call=config.images_per_call, workers=config.calls_in_flight, profile=profile,
                             budget=config.budget, reading=config.reading)


def _check_classes(graph: GraphSession, classes: list[str]) -> None:
    """The graph's class axis and names must be the manifest's: a build whose files disagree is refused."""
    channels = graph.output_channels(PROBS)
    named = json.loads(graph.metadata.get("classes", "null"))
    if channels != len(classes) or named != classes:
        raise SegEnsembleError(f"{graph.path}: the graph outputs {channels} classes {named} but the manifest lists "
                               f"{len(classes)}: {classes}; rerun `ensemble build`")


def trt_default_shapes(manifest: Manifest, max_batch: int):
    """TensorRT's (N, H, W) min/opt/max for the input, from the plan: opt at the members' input size (or
    512 x 512), max twice that, batches up to ``max_batch``."""
    sizes = [tuple(m.input_size) for m in manifest.members if m.input_size]
    h, w = max(sizes) if sizes else (512, 512)
    return (1, 32, 32), (1, h, w), (max_batch, 2 * h, 2 * w)


def _batches(decoded, batch_images: int):
    """Consecutive decoded images of one size, up to ``batch_images``; a bad image passes through alone."""
    refs: list[ImageRef] = []
    images: list[np.ndarray] = []
    for ref, future in decoded:
        try:
            image = future.result()
        except ImageError as exc:
            if refs:
                yield refs, images
                refs, images = [], []
            yield ref, exc
            continue
        if images and image.shape != images[0].shape:
            yield refs, images
            refs, images = [], []
        refs.append(ref)
        images.append(image)
        if len(refs) >= batch_images:
            yield refs, images
            refs, images = [], []
    if refs:
        yield refs, images


def _settled(item) -> Iterator[tuple[ImageRef, Prediction | ImageError]]:
    refs, result = item
    if isinstance(result, ImageError):
        yield refs, result
    else:
        yield from zip(refs, result.result())


def _window(pool: ThreadPoolExecutor, read, refs: Iterable[ImageRef], size: int) -> Iterator[tuple[ImageRef, Future]]:
    """Submit reads ``size`` ahead and hand them back in order."""
    pending: deque[tuple[ImageRef, Future]] = deque()
    for ref in refs:
        pending.append((ref, pool.submit(read, ref)))
        if len(pending) > size:
            yield pending.popleft()
    yield from pending

