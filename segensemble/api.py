"""The Python front door: open a build and predict numpy images or files in one call each.

    >>> import segensemble as se
    >>> ens = se.open("build/")                          # doctest: +SKIP
    >>> out = ens.predict("test/0001.jpg")               # doctest: +SKIP
    >>> out.labels.shape, ens.classes[out.labels.max()]  # doctest: +SKIP

The answer is the one ``ensemble predict`` writes and ``POST /segment`` serves, pixel for pixel: the same
graph through the same engine, with images decoded by the same function (docs/python.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segensemble.errors import ImageError, SegEnsembleError
from segensemble.formats.images import ImageRef
from segensemble.run_config import RunConfig
from segensemble.runtime.engine import LABELS, MASKS, MEMBERS, PROBS, Engine, Prediction, Want, open_engine

if TYPE_CHECKING:
    from segensemble.export.build import BuildResult
    from segensemble.plan import Plan

Image = np.ndarray | str | Path  # RGB uint8 (H, W, 3), or a path to an image file


class Ensemble:
    """A build opened for prediction: its graph (or a profile's) in one ONNX Runtime session, thread-safe."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @property
    def classes(self) -> list[str]:
        return self.engine.classes

    @property
    def members(self) -> list[str]:
        return [m.name for m in self.engine.members]

    @property
    def profiles(self) -> list[str]:
        return sorted(self.engine.base_manifest.profiles)

    def profile(self, name: str | None) -> Ensemble:
        """The same build run as a lighter profile of its plan (None: the whole ensemble); sessions open once."""
        return Ensemble(self.engine.with_profile(name))

    def predict(self, images: Image | Iterable[Image], *, probs: bool = False, members: bool = False):
        """Labels (H, W) of one image (a multilabel or binary plan: ``.masks`` (C, H, W) 0/1 instead), a list of
        them for a list, or an iterator streaming them for any other iterable (a generator of paths is decoded
        ahead of the model, in bounded memory).

        ``probs=True`` adds ``.probs`` (C, H, W), the vote; ``members=True`` adds ``.members``
        ({name: (C, H, W)}), each member's own probabilities."""
        want = Want({LABELS, MASKS} | ({PROBS} if probs else set()) | ({MEMBERS} if members else set()))
        if isinstance(images, (np.ndarray, str, Path)):
            return self._predict_list([images], want)[0]
        if isinstance(images, (list, tuple)):
            return self._predict_list(list(images), want)
        return self._stream(images, want)

    def _predict_list(self, images: list[Image], want: Want) -> list[Prediction]:
        arrays = [self._decode(image, i) for i, image in enumerate(images)]
        return self.engine.predict(arrays, want)

    def _stream(self, images: Iterable[Image], want: Want) -> Iterator[Prediction]:
        """The engine's own stream: files decoded ahead of the model, ``calls_in_flight`` runs at once."""
        arrays: dict[str, np.ndarray] = {}  # arrays handed in, until their turn to be read

        def refs() -> Iterator[ImageRef]:
            for i, image in enumerate(images):
                if isinstance(image, np.ndarray):
                    key = f"\x00array {i}"  # no file name holds a NUL byte
                    arrays[key] = image
                    yield ImageRef(key, Path(f"image {i}"))
                else:
                    yield ImageRef(str(image), Path(image))

        def read(ref: ImageRef) -> np.ndarray:
            if ref.image_id in arrays:
                return self._decode(arrays.pop(ref.image_id), ref.image_id.split()[-1])
            return self._decode(ref.path, 0)

        for _, result in self.engine.stream(refs(), want, reader=read):
            if isinstance(result, ImageError):
                raise result
            yield result

    def _decode(self, image: Image, index: int | str) -> np.ndarray:
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise SegEnsembleError(f"image {index}: expected RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
            self.engine.admit(image.shape[:2], f"image {index}")
            return image
        return self.engine.read(image)

    def __repr__(self) -> str:
        return f"<Ensemble {len(self.members)} members, {len(self.classes)} classes: {self.engine.describe()}>"


def open(build: str | Path, config: RunConfig | None = None, profile: str | None = None) -> Ensemble:
    """A build directory opened under ``config`` (default: fp32, best providers, one call in flight)."""
    return Ensemble(open_engine(build, config or RunConfig(), profile))


def build(plan: str | Path | dict | Plan, out: str | Path, *, quiet: bool = True) -> BuildResult:
    """Export, verify and write a plan's build into ``out`` (unchanged exports are reused). ``plan`` may be a
    plan.yaml path, the plan as a dict (relative paths then resolve against the working directory) or a Plan."""
    from segensemble.export.build import build as run_build
    from segensemble.plan import Plan, load_plan, parse_plan

    if isinstance(plan, dict):
        plan = parse_plan(plan, base_dir=Path.cwd())
    elif not isinstance(plan, Plan):
        plan = load_plan(plan)
    return run_build(plan, out, quiet=quiet)
