"""`ensemble evaluate`: IoU of each member and of the ensemble."""

from __future__ import annotations

import json
from pathlib import Path

from segensemble.commands.common import add_runtime_flags, open_engine
from segensemble.formats.table import text_table


def add(sub) -> None:
    p = sub.add_parser("evaluate", help="per-class IoU and mIoU of each member and the ensemble on a labelled set",
                       description="Score every member alone and the ensemble on COCO ground truth: dataset-level mIoU "
                       "(one confusion matrix over all pixels) and the competition's per-image average.")
    p.add_argument("--coco", type=Path, required=True, help="COCO json with the ground truth")
    p.add_argument("--images", type=Path, required=True, help="image root (COCO file_name is relative to it)")
    p.add_argument("--unlabeled", choices=["background", "ignore"], help="unannotated pixels: class 0 or ignored "
                   "(default: background when the plan's first class is a background class)")
    p.add_argument("--json", type=Path, default=Path("evaluation.json"), help="report file (default evaluation.json)")
    add_runtime_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from segensemble.formats.atomic import write_atomic
    from segensemble.jobs.evaluate import EvaluateOptions, evaluate

    engine = open_engine(args)
    report = evaluate(engine, args.coco, args.images, EvaluateOptions(args.unlabeled, args.batch_images, not args.quiet))
    print(evaluation_table(report))
    write_atomic(args.json, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    print(f"report: {args.json}")
    return 0


def evaluation_table(report: dict) -> str:
    """Members and the ensemble as rows, per-class IoU as columns."""
    from segensemble.jobs.evaluate import ENSEMBLE

    rows = [*report["members"].items(), (ENSEMBLE, report["ensemble"])]
    names = list(report["ensemble"]["iou"])
    lines = [["model", "mIoU", "mIoU/img", *[n[:10] for n in names]]]
    for name, r in rows:
        cells = [name, f"{r['miou']:.4f}", f"{r['miou_per_image']:.4f}"]
        lines.append(cells + ["-" if r["iou"][n] is None else f"{r['iou'][n]:.3f}" for n in names])
    return text_table(lines)
