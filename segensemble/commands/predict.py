"""`ensemble predict`: images to the submission CSV, masks and probabilities."""

from __future__ import annotations

import sys
from pathlib import Path

from segensemble.commands.common import add_dist_flags, add_runtime_flags, image_refs, open_engine
from segensemble.errors import SegEnsembleError
from segensemble.formats.submission import FORMATS


def add(sub) -> None:
    p = sub.add_parser("predict", help="predict a folder (or COCO file) of images into the submission file",
                       description="Run the ensemble over every image and write the submission in --format: contest-csv "
                       "(image_id,PredictionString: the label map resized to --submission-size, default 256 256, with nearest "
                       "neighbour, row-major, space-separated), rle-per-class (image_name,class,rle: row-major 1-indexed runs), "
                       "kaggle-rle (ImageId_ClassId,EncodedPixels: column-major runs, ClassId 1-based), coco-rle (a COCO file, "
                       "one RLE annotation per class present) or png (mask files in the folder -o names). Outputs are written "
                       "under temporary names and renamed.")
    p.add_argument("images", type=Path, help="folder of images (the image root when --coco is given)")
    p.add_argument("--coco", type=Path, help="COCO json giving the images and their order (file_name relative to IMAGES)")
    p.add_argument("-o", "--output", type=Path, help="submission file to write (default submission.csv, submission.json for coco-rle; "
                   "none when only masks/probs are asked for); with --format png, the masks folder")
    p.add_argument("--format", choices=FORMATS, default=None, help="submission format (default: contest-csv for multiclass, "
                   "rle-per-class for multilabel and binary plans)")
    p.add_argument("--save-masks", type=Path, metavar="DIR",
                   help="also write full-size PNG masks here, named after each image with .png added (x.jpg -> x.jpg.png: the "
                   "label map, or a binary task's 0/1 mask; a multilabel task writes one 0/1 PNG per class, x.jpg.<class>.png)")
    p.add_argument("--save-probs", type=Path, metavar="DIR", help="also write per-image probabilities (float16 npz, x.jpg -> x.jpg.npz) here")
    p.add_argument("--submission-size", nargs=2, type=int, default=None, metavar=("H", "W"),
                   help="resize masks to H x W for the submission, nearest neighbour (default: 256 256 for contest-csv, the "
                   "image's own size for the other formats)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run after its last written row")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed at the end) instead of stopping")
    add_runtime_flags(p)
    add_dist_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from segensemble.jobs.predict import PredictOptions, predict_to_files

    size = args.submission_size
    if size is not None and not all(1 <= v <= 16384 for v in size):
        raise SegEnsembleError(f"--submission-size: H and W must be in 1..16384 (got {size[0]} {size[1]})")
    engine = open_engine(args)
    fmt = args.format or ("contest-csv" if engine.fusion.task == "multiclass" else "rle-per-class")
    masks_dir = args.save_masks
    if fmt == "png":
        if args.output and args.save_masks:
            raise SegEnsembleError("--format png writes the masks into the -o folder; drop --save-masks (or use another --format)")
        masks_dir, csv_path = args.output or args.save_masks or Path("masks"), None  # the folder named, whichever flag names it
    else:
        default = Path("submission.json" if fmt == "coco-rle" else "submission.csv")
        csv_path = args.output or (None if (args.save_masks or args.save_probs) else default)
    refs = image_refs(args, {"--save-masks": masks_dir, "--save-probs": args.save_probs})
    options = PredictOptions(csv_path, masks_dir, args.save_probs, tuple(size) if size else None, fmt, args.resume,
                             args.skip_bad, not args.quiet, inputs=(args.coco,) if args.coco else ())
    try:
        s = predict_to_files(engine, refs, options)
    except (SegEnsembleError, KeyboardInterrupt, OSError) as exc:  # OSError: e.g. the disk is full
        _say_what_is_kept(csv_path, exc)
        raise
    print(f"predicted {s.predicted} of {s.total} images in {s.seconds:.1f}s ({s.images_per_second:.2f} img/s, "
          f"{engine.describe()})"
          + (f"; {s.resumed} already done" if s.resumed else ""))
    for image_id, reason in s.skipped:
        print(f"skipped {image_id}: {reason}")
    for label, path in ((f"submission ({fmt})", s.csv), ("masks", masks_dir), ("probabilities", args.save_probs)):
        if path:
            print(f"{label}: {path}")
    return 0


def _say_what_is_kept(csv_path: Path | None, exc: BaseException) -> None:
    """Where the rows written so far are, and how to go on: a bad image stops a rerun the same way, so it
    needs --skip-bad (or the limit raised) as well as --resume."""
    from segensemble.errors import ImageError
    from segensemble.formats.submission import partial_path

    partial = partial_path(csv_path) if csv_path else None
    if partial and partial.is_file():
        rows = max(0, partial.read_bytes().count(b"\n") - 1)
        how = ("rerun with --resume --skip-bad to continue after them and skip that image (or fix it, or raise the limit named "
               "above)") if isinstance(exc, ImageError) else "rerun with --resume to continue after them"
        print(f"stopped: the {rows} rows written so far are kept in {partial}; {how}", file=sys.stderr)
