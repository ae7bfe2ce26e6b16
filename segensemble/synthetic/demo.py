"""``ensemble demo``: the whole product on data it makes itself, in a few minutes on a laptop CPU.

Generates a synthetic trash-like dataset (COCO), trains tiny members (two architectures, two folds, three
epoch snapshots, an SWA member), writes a plan over every axis, builds it, evaluates each member beside
the ensemble, predicts the test set into a submission CSV, writes pseudo-labels, and prints how to serve.
``task="multilabel"`` does the same on overlapping classes (translucent shapes, as bones in an X-ray):
sigmoid members, mean Dice, a per-class RLE submission checked by ``check-submission``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOTAL = 7  # steps
DEMO_CLASSES = ["Background", "General trash", "Paper", "Metal", "Glass", "Plastic"]
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

    from segensemble.synthetic.data import write_multilabel_split, write_split

    started = time.perf_counter()
    out = opts.out
    overlapping = opts.task == "multilabel"
    _step(1, TOTAL, f"synthetic dataset under {out / 'data'} (train/val/test, COCO{'; classes overlap' if overlapping else ''})")
    data = out / "data"
    write = write_multilabel_split if overlapping else write_split
    train = write(data, opts.train_images, opts.classes, (opts.size, opts.size), seed=opts.seed, name="train")
    val = write(data, 12, opts.classes, (opts.size, opts.size), seed=opts.seed + 1, name="val")
    test = write(data, 12, opts.classes, (opts.size, opts.size), seed=opts.seed + 2, name="test")
    kind = "sigmoid " if overlapping else ""
    _step(2, TOTAL, f"training tiny {kind}members on CPU (2 architectures, 2 folds, 3 epoch snapshots, SWA)")
    _train_members(train, out / "ckpt", opts)
    report = _run_jobs(out, _write_plan(out, opts), train, val, test)
    _step(7, TOTAL, f"serve it (the demo took {time.perf_counter() - started:.0f} s)")
    print(f"  ensemble serve --build {out / 'build'} --port 8000")
    print(f"  curl -s -F file=@{test.images / 'test_0000.png'} 'http://127.0.0.1:8000/segment?format=json' | head -c 400")
    answer = "masks.zip  # one 0/1 PNG per class" if overlapping else "mask.png"
    print(f"  curl -s --data-binary @{test.images / 'test_0000.png'} -H 'Content-Type: image/png' http://127.0.0.1:8000/segment -o {answer}")
    return report


def _run_jobs(out: Path, plan_file: Path, train, val, test) -> dict:
    """Steps 3 to 6: build, evaluate, predict, pseudo-label."""
    from segensemble.export.build import build, plan_table
    from segensemble.export.verify_graph import describe
    from segensemble.formats.atomic import write_atomic
    from segensemble.formats.coco import coco_images
    from segensemble.formats.images import list_images
    from segensemble.jobs.check_submission import check_submission
    from segensemble.jobs.evaluate import EvaluateOptions, evaluate
    from segensemble.jobs.predict import PredictOptions, predict_to_files
    from segensemble.jobs.pseudo_label import PseudoOptions, default_report, pseudo_label
    from segensemble.jobs.pseudo_rule import PseudoRule
    from segensemble.plan import load_plan
    from segensemble.run_config import RunConfig
    from segensemble.runtime.engine import open_engine

    _step(3, TOTAL, f"building {plan_file} (exports verified against PyTorch, the ensemble graph against the reference loop)")
    result = build(load_plan(plan_file), out / "build")
    print(plan_table(result.manifest))
    print("\n".join(describe(result.manifest.graphs)))
    engine = open_engine(out / "build", RunConfig(calls_in_flight=2))
    _step(4, TOTAL, "evaluating each member and the ensemble on the validation set")
    report = evaluate(engine, val.coco, val.images, EvaluateOptions())
    write_atomic(out / "evaluation.json", lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    metric, key = ("mean Dice", "dice") if engine.fusion.sigmoid else ("mIoU", "miou")
    for name, figures in report["members"].items():
        print(f"  {name:<12} {metric} {figures[key]:.4f}")
    best = max(report["members"].items(), key=lambda kv: kv[1][key])
    gain = report["ensemble"][key] - best[1][key]
    print(f"ensemble {metric} {report['ensemble'][key]:.4f} vs best single member {best[0]} {best[1][key]:.4f}: "
          f"the ensemble {'gains' if gain > 0 else 'loses'} {abs(gain):.4f}")
    fmt = "rle-per-class" if engine.fusion.sigmoid else "contest-csv"
    _step(5, TOTAL, f"predicting the test set into a submission CSV ({fmt}), checked as a scorer would")
    refs = coco_images(test.coco, test.images)
    done = predict_to_files(engine, refs, PredictOptions(out / "submission.csv", out / "masks", format=fmt))
    print(f"  {done.predicted} images, {done.images_per_second:.1f} img/s: {done.csv}, masks in {out / 'masks'}")
    checked = check_submission(out / "submission.csv", fmt, refs, engine.classes, None)
    print(f"  check-submission: {'valid' if checked.valid else checked.problems[:3]} ({checked.rows} rows)")
    _step(6, TOTAL, "pseudo-labels for the test images (image-level rule; --max-uncertain 0.3 since tiny models are less sure)")
    summary = pseudo_label(engine, list_images(test.images), PseudoOptions(
        output=out / "pseudo.json", rule=PseudoRule(0.8, 0.3), merge_with=train.coco, images_root=test.images,
        masks_dir=out / "pseudo_masks", report=default_report(out / "pseudo.json")))
    print(summary.describe())
    print(f"  {', '.join(map(str, summary.outputs))}; the merged file's file_names are relative to {summary.merged_root}")
    return report


def snapshot_steps(opts: DemoOptions) -> tuple[int, ...]:
    """The epoch snapshots: 20 and 10 steps before the end, and the end (three distinct steps from 3 steps up)."""
    return tuple(sorted({max(1, opts.steps - back) for back in (20, 10, 0)}))


def _train_members(train, ckpt: Path, opts: DemoOptions) -> None:
    from segensemble.models.registry import ModelSpec
    from segensemble.synthetic.trainer import TINY_KWARGS, load_split_arrays, save_checkpoint, train_tiny

    images, masks = load_split_arrays(train.images, json.loads(train.coco.read_text())["images"], train.masks)
    unet, fpn = (ModelSpec(arch, "resnet18", len(opts.classes), extra=TINY_KWARGS[arch]) for arch in ("Unet", "FPN"))
    started = time.perf_counter()

    def fit(spec, label: str, keep=slice(None), seed: int = 0, snapshots: tuple[int, ...] = ()):
        model, snaps = train_tiny(spec, images[keep], masks[keep], steps=opts.steps, seed=opts.seed + seed,
                                  snapshots=snapshots, crop=opts.crop, progress=f"  {label}")
        print(f"  {label}: {opts.steps} steps on {len(images[keep])} images ({time.perf_counter() - started:.0f} s training so far)",
              flush=True)
        return model, snaps

    for k in range(2):  # 2-fold: each model trains on half the images
        model, _ = fit(unet, f"unet fold {k}", np.arange(len(images)) % 2 != k, seed=k)
        save_checkpoint(model, ckpt / f"unet_f{k}.pth", "nested_state_dict")
    model, snaps = fit(unet, f"unet snapshots at steps {snapshot_steps(opts)}", seed=5, snapshots=snapshot_steps(opts))
    for step, state in snaps.items():
        save_checkpoint(model, ckpt / f"unet_e{step}.pth", "state_dict", state)
    model, _ = fit(fpn, "fpn (saved as an smp directory)", seed=7)
    save_checkpoint(model, ckpt / "fpn_dir", "smp_dir")


def _write_plan(out: Path, opts: DemoOptions) -> Path:
    import yaml

    from segensemble.synthetic.trainer import TINY_KWARGS

    e = [f"ckpt/unet_e{s}.pth" for s in snapshot_steps(opts)]  # the ones this run trained, not what an earlier run left
    task = {"task": "multilabel", "vote": "mean", "thresholds": 0.5} if opts.task == "multilabel" else {}
    plan = {
        **task,
        "classes": opts.classes,
        "defaults": {"arch": "Unet", "encoder": "resnet18", "model_kwargs": TINY_KWARGS["Unet"], "tta": ["identity", "hflip"]},
        "members": [
            {"name": "unet-kfold", "folds": ["ckpt/unet_f0.pth", "ckpt/unet_f1.pth"], "scales": [0.75, 1.0, 1.25]},
            {"name": "unet-epochs", "epochs": e, "tta": ["identity", "vflip"]},
            {"name": "unet-swa", "swa": e, "bn_images": "data/train"},
            {"name": "fpn", "checkpoint": "ckpt/fpn_dir", "arch": None, "encoder": None, "model_kwargs": {},
             "tta": ["identity", "hflip", "rot90"], "weight": 1.5},
        ],
    }
    path = out / "plan.yaml"
    path.write_text("# written by `ensemble demo`: every axis (scale, K-fold, architecture, TTA, epochs, SWA)\n"
                    + yaml.safe_dump(plan, sort_keys=False))
    return path
