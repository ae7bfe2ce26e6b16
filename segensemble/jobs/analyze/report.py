"""``ensemble analyze``: run every view once, then score variants, select members, draw, and report."""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from segensemble.formats.atomic import write_atomic
from segensemble.formats.coco import category_map, coco_images, label_map, load_coco
from segensemble.formats.images import read_image
from segensemble.jobs.analyze.cache import ViewCache, build_cache
from segensemble.jobs.analyze.pictures import confusion_heatmap, image_grid, iou_bars
from segensemble.jobs.analyze.scoring import MemberProbs, score_views
from segensemble.jobs.analyze.selection import greedy_selection, weight_search
from segensemble.jobs.analyze.variants import ablations, all_views, coefficients, member_views
from segensemble.jobs.evaluate import unlabeled_value
from segensemble.plan import SOURCES, Plan
from segensemble.runtime.engine import Engine


@dataclass(frozen=True)
class AnalyzeOptions:
    out: Path = Path("report")
    holdout: float = 0.0  # share of images held out of selection, for an honest figure
    seed: int = 0
    samples: int = 4  # images drawn as error grids
    cache_dtype: str = "float16"
    max_images: int | None = None  # a seeded sample of the set, when the whole of it is too big to cache
    unlabeled: str | None = None
    progress: bool = True


def analyze(engine: Engine, coco_path: Path, image_root: Path, options: AnalyzeOptions, plan: Plan | None = None) -> dict:
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    coco = load_coco(coco_path)
    names = engine.classes
    cats = category_map(coco, names, str(coco_path))
    unlabeled = unlabeled_value(options.unlabeled, names)
    refs = coco_images(coco_path, image_root, coco)
    if options.max_images and options.max_images < len(refs):
        keep = np.random.default_rng(options.seed).choice(len(refs), size=options.max_images, replace=False)
        refs = [refs[i] for i in sorted(keep.tolist())]
    started = time.perf_counter()
    cache = build_cache(engine, refs, out / "cache", options.cache_dtype, options.progress)
    gt_store = ViewCache(out / "cache" / "gt", [cache.views[0]], cache.sizes, 1, "uint8")
    for i, ref in enumerate(refs):
        gt_store.put(0, i, label_map(coco, ref.coco_id, cats, unlabeled))

    def gts(i: int) -> np.ndarray:
        return gt_store.get(0, i)[0].astype(np.uint8)

    n = len(refs)
    order = np.random.default_rng(options.seed).permutation(n)
    held = sorted(order[: int(round(options.holdout * n))].tolist())
    select = sorted(order[len(held):].tolist()) or list(range(n))
    everything = list(range(n))
    members = list(engine.members)
    views = cache.views
    per_image_ms = lambda kept: float(cache.seconds[kept].sum() / n * 1000)  # noqa: E731

    def row(name: str, kept: list[int], weights=None) -> dict:
        figures = score_views(cache, coefficients(views, kept, members, weights), gts, everything, names)
        return {"variant": name, "miou": figures["miou"], "miou_per_image": figures["miou_per_image"], "iou": figures["iou"],
                "forward_passes": len(kept), "ms_per_image": per_image_ms(kept), "confusion": figures["confusion"]}

    full = row("full ensemble", all_views(views))
    alone = [row(f"{m.name} alone", member_views(views, mi)) for mi, m in enumerate(members)]
    best = int(np.argmax([a["miou"] for a in alone]))
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
    table = sorted(ablation + alone, key=lambda r: -(r["gain"] if r.get("gain") is not None else -1e9))
    selection = _select(cache, members, gts, select, held, names, out, best)
    report = {
        "images": n, "classes": names, "seconds": round(time.perf_counter() - started, 1), "seed": options.seed,
        "cache_dtype": options.cache_dtype, "holdout_images": len(held), "selection_images": len(select),
        "full": {k: v for k, v in full.items() if k != "confusion"}, "confusion": full["confusion"],
        "ablation": [{k: v for k, v in r.items() if k != "confusion"} for r in table],
        "best_member": members[best].name, "selection": selection,
    }
    report["pictures"] = _pictures(engine, cache, refs, gts, full, alone[best], names, out, options)
    if plan is not None:
        report["tuned_plan"] = str(_tuned_plan(plan, selection["chosen"]["weights"], out))
    write_atomic(out / "report.json", lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    write_atomic(out / "index.html", lambda tmp: tmp.write_text(_html(report)))
    return report


def _select(cache, members, gts, select, held, names, out, best) -> dict:
    probs = MemberProbs(cache, members, out / "cache" / "members")
    score = lambda w: probs.score(w, gts, select, names)["miou"]  # noqa: E731
    plan_weights = [m.weight for m in members]
    greedy = greedy_selection(len(members), score)
    search = weight_search(plan_weights, score)
    chosen = max((greedy, "greedy"), (search, "weight search"), key=lambda t: t[0]["miou"])
    single = [0.0] * len(members)
    single[best] = 1.0
    result = {
        "greedy": greedy, "weight_search": search,
        "chosen": {"method": chosen[1], "weights": chosen[0]["weights"], "miou_selection": chosen[0]["miou"]},
        "plan_weights_miou_selection": score(plan_weights), "best_single_miou_selection": score(single),
    }
    if held:
        honest = lambda w: probs.score(w, gts, held, names)["miou"]  # noqa: E731
        result["holdout"] = {"plan_weights": honest(plan_weights), "chosen": honest(chosen[0]["weights"]),
                             "best_single": honest(single)}
    return result


def _pictures(engine, cache, refs, gts, full, best, names, out, options) -> dict:
    pics = out / "pictures"
    pics.mkdir(exist_ok=True)
    coeffs = coefficients(cache.views, all_views(cache.views), list(engine.members))
    rng = np.random.default_rng(options.seed)
    picks = sorted(rng.choice(len(refs), size=min(options.samples, len(refs)), replace=False).tolist())
    grids = []
    for i in picks:
        pred = cache.combine(coeffs, i).argmax(0).astype(np.uint8)
        grids.append(str(image_grid(pics / f"sample_{i:04d}.png", refs[i].image_id, read_image(refs[i].path), gts(i), pred, names)
                         .relative_to(out)))
    bars = iou_bars(pics / "iou_per_class.png", names, {"ensemble": full["iou"], best["variant"]: best["iou"]})
    heat = confusion_heatmap(pics / "confusion.png", names, np.asarray(full["confusion"]))
    return {"samples": grids, "iou_per_class": str(bars.relative_to(out)), "confusion": str(heat.relative_to(out))}


def _tuned_plan(plan: Plan, weights: list[float], out: Path) -> Path:
    """The plan with the chosen weights; members weighted 0 are left out. Paths are absolute."""
    members = []
    for member, w in zip(plan.members, weights):
        if w <= 0:
            continue
        data = member.model_dump(mode="json", exclude_defaults=True)
        for key in SOURCES:
            if getattr(member, key) is not None:
                data[key] = getattr(member, key)
        data["weight"] = float(w)
        members.append(data)
    text = "# written by `ensemble analyze`: members and weights chosen on the validation set\n" + \
        yaml.safe_dump({"classes": list(plan.classes), "members": members}, sort_keys=False)
    target = out / "plan.tuned.yaml"
    write_atomic(target, lambda tmp: tmp.write_text(text))
    return target


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))


