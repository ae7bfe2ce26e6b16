"""`ensemble pseudo-label` (also the `pseudo-label` script): confidence-filtered pseudo-labels."""

from __future__ import annotations

from pathlib import Path

from segensemble.commands.common import add_dist_flags, add_runtime_flags, image_refs, open_engine
from segensemble.errors import SegEnsembleError


def _background(text: str) -> int | None | str:
    if text.lower() in ("none", "auto"):
        return text.lower() if text.lower() == "auto" else None
    try:
        return int(text)
    except ValueError:
        raise SegEnsembleError(f"--background: expected a class id or none, got {text!r}") from None


def add(sub) -> None:
    p = sub.add_parser("pseudo-label", help="confidence-filtered pseudo-labels for unlabelled images",
                       description="Run the ensemble over unlabelled images and keep those it is sure of. Image-level rule "
                       "(default): among non-background pixels count those whose max probability is <= --min-prob; drop the "
                       "image if that count is more than --max-uncertain of the non-background pixels, else keep its whole "
                       "label map. Writes a COCO file of kept images (one RLE per class per image), optionally merged into a "
                       "training set, PNG label maps and a per-image report.")
    p.add_argument("images", type=Path, help="folder of unlabelled images (the image root when --coco is given)")
    p.add_argument("--coco", type=Path, help="COCO json listing the images (file_name relative to IMAGES)")
    p.add_argument("-o", "--output", type=Path, default=Path("pseudo.json"), help="COCO file of kept images (default pseudo.json)")
    p.add_argument("--min-prob", type=float, default=0.8, help="a pixel is uncertain when its max probability is <= this (default 0.8)")
    p.add_argument("--max-uncertain", type=float, default=0.1, help="drop an image when more than this share of its "
                   "non-background pixels is uncertain (default 0.1; a share equal to it is kept)")
    p.add_argument("--background", default="auto", help="background class id, none when the dataset has none, or auto "
                   "(default): class 0 when its name says background (background, bg, ...), as evaluate decides, else none")
    p.add_argument("--keep-empty", action="store_true", help="keep images with no non-background pixel (as all background)")
    p.add_argument("--ignore-uncertain", action="store_true", help="pixel-level option: in kept images set uncertain pixels "
                   "to --ignore-index (in the PNG masks; COCO cannot express ignore, so they are left unannotated there)")
    p.add_argument("--ignore-index", type=int, default=255, help="label for uncertain pixels with --ignore-uncertain (default 255)")
    p.add_argument("--merge", type=Path, metavar="TRAIN_JSON", help="also write TRAIN_JSON + the pseudo-labels: ids made unique, "
                   "file_names rebased onto one image root (see --merge-root)")
    p.add_argument("--merged-output", type=Path, help="where the merged file goes (default: <output>.merged.json)")
    p.add_argument("--merge-root", type=Path, metavar="DIR", help="the folder TRAIN_JSON's file_names are relative to (default: "
                   "its folder, or the folder named after it, whichever holds all its images). The merged file's names are "
                   "rebased onto one root, printed at the end: this one if IMAGES lies under it, else the folder holding both")
    p.add_argument("--file-prefix", default="", help="prepended to file_name in the pseudo COCO file (-o) only; the merged "
                   "file's names are rebased by themselves")
    p.add_argument("--save-masks", type=Path, metavar="DIR", help="write kept label maps as PNG here (x.jpg -> x.jpg.png)")
    p.add_argument("--report", type=Path, default=None, help="per-image report CSV (default: <output>.report.csv)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of stopping")
    add_runtime_flags(p)
    add_dist_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from dataclasses import replace

    from segensemble.jobs.pseudo_label import PseudoOptions, default_report, pseudo_label, resolve_background
    from segensemble.jobs.pseudo_rule import PseudoRule

    background = _background(args.background)
    rule = PseudoRule(args.min_prob, args.max_uncertain, None if background == "auto" else background, args.keep_empty,
                      args.ignore_uncertain, args.ignore_index)
    _check(rule, 10**6)  # range checks before any model loads; the class-id check runs once classes are known
    engine = open_engine(args)
    classes = engine.classes
    _check(replace(rule, background=None if background in ("auto", None) else background), len(classes))
    value, said = resolve_background(background, classes)
    rule = replace(rule, background=value)
    options = PseudoOptions(
        output=args.output, rule=rule, merge_with=args.merge, merged_output=args.merged_output, merge_root=args.merge_root,
        images_root=args.images, masks_dir=args.save_masks,
        report=args.report or default_report(args.output), file_prefix=args.file_prefix,
        resume=args.resume, skip_bad=args.skip_bad, progress=not args.quiet,
        inputs=(args.coco,) if args.coco else (),
    )
    summary = pseudo_label(engine, image_refs(args, {"--save-masks": args.save_masks}), options)
    summary.background = "" if engine.fusion.sigmoid else said
    print(summary.describe())
    for image_id, reason in summary.skipped:
        print(f"skipped {image_id}: {reason}")
    for path in summary.outputs:
        print(f"wrote {path}")
    if summary.merged_root is not None:
        print(f"the merged file's file_names are relative to {summary.merged_root}")
    return 0


def _check(rule, classes: int) -> None:
    """The rule's range checks, worded as this command's flags."""
    from segensemble.errors import SegEnsembleError
    from segensemble.jobs.pseudo_rule import RuleError

    try:
        rule.validate(classes)
    except RuleError as exc:
        raise SegEnsembleError(f"--{exc.field.replace('_', '-')} {exc.detail}") from None
