"""``--engine ray``: the ensemble graph in a Ray Data actor pool; results stream back in input order.

Images are a Ray Dataset of (index, path) rows; ``map_batches`` runs ``EnsembleActor`` (one local Engine per
actor, its session built once in the constructor) with ``compute=ray.data.ActorPoolStrategy(size=N)`` (the
current API: ``concurrency=`` is deprecated since Ray 2.60). Order is preserved, so the local writers (CSV,
masks, pseudo-label journal) consume ``RayEngine.stream`` exactly as they consume ``Engine.stream``, with
the same atomic and resume behaviour. The driver reads the manifest only; no model loads there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from segensemble.errors import ImageError, SegEnsembleError
from segensemble.extras import missing_extra
from segensemble.formats.images import ImageRef
from segensemble.graph_io import member_output
from segensemble.manifest import MemberEntry, read_manifest
from segensemble.run_config import RunConfig
from segensemble.task import Fusion
from segensemble.runtime.engine import LABELS, MASKS, MEMBERS, PROBS, Prediction, Want

DECISION = "decision"  # the row's labels (multiclass) or masks (multilabel, binary)


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the data extra: pandas, pyarrow)
    except ImportError as exc:
        raise missing_extra(exc, "--engine ray (Ray Data)") or exc from None
    return ray


class EnsembleActor:
    """One engine per actor; called on batches of rows {index, path}; returns the outputs asked for."""

    def __init__(self, build_dir: str, want: list[str], config: RunConfig, profile: str | None = None):
        from segensemble.runtime.engine import open_engine

        self.engine = open_engine(build_dir, config, profile)
        self.want = Want(want)

    def __call__(self, batch: dict) -> dict:
        images, errors = [], []
        for path in batch["path"]:
            try:
                images.append(self.engine.read(str(path)))
                errors.append("")
            except ImageError as exc:
                images.append(None)
                errors.append(exc.reason)
        good = iter(self.engine.predict([img for img in images if img is not None], self.want))
        preds = [next(good) if img is not None else None for img in images]
        out = {"index": np.asarray(batch["index"]), "error": np.asarray(errors, dtype=object)}
        empty = np.zeros((0,), np.float32)
        if self.want & {LABELS, MASKS}:
            out[DECISION] = [(p.labels if p.labels is not None else p.masks) if p else empty for p in preds]
        if PROBS in self.want:
            out[PROBS] = [p.probs if p else empty for p in preds]
        for m in self.engine.members if MEMBERS in self.want else []:
            out[member_output(m.name)] = [p.members[m.name] if p else empty for p in preds]
        return out


class RayEngine:
    """The Runner protocol on a Ray cluster (``address=None`` starts or joins a local Ray)."""

    def __init__(self, build_dir: str | Path, config: RunConfig = RunConfig(), address: str | None = None, actors: int = 2,
                 gpus_per_actor: float = 0.0, profile: str | None = None):
        """Each actor opens the build under ``config`` with one call in flight (Ray runs the actors side by side) and,
        unless ``config`` says otherwise, one ONNX Runtime thread."""
        if actors < 1:
            raise SegEnsembleError(f"--actors must be >= 1, got {actors}")
        self.build_dir, self.address, self.actors = Path(build_dir), address, actors
        self.gpus_per_actor, self.profile = gpus_per_actor, profile
        self.config = replace(config, calls_in_flight=1, intra_op_threads=config.intra_op_threads or 1)
        self.precision = self.config.precision.value
        self.manifest = read_manifest(build_dir).profile(profile)
        self.manifest.graph_entry(profile)  # the build has this profile's graph

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    @property
    def members(self) -> list[MemberEntry]:
        return self.manifest.members

    @property
    def fusion(self) -> Fusion:
        return self.manifest.fusion

    def describe(self) -> str:
        return f"{sum(m.views for m in self.members)} views per image in one graph on {self.actors} Ray actor(s) ({self.precision})"

    def stream(self, refs: Iterable[ImageRef], want: Want = Want({LABELS})) -> Iterator[tuple[ImageRef, Prediction | ImageError]]:
        refs = list(refs)
        if not refs:
            return
        quiet = logging.getLogger("segensemble").getEffectiveLevel() > logging.INFO  # -v shows Ray's own lines
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=self.address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR if quiet else logging.INFO)
        if quiet:  # Ray Data's start/plan/finish lines would land inside the job's progress bar
            logging.getLogger("ray").setLevel(logging.ERROR)
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        ds = ray.data.from_items([{"index": i, "path": str(r.path)} for i, r in enumerate(refs)])
        ds = ds.map_batches(
            EnsembleActor, fn_constructor_kwargs={"build_dir": str(self.build_dir), "want": sorted(want),
                                                  "config": self.config, "profile": self.profile},
            batch_size=self.config.images_per_call, compute=ray.data.ActorPoolStrategy(size=self.actors), num_gpus=self.gpus_per_actor or None,
            batch_format="numpy",
        )
        for row in ds.iter_rows():
            ref = refs[int(row["index"])]
            if row["error"]:
                yield ref, ImageError(str(ref.path), str(row["error"]))
                continue
            members = {m.name: np.asarray(row[member_output(m.name)]) for m in self.members} if MEMBERS in want else None
            decision = np.asarray(row[DECISION]) if want & {LABELS, MASKS} else None
            sigmoid = self.fusion.sigmoid
            yield ref, Prediction(None if sigmoid else decision, np.asarray(row[PROBS], dtype=np.float32) if PROBS in want else None,
                                  members, decision if sigmoid else None)
