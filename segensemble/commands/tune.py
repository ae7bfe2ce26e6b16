"""`ensemble tune`: post-processing chosen on labelled validation images, confirmed on held-out ones."""

from __future__ import annotations

from pathlib import Path

from segensemble.commands.common import add_budget_flags, add_precision_flags


def add(sub) -> None:
    p = sub.add_parser("tune", help="choose post-processing on labelled images; keep what held-out images confirm",
                       description="Run the ensemble once over a labelled validation set, split the images (--holdout of them "
                       "held out), choose per class fill_holes and min_area (and for multilabel/binary plans the presence gate, "
                       "the SIIM triplet) on the selection part, and keep each change only where the 95%% bootstrap interval of "
                       "its per-image gain on the held-out part lies above zero. Writes OUTPUT/plan.tuned.yaml (the plan with "
                       "its postprocess section), OUTPUT/tune.json, OUTPUT/tune.md and before/after pictures.")
    p.add_argument("plan", type=Path, help="plan.yaml (built into build/ beside it unless --build is given)")
    p.add_argument("--coco", type=Path, required=True, help="COCO json with the validation ground truth")
    p.add_argument("--images", type=Path, required=True, help="image root (COCO file_name is relative to it)")
    p.add_argument("-o", "--output", type=Path, default=Path("tune"), help="output folder (default tune/)")
    p.add_argument("--build", type=Path, help="an existing build of this plan")
    p.add_argument("--holdout", type=float, default=0.5, help="share of images held out to confirm the choices (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the bootstrap (default 0)")
    p.add_argument("--unlabeled", choices=["background", "ignore"], help="unannotated pixels (default: from the plan's first class)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_budget_flags(p)
    add_precision_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from segensemble.commands.common import build_or_given, run_config
    from segensemble.errors import SegEnsembleError
    from segensemble.formats.atomic import write_atomic
    from segensemble.jobs.analyze.selection import write_tuned_plan
    from segensemble.jobs.tune import collect, pictures, report, tune
    from segensemble.plan import load_plan
    from segensemble.runtime.engine import open_engine

    if not 0 < args.holdout < 1:
        raise SegEnsembleError(f"--holdout must be in (0, 1), got {args.holdout}")
    plan = load_plan(args.plan)
    engine = open_engine(build_or_given(args.plan, args.build, args.quiet), run_config(args))
    samples = collect(engine, args.coco, args.images, args.unlabeled, not args.quiet)
    try:
        result = tune(samples, engine.classes, engine.task, args.holdout, args.seed, not args.quiet)
    except ValueError as exc:
        raise SegEnsembleError(f"{args.coco}: {exc}") from None
    args.output.mkdir(parents=True, exist_ok=True)
    summary = report(result, engine.classes, engine.task)
    try:
        summary["pictures"] = pictures(samples, result, engine.classes, args.output)
    except ImportError:
        summary["pictures"] = []
    plan_path = write_tuned_plan(plan, [m.weight for m in plan.members], args.output, postprocess=summary["chosen"],
                                 by="ensemble tune")
    write_atomic(args.output / "tune.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    write_atomic(args.output / "tune.md", lambda tmp: tmp.write_text(markdown(summary)))
    print(markdown(summary))
    print(f"tuned plan: {plan_path}")
    return 0


def markdown(summary: dict) -> str:
    lines = [f"# ensemble tune: post-processing ({summary['metric']})", "",
             f"{summary['selection_images']} images to choose on, {summary['heldout_images']} held out to confirm; a change is kept "
             "when the 95% bootstrap interval of its mean held-out gain per image lies above zero.", "",
             "| class | step | value | gain on selection | held-out gain [95% interval] | kept |", "| --- | --- | --- | --- | --- | --- |"]
    for c in summary["changes"]:
        lo, hi = c["interval"]
        lines.append(f"| {c['class']} | {c['step']} | {c['value']} | {c['selection_gain']:+.4f} | {c['heldout_gain']:+.4f} "
                     f"[{lo:+.4f}, {hi:+.4f}] | {'yes' if c['kept'] else 'no'} |")
    if not summary["changes"]:
        lines.append("| (none) | | | no step improved the selection images | | |")
    lines += ["", f"chosen: {summary['chosen'] or 'no post-processing'}"]
    if summary["chosen"]:
        lo, hi = summary["interval"]
        lines.append(f"held-out gain of the chosen steps together: {summary['heldout_gain']:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    lines += [f"![{p}]({p})" for p in summary.get("pictures", [])]
    return "\n".join(lines) + "\n"
