"""`ensemble predict`: images to the submission CSV, masks and probabilities."""

from __future__ import annotations

import sys
from pathlib import Path

from segensemble.commands.common import add_dist_flags, add_runtime_flags, image_refs, open_engine
from segensemble.errors import SegEnsembleError


def add(sub) -> None:
    p = sub.add_parser("predict", help="predict a folder (or COCO file) of images into the submission CSV",
                       description="Run the ensemble over every image and write the competition CSV "
                       "(image_id,PredictionString: label map resized to --submission-size with nearest neighbour, "
                       "row-major, space-separated). Outputs are written under temporary names and renamed.")
    p.add_argument("images", type=Path, help="folder of images (the image root when --coco is given)")
    p.add_argument("--coco", type=Path, help="COCO json giving the images and their order (file_name relative to IMAGES)")
    p.add_argument("-o", "--output", type=Path, help="submission CSV to write (default submission.csv unless only masks/probs are asked for)")
    p.add_argument("--save-masks", type=Path, metavar="DIR",
                   help="also write full-size PNG label maps here, named after each image with .png added (x.jpg -> x.jpg.png)")
    p.add_argument("--save-probs", type=Path, metavar="DIR", help="also write per-image probabilities (float16 npz, x.jpg -> x.jpg.npz) here")
    p.add_argument("--submission-size", nargs=2, type=int, default=[256, 256], metavar=("H", "W"), help="CSV mask size (default 256 256)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run after its last written row")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed at the end) instead of stopping")
    add_runtime_flags(p)
    add_dist_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from segensemble.jobs.predict import PredictOptions, predict_to_files

    if not all(1 <= v <= 16384 for v in args.submission_size):
        raise SegEnsembleError(f"--submission-size: H and W must be in 1..16384 (got {args.submission_size[0]} {args.submission_size[1]})")
    csv_path = args.output or (None if (args.save_masks or args.save_probs) else Path("submission.csv"))
    engine = open_engine(args)
    refs = image_refs(args, {"--save-masks": args.save_masks, "--save-probs": args.save_probs})
    options = PredictOptions(csv_path, args.save_masks, args.save_probs, tuple(args.submission_size), args.resume,
                             args.skip_bad, not args.quiet, inputs=(args.coco,) if args.coco else ())
    try:
        s = predict_to_files(engine, refs, options)
    except (SegEnsembleError, KeyboardInterrupt, OSError):  # OSError: e.g. the disk is full
        _say_what_is_kept(csv_path)
        raise
    print(f"predicted {s.predicted} of {s.total} images in {s.seconds:.1f}s ({s.images_per_second:.2f} img/s, "
          f"{engine.describe()})"
          + (f"; {s.resumed} already done" if s.resumed else ""))
    for image_id, reason in s.skipped:
        print(f"skipped {image_id}: {reason}")
    for label, path in (("submission", s.csv), ("masks", args.save_masks), ("probabilities", args.save_probs)):
        if path:
            print(f"{label}: {path}")
    return 0


def _say_what_is_kept(csv_path: Path | None) -> None:
    from segensemble.formats.submission import partial_path

    partial = partial_path(csv_path) if csv_path else None
    if partial and partial.is_file():
        rows = max(0, partial.read_bytes().count(b"\n") - 1)
        print(f"stopped: the {rows} rows written so far are kept in {partial}; rerun with --resume to continue after them",
              file=sys.stderr)
