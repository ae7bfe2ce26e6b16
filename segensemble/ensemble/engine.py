"""The one engine loop: images -> every member's views -> soft vote. Used by predict, evaluate,
pseudo-label and serve alike.

For one image of size H x W, each member m (weight w_m), scale s and TTA view t: resize to the member's
base size (input_size, or H x W) times s; normalize and zero-pad bottom/right to the stride; augment, run,
deaugment, crop; softmax; resize to H x W. P_m is the mean over the member's views (models x scales x TTA);
P = sum(w_m P_m) / sum(w_m). Views that share an input shape run as one batched ONNX Runtime call, across
images too, and images are decoded ahead of the model in a bounded prefetch.
"""

from __future__ import annotations

import copy
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segensemble.ensemble.sessions import ModelSession, RuntimeOptions, open_session
from segensemble.ensemble.views import TTA, prepare_input, scaled_size
from segensemble.ensemble.vote import Vote, softmax
from segensemble.errors import ImageError, SegEnsembleError
from segensemble.images import ImageRef, read_image
from segensemble.manifest import Manifest, MemberEntry, read_manifest


@dataclass
class Prediction:
    """Ensemble probabilities (C, H, W) of one image, and each member's when asked for."""

    probs: np.ndarray
    members: dict[str, np.ndarray] | None = None

    @property
    def labels(self) -> np.ndarray:
        return self.probs.argmax(axis=0).astype(np.uint8 if self.probs.shape[0] <= 256 else np.int32)


@dataclass
class MemberRuntime:
    entry: MemberEntry
    sessions: list[ModelSession]
    mean: np.ndarray
    std: np.ndarray


@dataclass(frozen=True)
class ViewKey:
    """Which view produced a probability map: image index in the call, model index, scale, TTA name."""

    image: int
    model: int
    scale: float
    tta: str


@dataclass
class _Job:
    image: int
    tta: str
    size_hw: tuple[int, int]
    array: np.ndarray  # augmented (3, h', w')