def _html(report: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(r['variant'])}</td><td>{_fmt(r.get('miou'))}</td><td>{_fmt(r.get('gain'))}</td>"
        f"<td>{_fmt(r.get('forward_passes'))}</td><td>{_fmt(r.get('ms_per_image'))}</td><td>{html.escape(r.get('note', ''))}</td></tr>"
        for r in report["ablation"])
    sel = report["selection"]
    holdout = sel.get("holdout")
    honest = (f"<p>Held-out ({report['holdout_images']} images): plan weights {_fmt(holdout['plan_weights'])}, chosen "
              f"{_fmt(holdout['chosen'])}, best single member {_fmt(holdout['best_single'])}.</p>") if holdout else ""
    pics = report["pictures"]
    samples = "".join(f'<p><a href="{p}"><img src="{p}" style="max-width:100%"></a></p>' for p in pics["samples"])
    tuned = '<p>Tuned plan: <a href="plan.tuned.yaml">plan.tuned.yaml</a></p>' if report.get("tuned_plan") else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>segensemble analysis</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
td,th{{padding:2px 10px;text-align:right}}td:first-child{{text-align:left}}</style>
</head><body><h1>Ensemble analysis</h1>
<p>{report['images']} validation images; full ensemble mIoU <b>{_fmt(report['full']['miou'])}</b>
({report['full']['forward_passes']} forward passes, {_fmt(report['full']['ms_per_image'])} ms per image);
best single member {html.escape(report['best_member'])}.</p>
<h2>What each axis and member buys</h2><p>gain = full ensemble mIoU − variant mIoU</p>
<table><tr><th>variant</th><th>mIoU</th><th>gain</th><th>passes</th><th>ms/img</th><th></th></tr>{rows}</table>
<h2>Selection</h2><p>Chosen by {html.escape(sel['chosen']['method'])}: weights {sel['chosen']['weights']}
(mIoU on selection images {_fmt(sel['chosen']['miou_selection'])}; plan weights {_fmt(sel['plan_weights_miou_selection'])};
best single {_fmt(sel['best_single_miou_selection'])}).</p>{honest}{tuned}
<h2>Per class</h2><p><img src="{pics['iou_per_class']}"></p><p><img src="{pics['confusion']}"></p>
<h2>Where it fails</h2>{samples}
<p>Every figure is in <a href="report.json">report.json</a>.</p></body></html>"""
