"""Offline predict: stream images through the engine into the submission CSV, masks and probabilities."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from segensemble.errors import ImageError
from segensemble.formats.images import ImageRef
from segensemble.formats.masks import is_ours, mask_path, probs_path, save_mask, save_probs
from segensemble.formats.paths import check_outputs
from segensemble.formats.submission import SubmissionWriter, partial_path, submission_string
from segensemble.runtime.engine import LABELS, PROBS, Runner, Want


@dataclass(frozen=True)
class PredictOptions:
    csv: Path | None = None
    masks_dir: Path | None = None
    probs_dir: Path | None = None
    submission_size: tuple[int, int] = (256, 256)
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
    _check_output_paths(refs, options)
    writer = SubmissionWriter(options.csv, resume=options.resume) if options.csv else None
    todo = _remaining(refs, options, writer)
    summary.resumed = len(refs) - len(todo)
    start = time.perf_counter()
    bar = tqdm(total=len(refs), initial=summary.resumed, unit="img", desc="predict", disable=not options.progress)
    try:
        want = Want({LABELS, PROBS} if options.probs_dir else {LABELS})
        for ref, result in engine.stream(todo, want):
            if isinstance(result, ImageError):
                if not options.skip_bad:
                    raise result
                summary.skipped.append((ref.image_id, result.reason))
            else:
                _write(ref, result, options, writer)
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


def _remaining(refs: list[ImageRef], options: PredictOptions, writer: SubmissionWriter | None) -> list[ImageRef]:
    """What a resumed run still has to do: after the CSV's last row, or (masks/probs only) what is not on disk."""
    if not options.resume:
        return refs
    if writer:
        writer.check_order([r.image_id for r in refs])
        return refs[len(writer.done):]
    return [r for r in refs if not _outputs_exist(r, options)]


def _check_output_paths(refs: list[ImageRef], options: PredictOptions) -> None:
    """Every output path is computed and checked (``paths.check_outputs``) before any image runs: a bad or
    colliding name stops the run before anything is written."""
    named = [(options.csv, "submission"), (partial_path(options.csv), "unfinished submission")] if options.csv else []
    outputs = list(named)
    for ref in refs:
        if options.masks_dir:
            outputs.append((mask_path(options.masks_dir, ref.image_id, ref.path), f"mask of {ref.image_id}"))
        if options.probs_dir:
            outputs.append((probs_path(options.probs_dir, ref.image_id, ref.path), f"probabilities of {ref.image_id}"))
    user_named = {p for p, _ in named}  # files the user named may be replaced; files named after images only if ours
    check_outputs(outputs, [r.path for r in refs] + list(options.inputs), lambda p: p in user_named or is_ours(p))


def _outputs_exist(ref: ImageRef, options: PredictOptions) -> bool:
    wanted = [mask_path(options.masks_dir, ref.image_id, ref.path)] if options.masks_dir else []
    wanted += [probs_path(options.probs_dir, ref.image_id, ref.path)] if options.probs_dir else []
    return bool(wanted) and all(p.exists() for p in wanted)


def _write(ref: ImageRef, prediction, options: PredictOptions, writer: SubmissionWriter | None) -> None:
    labels = prediction.labels
    if options.masks_dir:
        save_mask(options.masks_dir, ref.image_id, labels, ref.path)
    if options.probs_dir:
        save_probs(options.probs_dir, ref.image_id, prediction.probs, ref.path)
    if writer:
        writer.write(ref.image_id, submission_string(labels, options.submission_size))
