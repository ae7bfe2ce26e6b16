"""Offline predict: stream images through the engine into the submission (CSV layouts or a COCO file), masks
and probabilities, for every task (``formats/submission.py`` has the layouts)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segensemble.errors import ImageError, SegEnsembleError
from segensemble.formats.coco_writer import CocoFileWriter
from segensemble.formats.images import ImageRef
from segensemble.formats.masks import is_ours, mask_files, probs_path, save_masks, save_probs
from segensemble.formats.paths import check_outputs
from segensemble.formats.submission import LAYOUTS, SubmissionWriter, partial_path, resize_nearest
from segensemble.progress import bar_off
from segensemble.runtime.engine import LABELS, MASKS, PROBS, Runner, Want


@dataclass(frozen=True)
class PredictOptions:
    csv: Path | None = None  # the submission file (a CSV layout, or the COCO file of coco-rle)
    masks_dir: Path | None = None
    probs_dir: Path | None = None
    submission_size: tuple[int, int] | None = None  # None: contest-csv's 256 x 256, the image's own size otherwise
    format: str = "contest-csv"  # a CSV layout (formats.submission.LAYOUTS) or coco-rle
    resume: bool = False
    skip_bad: bool = False
    progress: bool = True
    inputs: tuple[Path, ...] = ()  # files the run reads besides the images (a COCO file): never an output


@dataclass
class PredictSummary:
    total: int
    predicted: int = 0
    resumed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    csv: Path | None = None

    @property
    def images_per_second(self) -> float:
        return self.predicted / self.seconds if self.seconds else 0.0


def predict_to_files(engine: Runner, refs: list[ImageRef], options: PredictOptions) -> PredictSummary:
    """Run every image once and write the requested outputs; stops at the first bad image unless skip_bad."""
    summary = PredictSummary(total=len(refs))
    _check_format(engine, options)
    _check_output_paths(refs, options, engine)
    writer = _writer(engine, options)
    todo = _remaining(refs, options, writer, engine)
    summary.resumed = len(refs) - len(todo)
    start = time.perf_counter()
    bar = tqdm(total=len(refs), initial=summary.resumed, unit="img", desc="predict", disable=bar_off(options.progress))
    try:
        want = Want({LABELS, MASKS} | ({PROBS} if options.probs_dir else set()))
        for ref, result in engine.stream(todo, want):
            if isinstance(result, ImageError):
                if not options.skip_bad:
                    raise result
                summary.skipped.append((ref.image_id, result.reason))
            else:
                _write(ref, result, options, writer, engine)
                summary.predicted += 1
            bar.update()
    except BaseException:
        if writer:
            writer.abort()
        raise
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    summary.csv = writer.finish() if writer else None
    return summary


def _check_format(engine: Runner, options: PredictOptions) -> None:
    if options.format == "contest-csv" and engine.fusion.task == "multilabel" and options.csv:
        raise SegEnsembleError("--format contest-csv holds one label per pixel; a multilabel task's classes overlap: "
                               "use --format rle-per-class, kaggle-rle or coco-rle")
    if options.format == "coco-rle" and options.resume:
        raise SegEnsembleError("--resume: a coco-rle file is written whole at the end; rerun without --resume")


def _writer(engine: Runner, options: PredictOptions):
    if not options.csv:
        return None
    if options.format == "coco-rle":
        return CocoFileWriter(options.csv, engine.classes)
    return SubmissionWriter(options.csv, options.resume, LAYOUTS[options.format], len(engine.classes))


def _remaining(refs: list[ImageRef], options: PredictOptions, writer, engine: Runner) -> list[ImageRef]:
    """What a resumed run still has to do: after the CSV's last complete image, or (masks/probs only) what is
    not on disk."""
    if not options.resume:
        return refs
    if writer:
        writer.check_order([r.image_id for r in refs])
        return refs[len(writer.done):]
    return [r for r in refs if not _outputs_exist(r, options, engine)]


def _check_output_paths(refs: list[ImageRef], options: PredictOptions, engine: Runner) -> None:
    """Every output path is computed and checked (``paths.check_outputs``) before any image runs: a bad or
    colliding name stops the run before anything is written."""
    named = [(options.csv, "submission")] if options.csv else []
    if options.csv and options.format in LAYOUTS:
        named.append((partial_path(options.csv), "unfinished submission"))
    outputs = list(named)
    for ref in refs:
        if options.masks_dir:
            outputs += [(p, f"mask of {ref.image_id}") for p in mask_files(options.masks_dir, ref.image_id, ref.path, engine.classes,
                                                                              engine.fusion.task)]
        if options.probs_dir:
            outputs.append((probs_path(options.probs_dir, ref.image_id, ref.path), f"probabilities of {ref.image_id}"))
    user_named = {p for p, _ in named}  # files the user named may be replaced; files named after images only if ours
    check_outputs(outputs, [r.path for r in refs] + list(options.inputs), lambda p: p in user_named or is_ours(p))


def _outputs_exist(ref: ImageRef, options: PredictOptions, engine: Runner) -> bool:
    wanted = [probs_path(options.probs_dir, ref.image_id, ref.path)] if options.probs_dir else []
    if options.masks_dir:
        wanted += mask_files(options.masks_dir, ref.image_id, ref.path, engine.classes, engine.fusion.task)
    return bool(wanted) and all(p.exists() for p in wanted)


def _write(ref: ImageRef, prediction, options: PredictOptions, writer, engine: Runner) -> None:
    classes, task = engine.classes, engine.fusion.task
    if options.masks_dir:
        if options.format == "png" and options.submission_size:  # png as the submission: at its size, like every format
            prediction = replace(prediction, labels=None if prediction.labels is None else resize_nearest(prediction.labels, options.submission_size),
                                 masks=None if prediction.masks is None else
                                 np.stack([resize_nearest(m, options.submission_size) for m in prediction.masks]))
        save_masks(options.masks_dir, ref.image_id, prediction, ref.path, classes, task)
    if options.probs_dir:
        save_probs(options.probs_dir, ref.image_id, prediction.probs, ref.path)
    if isinstance(writer, CocoFileWriter):
        masks = prediction.class_masks(len(classes))
        writer.write(ref.image_id, np.stack([resize_nearest(m.astype(np.uint8), options.submission_size) for m in masks]))
    elif writer:
        per_class = writer.layout.per_class
        decision = prediction.class_masks(len(classes)) if per_class else \
            (prediction.labels if prediction.labels is not None else prediction.masks[0])
        writer.write(writer.layout.rows(ref.image_id, decision, classes, options.submission_size))