class Engine:
    """Holds one ONNX Runtime session per model file; sessions are thread-safe and built once."""

    def __init__(self, manifest: Manifest, build_dir: Path, options: RuntimeOptions = RuntimeOptions(), max_batch: int = 8,
                 workers: int = 1, sessions: bool = True):
        self.manifest = manifest
        self.build_dir = Path(build_dir)
        self.max_batch = max(1, max_batch)
        self.workers = max(1, workers)  # batches in flight in stream()
        # sessions=False: the manifest only, for a driver whose models run elsewhere (Ray actors)
        self.members = [
            MemberRuntime(
                m,
                [open_session(self.build_dir / e.file, options) for e in m.models] if sessions else [],
                np.asarray(m.mean, dtype=np.float32),
                np.asarray(m.std, dtype=np.float32),
            )
            for m in manifest.members
        ]

    def with_profile(self, name: str | None) -> Engine:
        """The same sessions, restricted to a named profile of the build (None: this engine)."""
        if name is None:
            return self
        manifest = self.manifest.profile(name)
        by_name = {m.entry.name: m for m in self.members}
        view = copy.copy(self)
        view.manifest = manifest
        view.members = [MemberRuntime(e, by_name[e.name].sessions, by_name[e.name].mean, by_name[e.name].std) for e in manifest.members]
        return view

    @classmethod
    def from_build(cls, build_dir: str | Path, options: RuntimeOptions = RuntimeOptions(), max_batch: int = 8,
                   workers: int = 1, sessions: bool = True) -> Engine:
        return cls(read_manifest(build_dir), Path(build_dir), options, max_batch, workers, sessions)

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    @property
    def active_providers(self) -> list[str]:
        return sorted({p for m in self.members for s in m.sessions for p in s.active})

    @property
    def fell_back(self) -> bool:
        return any(s.fell_back for m in self.members for s in m.sessions)

    @property
    def forward_passes(self) -> int:
        return sum(m.entry.views for m in self.members)

    def predict(self, images: list[np.ndarray], per_member: bool = False) -> list[Prediction]:
        """Ensemble probabilities for RGB uint8 images (any sizes), one batched pass per view shape."""
        for i, img in enumerate(images):
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise SegEnsembleError(f"image {i}: expected RGB uint8 (H, W, 3), got {img.dtype} {img.shape}")
        sizes = [img.shape[:2] for img in images]
        ensemble = [Vote(hw) for hw in sizes]
        member_probs: dict[str, list[np.ndarray]] = {}
        for member in self.members:
            votes = [Vote(hw) for hw in sizes] if per_member else ensemble
            # every view of a member counts equally; with per-member votes w_m is applied to P_m below
            view_weight = (1.0 if per_member else member.entry.weight) / member.entry.views
            self.run_views(member, images, lambda view, p, votes=votes, w=view_weight: votes[view.image].add(p, w))
            if per_member:
                member_probs[member.entry.name] = [v.result() for v in votes]
                for i, probs in enumerate(member_probs[member.entry.name]):
                    ensemble[i].add(probs, member.entry.weight)
        return [
            Prediction(ensemble[i].result(), {k: v[i] for k, v in member_probs.items()} if per_member else None)
            for i in range(len(images))
        ]

    def run_views(self, member: MemberRuntime, images: list[np.ndarray], sink: Callable[[ViewKey, np.ndarray], None]) -> None:
        """Run every view of ``member`` over ``images``; ``sink(view, probs)`` receives each view's softmaxed,
        deaugmented, cropped (C, h, w) probabilities at the view's own resolution."""
        entry = member.entry
        for scale in entry.scales:
            jobs = []
            for i, img in enumerate(images):
                size = scaled_size(entry.input_size or img.shape[:2], scale)
                x = prepare_input(img, size, member.mean, member.std, entry.stride)
                jobs.extend(_Job(i, t, size, TTA[t].augment(x)) for t in entry.tta)
            for k, session in enumerate(member.sessions):
                self._run_jobs(session, jobs, lambda job, p, k=k, s=scale: sink(ViewKey(job.image, k, s, job.tta), p))

    def _run_jobs(self, session: ModelSession, jobs: list[_Job], sink) -> None:
        by_shape: dict[tuple, list[_Job]] = defaultdict(list)
        for job in jobs:
            by_shape[job.array.shape].append(job)
        for group in by_shape.values():
            for start in range(0, len(group), self.max_batch):
                chunk = group[start : start + self.max_batch]
                probs = softmax(session.run(np.stack([j.array for j in chunk])))
                for job, p in zip(chunk, probs):
                    h, w = job.size_hw
                    sink(job, TTA[job.tta].deaugment(p)[:, :h, :w])

    def stream(
        self,
        refs: Iterable[ImageRef],
        batch_images: int = 1,
        prefetch: int = 8,
        per_member: bool = False,
        reader: Callable[[ImageRef], np.ndarray] | None = None,
        workers: int | None = None,
    ) -> Iterator[tuple[ImageRef, Prediction | ImageError]]:
        """Predict a stream of images in input order; a bad image yields its ImageError instead.

        Decoding runs ``prefetch`` images ahead in threads, and ``workers`` batches (default: the engine's)
        run at once (sessions are thread-safe; pair workers > 1 with fewer ONNX Runtime threads). At most ``prefetch`` decoded
        images plus ``workers`` batches are held, so memory is bounded however many images run.
        """
        read = reader or (lambda ref: read_image(ref.path))
        workers = workers or self.workers
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode") as decoders, \
                ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="engine") as runners:
            running: deque = deque()  # (refs of a batch, future of its predictions) or (ref, ImageError), in input order
            for item in self._batches(_window(decoders, read, refs, prefetch), batch_images):
                if isinstance(item[1], ImageError):
                    running.append(item)
                else:
                    running.append((item[0], runners.submit(self.predict, item[1], per_member)))
                while len(running) > max(1, workers) or (running and isinstance(running[0][1], ImageError)):
                    yield from _settled(running.popleft())
            while running:
                yield from _settled(running.popleft())

    @staticmethod
    def _batches(decoded, batch_images: int):
        """Group decoded images into batches; a bad image ends the batch and passes through on its own."""
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
