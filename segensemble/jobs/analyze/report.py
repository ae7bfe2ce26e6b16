"""``ensemble analyze``: run every view once, then score variants, select members, draw, and report."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segensemble.formats.atomic import write_atomic
from segensemble.formats.coco import category_map, class_masks, coco_images, label_map, load_coco
from segensemble.formats.images import read_image
from segensemble.jobs.analyze.cache import ViewCache, build_cache
from segensemble.jobs.analyze.fusion_search import search_fusion
from segensemble.jobs.analyze.page import render_page
from segensemble.jobs.analyze.pictures import confusion_heatmap, image_grid, iou_bars, require_matplotlib
from segensemble.jobs.analyze.scoring import score_views
from segensemble.jobs.analyze.selection import select_members, write_tuned_plan
from segensemble.jobs.analyze.variants import ablations, all_views, coefficients, member_views
from segensemble.jobs.evaluate import unlabeled_value
from segensemble.jobs.metrics import image_miou
from segensemble.plan import Plan
from segensemble.runtime.engine import Engine


@dataclass(frozen=True)
class AnalyzeOptions:
    out: Path = Path("report")
    holdout: float = 0.0  # share of images held out of selection, for an honest figure
    seed: int = 0
    samples: int = 4  # the worst images (lowest per-image mIoU) drawn as error grids
    cache_dtype: str = "float16"
    max_images: int | None = None  # a seeded sample of the set, when the whole of it is too big to cache
    unlabeled: str | None = None
    progress: bool = True
    keep_cache: bool = False  # the per-view cache (out/cache) is dropped once the report is written unless kept


def analyze(engine: Engine, coco_path: Path, image_root: Path, options: AnalyzeOptions, plan: Plan | None = None) -> dict:
    """Cache every view once, then score variants, select members, draw pictures and write the report."""
    require_matplotlib()  # before minutes of caching, not after
    try:
        report = _measure(engine, coco_path, image_root, options, plan)
    finally:  # a failed run does not leave its cache behind either
        cache = _settle_cache(options.out / "cache", options.keep_cache)
    report["cache"] = cache
    write_atomic(options.out / "report.json", lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    write_atomic(options.out / "index.html", lambda tmp: tmp.write_text(render_page(report)))
    return report


def _measure(engine: Engine, coco_path: Path, image_root: Path, options: AnalyzeOptions, plan: Plan | None) -> dict:
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    names = engine.classes
    sigmoid = engine.fusion.sigmoid
    refs, paint = _images(coco_path, image_root, names, options, sigmoid)
    started = time.perf_counter()
    cache = build_cache(engine, refs, out / "cache", options.cache_dtype, options.progress)
    gts = _ground_truth(paint, cache, out, len(names) if sigmoid else 1)
    n = len(refs)
    order = np.random.default_rng(options.seed).permutation(n)
    held = sorted(order[: int(round(options.holdout * n))].tolist())
    select = sorted(order[len(held):].tolist()) or list(range(n))
    fusion = search_fusion(cache, list(engine.members), engine.fusion, gts, select, held, names)
    if sigmoid:  # mask tasks: the vote and thresholds search (ablation, selection and pictures score label maps)
        report = {"images": n, "classes": names, "task": engine.fusion.task, "seconds": round(time.perf_counter() - started, 1),
                  "seed": options.seed, "holdout_images": len(held), "selection_images": len(select), "fusion_search": fusion}
        if plan is not None:
            report["tuned_plan"] = str(write_tuned_plan(plan, [m.weight for m in plan.members], out, fusion["kept"]))
        return report
    everything = list(range(n))
    members = list(engine.members)
    views = cache.views
    per_image_ms = lambda kept: float(cache.seconds[kept].sum() / n * 1000)  # noqa: E731

    def row(name: str, kept: list[int], weights=None) -> dict:
        figures = score_views(cache, coefficients(views, kept, members, weights), gts, everything, names, engine.manifest.postprocess)
        return {"variant": name, "miou": figures["miou"], "miou_per_image": figures["miou_per_image"], "iou": figures["iou"],
                "forward_passes": len(kept), "ms_per_image": per_image_ms(kept), "confusion": figures["confusion"]}

    full = row("full ensemble", all_views(views))
    alone = [row(f"{m.name} alone", member_views(views, mi)) for mi, m in enumerate(members)]
    best = int(np.argmax([a["miou"] for a in alone]))
    table = _ablation_table(views, members, best, full, alone, row)
    selection = select_members(cache, members, gts, select, held, names, out, best)
    report = {
        "images": n, "classes": names, "seconds": round(time.perf_counter() - started, 1), "seed": options.seed,
        "cache_dtype": options.cache_dtype, "holdout_images": len(held), "selection_images": len(select),
        "full": {k: v for k, v in full.items() if k != "confusion"}, "confusion": full["confusion"],
        "ablation": [{k: v for k, v in r.items() if k != "confusion"} for r in table],
        "best_member": members[best].name, "selection": selection, "fusion_search": fusion,
    }
    report["pictures"] = _pictures(engine, cache, refs, gts, full, alone[best], names, out, options)
    if plan is not None:
        chosen = selection["chosen"]
        report["tuned_plan"] = str(write_tuned_plan(plan, chosen["weights"], out, fusion["kept"], class_weights=chosen["class_weights"]))
    return report


def _settle_cache(root: Path, keep: bool) -> dict:
    """Where the view cache is and how big; removed unless kept (every figure is already in report.json)."""
    import shutil

    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return {"path": str(root), "bytes": size, "kept": keep}


def _images(coco_path: Path, image_root: Path, names: list[str], options: AnalyzeOptions, sigmoid: bool) -> tuple[list, Callable]:
    """The images to analyze (a seeded sample with --max-images) and a function painting image i's label map
    (mask tasks: its (C, H, W) class masks, which may overlap)."""
    coco = load_coco(coco_path)
    cats = category_map(coco, names, str(coco_path))
    unlabeled = unlabeled_value(options.unlabeled, names)
    refs = coco_images(coco_path, image_root, coco)
    if options.max_images and options.max_images < len(refs):
        keep = np.random.default_rng(options.seed).choice(len(refs), size=options.max_images, replace=False)
        refs = [refs[i] for i in sorted(keep.tolist())]
    if sigmoid:
        return refs, lambda i: class_masks(coco, refs[i].coco_id, cats, len(names))
    return refs, lambda i: label_map(coco, refs[i].coco_id, cats, unlabeled)


def _ground_truth(paint: Callable, cache: ViewCache, out: Path, channels: int = 1) -> Callable[[int], np.ndarray]:
    """Every label map (or set of class masks) painted once into a disk store beside the view cache; returns
    the reader."""
    store = ViewCache(out / "cache" / "gt", [cache.views[0]], cache.sizes, channels, "uint8")
    for i in range(len(cache.sizes)):
        store.put(0, i, paint(i))
    if channels > 1:
        return lambda i: store.get(0, i).astype(bool)
    return lambda i: store.get(0, i)[0].astype(np.uint8)


def _ablation_table(views, members, best: int, full: dict, alone: list[dict], row) -> list[dict]:
    """Each axis removed in turn and each member alone, sorted by what they cost the full ensemble."""
    ablation = []
    for name, kept in ablations(views, members, best).items():
        if kept is None:
            ablation.append({"variant": name, "miou": None, "gain": None, "note": "axis not used by this plan"})
        elif not kept:
            ablation.append({"variant": name, "miou": None, "gain": None, "note": "would remove every view"})
        else:
            r = row(name, kept)
            ablation.append(r | {"gain": full["miou"] - r["miou"]})
    for a in alone:
        a["gain"] = full["miou"] - a["miou"]
    return sorted(ablation + alone, key=lambda r: -(r["gain"] if r.get("gain") is not None else -1e9))


def _pictures(engine, cache, refs, gts, full, best, names, out, options) -> dict:
    pics = out / "pictures"
    pics.mkdir(exist_ok=True)
    coeffs = coefficients(cache.views, all_views(cache.views), list(engine.members))
    scores = [image_miou(gts(i), cache.combine(coeffs, i).argmax(0), len(names)) for i in range(len(refs))]
    worst = sorted(range(len(refs)), key=lambda i: (np.nan_to_num(scores[i], nan=2.0), i))[: options.samples]
    grids = []
    for rank, i in enumerate(worst, start=1):
        pred = cache.combine(coeffs, i).argmax(0).astype(np.uint8)
        title = f"{refs[i].image_id}: image mIoU {scores[i]:.3f}, the {_ordinal(rank)}worst of {len(refs)}"
        grid = image_grid(pics / f"worst_{rank:02d}.png", title, read_image(refs[i].path), gts(i), pred, names)
        grids.append({"picture": str(grid.relative_to(out)), "image": refs[i].image_id, "miou": scores[i]})
    bars = iou_bars(pics / "iou_per_class.png", names, {"ensemble": full["iou"], best["variant"]: best["iou"]})
    heat = confusion_heatmap(pics / "confusion.png", names, np.asarray(full["confusion"]))
    return {"worst": grids, "iou_per_class": str(bars.relative_to(out)), "confusion": str(heat.relative_to(out))}


def _ordinal(n: int) -> str:
    """'' for 1 ("the worst"), else '2nd ', '3rd ', '4th '..."""
    return "" if n == 1 else f"{n}{'nd' if n == 2 else 'rd' if n == 3 else 'th'} "
