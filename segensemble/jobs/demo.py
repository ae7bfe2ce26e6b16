"""``ensemble demo``: the whole product on data it makes itself, in a few minutes on a laptop CPU.

Generates a synthetic trash-like dataset (COCO), trains tiny members (two architectures, two folds, three
epoch snapshots, an SWA member), writes a plan over every axis, builds it, evaluates each member beside
the ensemble, predicts the test set into a submission CSV, writes pseudo-labels, and prints how to serve.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEMO_CLASSES = ["Background", "General trash", "Paper", "Metal", "Glass", "Plastic"]
UNET = {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}
FPN = {"decoder_pyramid_channels": 64, "decoder_segmentation_channels": 32}


@dataclass(frozen=True)
class DemoOptions:
    out: Path = Path("demo-out")
    seed: int = 0
    size: int = 96
    train_images: int = 48
    steps: int = 120


def _step(n: int, total: int, text: str) -> float:
    print(f"\n[{n}/{total}] {text}", flush=True)
    return time.perf_counter()


def run_demo(opts: DemoOptions) -> dict:
    """Run every stage; returns the evaluation report."""
    import torch

    from segensemble.synthetic.data import write_split

    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = opts.out
    total = 7
    _step(1, total, f"synthetic dataset under {out / 'data'} (train/val/test, COCO)")
    data = out / "data"
    train = write_split(data, opts.train_images, DEMO_CLASSES, (opts.size, opts.size), seed=opts.seed, name="train")
    val = write_split(data, 12, DEMO_CLASSES, (opts.size, opts.size), seed=opts.seed + 1, name="val")
    test = write_split(data, 12, DEMO_CLASSES, (opts.size, opts.size), seed=opts.seed + 2, name="test")
    _step(2, total, "training tiny members on CPU (2 architectures, 2 folds, 3 epoch snapshots, SWA)")
    _train_members(train, out / "ckpt", opts)
    plan_file = _write_plan(out, data)
    from segensemble.cli import main

    _step(3, total, f"building {plan_file}")
    _check(main(["build", str(plan_file), "-o", str(out / "build")]))
    _step(4, total, "evaluating each member and the ensemble on the validation set")
    _check(main(["evaluate", "--coco", str(val.coco), "--images", str(val.images), "--build", str(out / "build"),
                 "--json", str(out / "evaluation.json")]))
    report = json.loads((out / "evaluation.json").read_text())
    best = max(report["members"].items(), key=lambda kv: kv[1]["miou"])
    print(f"ensemble mIoU {report['ensemble']['miou']:.4f} vs best single member {best[0]} {best[1]['miou']:.4f}")
    _step(5, total, "predicting the test set into a submission CSV")
    _check(main(["predict", str(test.images), "--coco", str(test.coco), "--build", str(out / "build"),
                 "-o", str(out / "submission.csv"), "--save-masks", str(out / "masks")]))
    _step(6, total, "pseudo-labels for the test images (image-level rule; --max-uncertain 0.3 since tiny models are less sure)")
    _check(main(["pseudo-label", str(test.images), "--build", str(out / "build"), "-o", str(out / "pseudo.json"),
                 "--min-prob", "0.8", "--max-uncertain", "0.3", "--save-masks", str(out / "pseudo_masks"),
                 "--merge", str(train.coco), "--report", str(out / "pseudo_report.csv")]))
    _step(7, total, "serve it")
    print(f"  ensemble serve --build {out / 'build'} --port 8000")
    print(f"  curl -s -F file=@{test.images / 'test_0000.png'} 'http://127.0.0.1:8000/segment?format=json' | head -c 400")
    print(f"  curl -s --data-binary @{test.images / 'test_0000.png'} -H 'Content-Type: image/png' http://127.0.0.1:8000/segment -o mask.png")
    return report


def _check(code: int) -> None:
    if code != 0:
        raise SystemExit(code)


def _train_members(train, ckpt: Path, opts: DemoOptions) -> None:
    from segensemble.models.registry import ModelSpec
    from segensemble.synthetic.trainer import load_split_arrays, save_checkpoint, train_tiny

    images, masks = load_split_arrays(train.images, json.loads(train.coco.read_text())["images"], train.masks)
    n = len(images)
    folds = [np.arange(n) % 2 != k for k in range(2)]  # 2-fold: each model trains on half the images
    started = time.perf_counter()
    for k, keep in enumerate(folds):
        model, _ = train_tiny(ModelSpec("Unet", "resnet18", len(DEMO_CLASSES), extra=UNET), images[keep], masks[keep],
                              steps=opts.steps, seed=opts.seed + k)
        save_checkpoint(model, ckpt / f"unet_f{k}.pth", "nested_state_dict")
        print(f"  unet fold {k}: trained on {int(keep.sum())} images ({time.perf_counter() - started:.0f}s)", flush=True)
    snapshot_steps = (opts.steps - 20, opts.steps - 10, opts.steps)
    model, snaps = train_tiny(ModelSpec("Unet", "resnet18", len(DEMO_CLASSES), extra=UNET), images, masks,
                              steps=opts.steps, seed=opts.seed + 5, snapshots=snapshot_steps)
    for step, state in snaps.items():
        save_checkpoint(model, ckpt / f"unet_e{step}.pth", "state_dict", state)
    print(f"  unet on all images: snapshots at steps {snapshot_steps} ({time.perf_counter() - started:.0f}s)", flush=True)
    model, _ = train_tiny(ModelSpec("FPN", "resnet18", len(DEMO_CLASSES), extra=FPN), images, masks, steps=opts.steps, seed=opts.seed + 7)
    save_checkpoint(model, ckpt / "fpn_dir", "smp_dir")
    print(f"  fpn: trained, saved as an smp directory ({time.perf_counter() - started:.0f}s)", flush=True)


def _write_plan(out: Path, data: Path) -> Path:
    import yaml

    e = [f"ckpt/unet_e{s}.pth" for s in sorted(int(p.stem.split("_e")[1]) for p in (out / "ckpt").glob("unet_e*.pth"))]
    plan = {
        "classes": DEMO_CLASSES,
        "defaults": {"arch": "Unet", "encoder": "resnet18", "model_kwargs": UNET, "tta": ["identity", "hflip"]},
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
