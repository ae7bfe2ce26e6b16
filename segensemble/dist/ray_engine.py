"""``--engine ray``: the same engine in a Ray Data actor pool; results stream back in input order.

Images are a Ray Dataset of (index, path) rows; ``map_batches`` runs ``EnsembleActor`` (one Engine per
actor, sessions built once in its constructor) with ``compute=ray.data.ActorPoolStrategy(size=N)`` (the
current API: ``concurrency=`` is deprecated since Ray 2.60). Order is preserved, so the local writers
(CSV, masks, pseudo-label journal) consume the stream exactly as they consume the local one, with the same
atomic and resume behaviour.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from segensemble.errors import ImageError, SegEnsembleError
from segensemble.images import ImageRef


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the data extra: pandas, pyarrow)
    except ImportError as exc:
        raise SegEnsembleError(f"--engine ray needs Ray Data: pip install 'segensemble[dist]' ({exc})") from None
    return ray


class EnsembleActor:
    """One engine per actor; called on batches of rows {index, path}."""

    def __init__(self, build_dir: str, threads: int = 0, profile: str | None = None):
        from segensemble.ensemble.engine import Engine
        from segensemble.ensemble.sessions import RuntimeOptions

        self.engine = Engine.from_build(build_dir, RuntimeOptions(threads=threads)).with_profile(profile)

    def __call__(self, batch: dict) -> dict:
        from segensemble.images import read_image

        images, errors = [], []
        for path in batch["path"]:
            try:
                images.append(read_image(str(path)))
                errors.append("")
            except ImageError as exc:
                images.append(None)
                errors.append(exc.reason)
        good = [img for img in images if img is not None]
        preds = iter(self.engine.predict(good)) if good else iter(())
        probs = [next(preds).probs if img is not None else np.zeros((0,), np.float32) for img in images]
        return {"index": np.asarray(batch["index"]), "error": np.asarray(errors, dtype=object), "probs": probs}


def ray_stream(build_dir: str | Path, address: str | None = None, actors: int = 2, gpus_per_actor: float = 0.0,
               threads_per_actor: int = 1, profile: str | None = None):
    """A drop-in for ``Engine.stream`` that runs on Ray; ``address=None`` starts or joins a local Ray."""
    ray = _ray()
    if actors < 1:
        raise SegEnsembleError(f"--actors must be >= 1, got {actors}")

    def stream(refs: list[ImageRef], batch_images: int = 1, **_) -> Iterator[tuple[ImageRef, object]]:
        from segensemble.ensemble.engine import Prediction

        if not refs:
            return
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        ds = ray.data.from_items([{"index": i, "path": str(r.path)} for i, r in enumerate(refs)])
        ds = ds.map_batches(
            EnsembleActor, fn_constructor_kwargs={"build_dir": str(build_dir), "threads": threads_per_actor, "profile": profile},
            batch_size=batch_images, compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=gpus_per_actor or None,
            batch_format="numpy",
        )
        for row in ds.iter_rows():
            ref = refs[int(row["index"])]
            if row["error"]:
                yield ref, ImageError(str(ref.path), str(row["error"]))
            else:
                yield ref, Prediction(np.asarray(row["probs"], dtype=np.float32))

    return stream
