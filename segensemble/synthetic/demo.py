"""``ensemble demo``: the whole product on data it makes itself, in a few minutes on a laptop CPU.

Generates a synthetic dataset of the trash contest's 11 classes (COCO), trains tiny members (two
architectures, two folds, three epoch snapshots, an SWA member), writes a plan over every axis, builds it,
evaluates each member beside the ensemble, predicts the test set into a submission CSV, writes pseudo-labels,
and prints how to serve. With 11 classes and two minutes of CPU no member learns every class well, and each
misses other ones: what the vote of members trained differently buys, as in the contest's write-ups.
``task="multilabel"`` does the same on overlapping classes (translucent shapes, as bones in an X-ray):
sigmoid members, mean Dice, a per-class RLE submission checked by ``check-submission``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segensemble.synthetic.data import TRASH_CLASSES

TOTAL = 8  # steps
DEMO_CLASSES = TRASH_CLASSES  # the contest's own 11 (background included)
MULTILABEL_CLASSES = ["radius", "ulna", "scaphoid", "lunate", "capitate"]


@dataclass(frozen=True)
class DemoOptions:
    out: Path = Path("demo-out")
    seed: int = 0
    size: int = 96
    train_images: int = 48
    steps: int = 120
    crop: int = 64  # training crops: half the compute of full 96x96 images, the same ensemble gain
    task: str = "multiclass"  # or multilabel: overlapping classes, sigmoid members

    @property
    def classes(self) -> list[str]:
        return MULTILABEL_CLASSES if self.task == "multilabel" else DEMO_CLASSES


def _step(n: int, total: int, text: str) -> float:
    print(f"\n[{n}/{total}] {text}", flush=True)
    return time.perf_counter()


def run_demo(opts: DemoOptions) -> dict:
    """Run every stage with the library's own functions; returns the evaluation report."""
    import torch  # noqa: F401  (first: without the export extra the demo stops before writing anything)

    from segensemble.jobs.analyze.pictures import require_matplotlib
    from segensemble.synthetic.data import write_multilabel_split, write_split

    require_matplotlib()  # step 4's analyze, likewise before anything is written

    started = time.perf_counter()
    out = opts.out
    overlapping = opts.task == "multilabel"
    _step(1, TOTAL, f"synthetic dataset under {out / 'data'} (train/tune/val/test, COCO{'; classes overlap' if overlapping else ''})")
    data = out / "data"
    write = write_multilabel_split if overlapping else write_split
    train = write(data, opts.train_images, opts.classes, (opts.size, opts.size), seed=opts.seed, name="train")
    val = write(data, 24, opts.classes, (opts.size, opts.size), seed=opts.seed + 1, name="val")
    test = write(data, 12, opts.classes, (opts.size, opts.size), seed=opts.seed + 2, name="test")
    tune = write(data, 24, opts.classes, (opts.size, opts.size), seed=opts.seed + 3, name="tune")  # the vote's weights are chosen here
    kind = "sigmoid " if overlapping else ""
    _step(2, TOTAL, f"training tiny {kind}members on CPU (Linknet and Unet, 2 folds, 3 epoch snapshots, SWA)")
    _train_members(train, out / "ckpt", opts)
    report = _run_jobs(out, _write_plan(out, opts), train, tune, val, test)
    _step(8, TOTAL, f"serve it (the demo took {time.perf_counter() - started:.0f} s)")
    print(f"  ensemble serve --build {out / 'build-tuned'} --port 8000")
    print(f"  curl -s -F file=@{test.images / 'test_0000.png'} 'http://127.0.0.1:8000/segment?format=json' | head -c 400")
    answer = "masks.zip  # one 0/1 PNG per class" if overlapping else "mask.png"
    print(f"  curl -s --data-binary @{test.images / 'test_0000.png'} -H 'Content-Type: image/png' http://127.0.0.1:8000/segment -o {answer}")
    return report


