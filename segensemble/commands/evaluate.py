"""`ensemble evaluate`: IoU of each member and of the ensemble."""

from __future__ import annotations

import json
from pathlib import Path

from segensemble.commands.common import add_runtime_flags, open_engine
from segensemble.formats.table import text_table


def add(sub) -> None:
    p = sub.add_parser("evaluate", help="score each member and the ensemble on a labelled set (mIoU; Dice for mask tasks)",
                       description="Score every member alone and the ensemble on ground truth. Multiclass: per-class IoU, "
                       "dataset-level mIoU (one confusion matrix over all pixels) and the competition's per-image average. "
                       "Multilabel and binary: Dice and IoU per class and image (an empty prediction on an empty truth scores 1), "
                       "their means over images and classes (the hand-bone contest's mean Dice), and pooled over the dataset; "
                       "ground truth from COCO (annotations may overlap: each category its own mask) or --masks.")
    truth = p.add_mutually_exclusive_group(required=True)
    truth.add_argument("--coco", type=Path, help="COCO json with the ground truth")
    truth.add_argument("--masks", type=Path, metavar="DIR", help="multilabel/binary: ground-truth mask files named as "
                       "`predict --save-masks` writes them (x.jpg.png; x.jpg.<class>.png per class); images from --images")
    p.add_argument("--images", type=Path, required=True, help="image root (COCO file_name is relative to it; with --masks, every image in it)")
    p.add_argument("--unlabeled", choices=["background", "ignore"], help="unannotated pixels: class 0 or ignored "
                   "(default: background when the plan's first class is a background class)")
    p.add_argument("--json", type=Path, default=Path("evaluation.json"), help="report file (default evaluation.json)")
    add_runtime_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    """With --precision bf16/fp16 the same images are also scored at fp32, and the difference is reported."""
    from dataclasses import replace

    from segensemble.commands.common import run_config
    from segensemble.errors import SegEnsembleError
    from segensemble.formats.atomic import write_atomic
    from segensemble.jobs.evaluate import EvaluateOptions, evaluate, evaluate_mask_files
    from segensemble.run_config import Precision
    from segensemble.runtime.engine import open_engine as open_local

    options = EvaluateOptions(args.unlabeled, not args.quiet)
    engine = open_engine(args)

    def score(runner) -> dict:
        if args.masks:
            if not runner.fusion.sigmoid:
                raise SegEnsembleError("--masks: ground-truth mask files are for multilabel and binary plans; a multiclass plan reads --coco")
            return evaluate_mask_files(runner, args.images, args.masks, options)
        return evaluate(runner, args.coco, args.images, options)

    report = score(engine)
    print(f"{args.precision}: {engine.describe()}")
    print(evaluation_table(report))
    if args.precision != "fp32":
        exact = open_local(engine.build_dir, replace(run_config(args), precision=Precision.FP32), args.profile)
        baseline = score(exact)
        report |= {"precision": args.precision, "fp32": baseline, "delta_vs_fp32": _delta(report, baseline)}
        print(f"\nfp32 on the same images:\n{evaluation_table(baseline)}")
        print(_describe_delta(report["delta_vs_fp32"], args.precision))
    write_atomic(args.json, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    print(f"report: {args.json}")
    return 0


def _delta(report: dict, baseline: dict) -> dict:
    """mIoU (dataset-level and per image) and per-class IoU of the ensemble (mask tasks: mean Dice and Dice
    per class): this precision minus fp32."""
    now, was = report["ensemble"], baseline["ensemble"]
    if "dice" in now:
        members = {name: r["dice"] - baseline["members"][name]["dice"] for name, r in report["members"].items()}
        per_class = {c: now["dice_per_class"][c] - was["dice_per_class"][c] for c in now["dice_per_class"]}
        return {"dice": now["dice"] - was["dice"], "dice_per_class": per_class, "members_dice": members}
    per_class = {c: None if now["iou"][c] is None or was["iou"][c] is None else now["iou"][c] - was["iou"][c] for c in now["iou"]}
    members = {name: r["miou"] - baseline["members"][name]["miou"] for name, r in report["members"].items()}
    return {"miou": now["miou"] - was["miou"], "miou_per_image": now["miou_per_image"] - was["miou_per_image"],
            "iou": per_class, "members_miou": members}


def _describe_delta(delta: dict, precision: str) -> str:
    per_class = delta["dice_per_class"] if "dice" in delta else delta["iou"]
    worst = min(((c, d) for c, d in per_class.items() if d is not None), key=lambda cd: cd[1], default=None)
    if "dice" in delta:
        return f"{precision} - fp32: ensemble mean Dice {delta['dice']:+.4f}" + (f", worst class {worst[0]} {worst[1]:+.4f}" if worst else "")
    text = f"{precision} - fp32: ensemble mIoU {delta['miou']:+.4f}, per-image mIoU {delta['miou_per_image']:+.4f}"
    return text + (f", worst class {worst[0]} {worst[1]:+.4f}" if worst else "")


def evaluation_table(report: dict) -> str:
    """Classes as rows (full names, however many), members and the ensemble as columns, and what n/a means."""
    from segensemble.jobs.evaluate import ENSEMBLE

    columns = [*report["members"].items(), (ENSEMBLE, report["ensemble"])]
    if "dice" in report["ensemble"]:
        return _dice_table(columns)
    lines = [["", *(name for name, _ in columns)],
             ["mIoU", *(f"{r['miou']:.4f}" for _, r in columns)],
             ["mIoU/img", *(f"{r['miou_per_image']:.4f}" for _, r in columns)]]
    for cls in report["ensemble"]["iou"]:
        lines.append([f"  {cls}", *("n/a" if r["iou"][cls] is None else f"{r['iou'][cls]:.3f}" for _, r in columns)])
    return (text_table(lines, rule=True) + "\nIoU per class below mIoU; n/a: the class is in neither the ground truth nor "
            "that model's prediction (undefined, left out of mIoU); 0.000: it is in one of them and they never overlap")


def _dice_table(columns: list) -> str:
    lines = [["", *(name for name, _ in columns)],
             ["mean Dice", *(f"{r['dice']:.4f}" for _, r in columns)],
             ["mean IoU", *(f"{r['iou']:.4f}" for _, r in columns)]]
    for cls in columns[-1][1]["dice_per_class"]:
        lines.append([f"  {cls}", *(f"{r['dice_per_class'][cls]:.3f}" for _, r in columns)])
    return (text_table(lines, rule=True) + "\nDice per class below the means (each the mean over images; an image where a class "
            "is in neither the ground truth nor the prediction scores 1); dataset-pooled figures are in the report file")
