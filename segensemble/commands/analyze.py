"""`ensemble analyze`: what each axis and member buys, ensemble selection, pictures of the errors."""

from __future__ import annotations

from pathlib import Path

from segensemble.commands.common import add_budget_flags, add_precision_flags


def add(sub) -> None:
    p = sub.add_parser("analyze", help="ablation by axis, ensemble selection and error pictures on a labelled set",
                       description="Run every view once over a labelled validation set (probabilities cached on disk), "
                       "then score without running models again: the ensemble with each axis removed in turn and each "
                       "member alone (sorted by gain, with cost), greedy forward selection with replacement (Caruana et al. "
                       "2004) and a weight search, then per-class weights from the better of the two, and the vote rule "
                       "(each of the plan's rules; per-class thresholds for multilabel "
                       "and binary plans) chosen on the selection images, its gain per class on the held-out ones; written as "
                       "plan.tuned.yaml; per-class pictures, report.json, index.html. Multilabel and binary plans get the vote "
                       "and thresholds search only.")
    p.add_argument("plan", type=Path, help="plan.yaml (built into build/ beside it unless --build is given)")
    p.add_argument("--coco", type=Path, required=True, help="COCO json with the validation ground truth")
    p.add_argument("--images", type=Path, required=True, help="image root (COCO file_name is relative to it)")
    p.add_argument("-o", "--output", type=Path, default=Path("report"), help="report folder (default report/)")
    p.add_argument("--build", type=Path, help="an existing build of this plan")
    p.add_argument("--holdout", type=float, default=0.0, help="share of images kept out of selection to report an honest figure (e.g. 0.3)")
    p.add_argument("--samples", type=int, default=4, help="the worst images (lowest per-image mIoU) drawn as error grids, "
                   "worst first (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed for the held-out split and --max-images (default 0)")
    p.add_argument("--max-images", type=int, help="analyze a seeded sample of this many images (the cache holds every view "
                   "of every image: C x H x W x views values each)")
    p.add_argument("--cache-dtype", choices=["float16", "float32"], default="float16", help="per-view cache precision (default float16)")
    p.add_argument("--unlabeled", choices=["background", "ignore"], help="unannotated pixels (default: from the plan's first class)")
    p.add_argument("--keep-cache", action="store_true", help="keep the per-view probability cache (OUTPUT/cache, its size "
                   "printed at the end) for your own analysis; by default it is removed once the report is written")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_budget_flags(p)
    add_precision_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from segensemble.commands.common import build_or_given, run_config
    from segensemble.errors import SegEnsembleError
    from segensemble.jobs.analyze.report import AnalyzeOptions, analyze
    from segensemble.plan import load_plan
    from segensemble.runtime.engine import open_engine

    if not 0 <= args.holdout < 1:
        raise SegEnsembleError(f"--holdout must be in [0, 1), got {args.holdout}")
    plan = load_plan(args.plan)
    build_dir = build_or_given(args.plan, args.build, args.quiet)
    engine = open_engine(build_dir, run_config(args))
    options = AnalyzeOptions(args.output, args.holdout, args.seed, args.samples, args.cache_dtype, args.max_images,
                             args.unlabeled, not args.quiet, args.keep_cache)
    report = analyze(engine, args.coco, args.images, options, plan)
    if "ablation" in report:
        _print_ablation(report)
    _print_fusion(report["fusion_search"])
    cache = report["cache"]
    print(f"view cache: {cache['path']} ({cache['bytes'] / 2**20:.1f} MB), "
          + ("kept: delete it when done" if cache["kept"] else "removed (--keep-cache keeps it)"))
    if report.get("tuned_plan"):
        print(f"tuned plan: {report['tuned_plan']}")
    print(f"report: {args.output / 'index.html'}")
    return 0


def _print_fusion(search: dict) -> None:
    metric = "mean Dice" if search["metric"] == "dice" else "mIoU"
    rules = ", ".join(f"{r} {v:.4f}" for r, v in search["rules_on_selection"].items())
    print(f"vote rules ({metric} on {search['selection_images']} selection images): {rules}; chosen {search['chosen']}")
    held = search.get("holdout")
    if held:
        gains = ", ".join(f"{c} {g:+.4f}" for c, g in held["gain_per_class"].items() if g is not None)
        print(f"held out ({search['holdout_images']} images): plan {held['plan']:.4f}, chosen {held['chosen']:.4f}; per class {gains}")
    print(f"tuned plan's vote: {search['kept_why']}")


def _print_ablation(report: dict) -> None:
    print(f"full ensemble mIoU {report['full']['miou']:.4f} ({report['full']['forward_passes']} passes, "
          f"{report['full']['ms_per_image']:.0f} ms/img)")
    print(f"{'variant':<28}{'mIoU':>8}{'gain':>9}{'passes':>8}{'ms/img':>9}")
    for r in report["ablation"]:
        if r.get("miou") is None:
            print(f"{r['variant']:<28}{'n/a':>8}{'n/a':>9}   ({r['note']})")
        else:
            print(f"{r['variant']:<28}{r['miou']:>8.4f}{r['gain']:>+9.4f}{r['forward_passes']:>8}{r['ms_per_image']:>9.1f}")
    chosen = report["selection"]["chosen"]
    print(f"selection ({chosen['method']}): shares of the vote {chosen['shares']}, mIoU {chosen['miou_selection']:.4f} on "
          "selection images")
    if "holdout" in report["selection"]:
        h = report["selection"]["holdout"]
        print(f"held out: plan weights {h['plan_weights']:.4f}, chosen {h['chosen']:.4f}, best single {h['best_single']:.4f}")