def _run_jobs(out: Path, plan_file: Path, train, tune, val, test) -> dict:
    """Steps 3 to 7: build, choose the weights on the tune images, evaluate, predict, pseudo-label."""
    from segensemble.formats.coco import coco_images
    from segensemble.formats.images import list_images
    from segensemble.jobs.check_submission import check_submission
    from segensemble.jobs.predict import PredictOptions, predict_to_files
    from segensemble.jobs.pseudo_label import PseudoOptions, default_report, pseudo_label
    from segensemble.jobs.pseudo_rule import PseudoRule

    engine, tuned = _build_and_tune(out, plan_file, tune)
    report = _evaluate(out, engine, tuned, val)
    fmt = "rle-per-class" if tuned.fusion.sigmoid else "contest-csv"
    _step(6, TOTAL, f"predicting the test set into a submission CSV ({fmt}) with the tuned build, checked as a scorer would")
    refs = coco_images(test.coco, test.images)
    done = predict_to_files(tuned, refs, PredictOptions(out / "submission.csv", out / "masks", format=fmt))
    print(f"  {done.predicted} images, {done.images_per_second:.1f} img/s: {done.csv}, masks in {out / 'masks'}")
    checked = check_submission(out / "submission.csv", fmt, refs, tuned.classes, None)
    print(f"  check-submission: {'valid' if checked.valid else checked.problems[:3]} ({checked.rows} rows)")
    _step(7, TOTAL, "pseudo-labels for the test images (image-level rule; --min-prob 0.6 --max-uncertain 0.3: tiny models are less sure)")
    summary = pseudo_label(tuned, list_images(test.images), PseudoOptions(
        output=out / "pseudo.json", rule=PseudoRule(0.6, 0.3), merge_with=train.coco, images_root=test.images,
        masks_dir=out / "pseudo_masks", report=default_report(out / "pseudo.json")))
    print(summary.describe())
    print(f"  {', '.join(map(str, summary.outputs))}; the merged file's file_names are relative to {summary.merged_root}")
    return report


def _build_and_tune(out: Path, plan_file: Path, tune):
    """Build the plan; ``ensemble analyze`` on the tune images chooses the weights, the vote rule and (mask tasks)
    thresholds, on images the score is not read from; build that plan."""
    from segensemble.export.build import build, plan_table
    from segensemble.export.verify_graph import describe
    from segensemble.jobs.analyze.report import AnalyzeOptions, analyze
    from segensemble.plan import load_plan
    from segensemble.run_config import RunConfig
    from segensemble.runtime.engine import open_engine

    _step(3, TOTAL, f"building {plan_file} (exports verified against PyTorch, the ensemble graph against the reference loop)")
    plan = load_plan(plan_file)
    result = build(plan, out / "build")
    print(plan_table(result.manifest))
    print("\n".join(describe(result.manifest.graphs)))
    engine = open_engine(out / "build", RunConfig(calls_in_flight=2))
    _step(4, TOTAL, f"tuning the vote (member weights, rule, thresholds) on the {len(_split_images(tune))} tune images "
          f"(ensemble analyze; report in {out / 'analysis'}), then building that plan")
    # mask tasks tune the vote and per-class thresholds, kept only where they also help on a held-out half of the
    # tune images (on all 24 they overfit: 0.9253 on the validation images against the plan's 0.9377)
    holdout = 0.5 if engine.fusion.sigmoid else 0.0
    report = analyze(engine, tune.coco, tune.images, AnalyzeOptions(out=out / "analysis", holdout=holdout, progress=False), plan)
    if "selection" in report:
        print(f"  weights chosen: {report['selection']['chosen']['shares']} ({report['selection']['chosen']['method']})")
    build(load_plan(report["tuned_plan"]), out / "build-tuned", quiet=True)
    if "fusion_search" in report:
        print(f"  vote and thresholds: {report['fusion_search']['kept']}: {report['fusion_search']['kept_why']}")
    print(f"  {report['tuned_plan']} -> {out / 'build-tuned'}")
    return engine, open_engine(out / "build-tuned", RunConfig(calls_in_flight=2))


def _split_images(split) -> list[dict]:
    return json.loads(Path(split.coco).read_text())["images"]


