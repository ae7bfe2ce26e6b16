"""`ensemble check-submission`: a submission file validated before it is uploaded (exit 0 valid, 1 not, 2 usage)."""

from __future__ import annotations

from pathlib import Path

from segensemble.formats.submission import LAYOUTS


def add(sub) -> None:
    p = sub.add_parser("check-submission", help="validate a submission file before uploading it",
                       description="Check a submission against the images and the build's classes as a scorer would: the "
                       "header, every image once per class (once for contest-csv), runs numeric, 1-indexed, sorted, apart and "
                       "inside the image (values class ids for contest-csv). Prints each problem with its line number (the header "
                       "is line 1). Exit status 0: valid; 1: problems found; 2: bad usage.")
    p.add_argument("file", type=Path, help="the submission CSV")
    p.add_argument("--format", choices=list(LAYOUTS), required=True, help="the file's layout (see `ensemble predict --help`)")
    p.add_argument("--images", type=Path, required=True, help="the folder of images the submission covers")
    p.add_argument("--build", type=Path, required=True, help="the build directory (its classes)")
    p.add_argument("--submission-size", nargs=2, type=int, metavar=("H", "W"),
                   help="the masks' size if predict was given one (default: 256 256 for contest-csv, each image's own size otherwise)")
    p.set_defaults(func=run)


def run(args) -> int:
    from segensemble.formats.images import list_images
    from segensemble.jobs.check_submission import check_submission
    from segensemble.manifest import read_manifest

    classes = read_manifest(args.build).classes
    refs = list_images(args.images)
    report = check_submission(args.file, args.format, refs, classes, tuple(args.submission_size) if args.submission_size else None)
    for problem in report.problems:
        print(f"{args.file}: {problem}")
    if report.valid:
        print(f"{args.file}: valid {args.format}: {report.rows} rows for {len(refs)} images and {len(classes)} classes")
        return 0
    print(f"{args.file}: {len(report.problems)} problem(s) in {report.rows} rows")
    return 1