def _evaluate(out: Path, engine, tuned, val) -> dict:
    """Every member and the plan's vote, then the tuned vote, on the validation images (neither chose anything)."""
    from segensemble.formats.atomic import write_atomic
    from segensemble.jobs.evaluate import EvaluateOptions, evaluate

    _step(5, TOTAL, f"evaluating each member, the plan's vote and the tuned vote on the {len(_split_images(val))} validation images")
    report = evaluate(engine, val.coco, val.images, EvaluateOptions(progress=False))
    report["tuned"] = {"ensemble": evaluate(tuned, val.coco, val.images, EvaluateOptions(progress=False))["ensemble"],
                       "members": [m.name for m in tuned.members], "weights": [m.weight for m in tuned.members]}
    write_atomic(out / "evaluation.json", lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    metric, key = ("mean Dice", "dice") if engine.fusion.sigmoid else ("mIoU", "miou")
    for name, figures in report["members"].items():
        print(f"  {name:<15} {metric} {figures[key]:.4f}")
    best = max(report["members"].items(), key=lambda kv: kv[1][key])
    equal = report["ensemble"][key] - best[1][key]
    print(f"  the plan's equal vote: {metric} {report['ensemble'][key]:.4f}, {'gains' if equal > 0 else 'loses'} {abs(equal):.4f}")
    gain = report["tuned"]["ensemble"][key] - best[1][key]
    print(f"ensemble {metric} {report['tuned']['ensemble'][key]:.4f} (tuned on the tune images) vs best single member "
          f"{best[0]} {best[1][key]:.4f}: the ensemble {'gains' if gain > 0 else 'loses'} {abs(gain):.4f}")
    return report


def snapshot_steps(opts: DemoOptions) -> tuple[int, ...]:
    """The epoch snapshots: 20 and 10 steps before the end, and the end (three distinct steps from 3 steps up)."""
    return tuple(sorted({max(1, opts.steps - back) for back in (20, 10, 0)}))


# Linknet's decoder adds its skips instead of concatenating them: the cheapest full-resolution decoder here
DEMO_KWARGS = {"Linknet": {"encoder_depth": 3}, "Unet": {"encoder_depth": 3, "decoder_channels": [64, 32, 16]}}
# every flip and transpose the plan's TTA uses is one the members trained on; Dice so small classes get learnt
DEMO_RECIPE_KW = {"dihedral": True, "dice": True, "cosine": True}


def _train_members(train, ckpt: Path, opts: DemoOptions) -> None:
    from segensemble.models.registry import ModelSpec
    from segensemble.synthetic.trainer import Recipe, load_split_arrays, save_checkpoint, train_tiny

    images, masks = load_split_arrays(train.images, json.loads(train.coco.read_text())["images"], train.masks)
    linknet, unet = (ModelSpec(arch, "resnet18", len(opts.classes), extra=DEMO_KWARGS[arch]) for arch in ("Linknet", "Unet"))
    recipe = Recipe(**DEMO_RECIPE_KW)
    started = time.perf_counter()

    def fit(spec, label: str, keep=slice(None), seed: int = 0, snapshots: tuple[int, ...] = ()):
        model, snaps = train_tiny(spec, images[keep], masks[keep], steps=opts.steps, seed=opts.seed + seed, recipe=recipe,
                                  snapshots=snapshots, crop=opts.crop, progress=f"  {label}")
        print(f"  {label}: {opts.steps} steps on {len(images[keep])} images ({time.perf_counter() - started:.0f} s training so far)",
              flush=True)
        return model, snaps

    for k in range(2):  # 2-fold: each model trains on half the images
        model, _ = fit(linknet, f"linknet fold {k}", np.arange(len(images)) % 2 != k, seed=k)
        save_checkpoint(model, ckpt / f"linknet_f{k}.pth", "nested_state_dict")
    model, snaps = fit(linknet, f"linknet snapshots at steps {snapshot_steps(opts)}", seed=5, snapshots=snapshot_steps(opts))
    for step, state in snaps.items():
        save_checkpoint(model, ckpt / f"linknet_e{step}.pth", "state_dict", state)
    model, _ = fit(unet, "unet (saved as an smp directory)", seed=7)
    save_checkpoint(model, ckpt / "unet_dir", "smp_dir")


def _write_plan(out: Path, opts: DemoOptions) -> Path:
    import yaml

    e = [f"ckpt/linknet_e{s}.pth" for s in snapshot_steps(opts)]  # the ones this run trained, not what an earlier run left
    task = {"task": "multilabel", "vote": "mean", "thresholds": 0.5} if opts.task == "multilabel" else {}
    plan = {
        **task,
        "classes": opts.classes,
        "defaults": {"arch": "Linknet", "encoder": "resnet18", "model_kwargs": DEMO_KWARGS["Linknet"], "tta": ["identity", "hflip"]},
        "members": [
            {"name": "linknet-kfold", "folds": ["ckpt/linknet_f0.pth", "ckpt/linknet_f1.pth"], "scales": [0.75, 1.0, 1.25]},
            {"name": "linknet-epochs", "epochs": e, "tta": ["identity", "vflip"]},
            {"name": "linknet-swa", "swa": e, "bn_images": "data/train"},
            {"name": "unet", "checkpoint": "ckpt/unet_dir", "arch": None, "encoder": None, "model_kwargs": {},
             "tta": ["identity", "hflip", "rot90"], "weight": 1.5},
        ],
    }
    path = out / "plan.yaml"
    path.write_text("# written by `ensemble demo`: every axis (scale, K-fold, architecture, TTA, epochs, SWA)\n"
                    + yaml.safe_dump(plan, sort_keys=False))
    return path
