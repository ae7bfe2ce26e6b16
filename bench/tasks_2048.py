"""Benchmark: a 29-class multilabel ensemble on 2048 x 2048 images (the hand-bone X-ray contest's shape) beside
a multiclass plan of the same size: the graph against the reference loop, and speed and peak memory per image.

Three members (two tiny Unets of different seeds and a tiny FPN, resnet18 encoders), each with identity +
hflip, trained for a few seconds on synthetic overlapping classes at 64 x 64 so that their outputs are not
noise; the multiclass plan has the same architectures with 29 softmax classes. Each measurement runs in its
own process (its own peak RSS). Agreement: ensemble.onnx vs ``export/reference.py`` (float64) on one image:
per-class mask agreement and max |ΔP| (multilabel), label agreement and max |ΔP| (multiclass).

Usage: python bench/tasks_2048.py [--size 2048] [--images 2] [--vote mean] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from engine_vs_eager import cpu_description

CLASSES = [f"bone-{i:02d}" for i in range(29)]
UNET = {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}
FPN = {"decoder_pyramid_channels": 64, "decoder_segmentation_channels": 32}


def prepare(work: Path, vote: str) -> None:
    """Train the members (multilabel and multiclass) and build both plans."""
    from segensemble.export.build import build
    from segensemble.models.registry import ModelSpec
    from segensemble.plan import parse_plan
    from segensemble.synthetic.data import write_multilabel_split
    from segensemble.synthetic.trainer import load_split_arrays, save_checkpoint, train_tiny

    split = write_multilabel_split(work, 24, CLASSES, (64, 64), seed=0, name="train")
    images, masks = load_split_arrays(split.images, json.loads(split.coco.read_text())["images"], split.masks)
    labels = np.where(masks.any(1), masks.argmax(1), 0)  # the multiclass twin: one label per pixel
    for task, y in (("multilabel", masks), ("multiclass", labels)):
        members = []
        for name, arch, kwargs, seed in (("unet-a", "Unet", UNET, 0), ("unet-b", "Unet", UNET, 1), ("fpn", "FPN", FPN, 2)):
            model, _ = train_tiny(ModelSpec(arch, "resnet18", len(CLASSES), extra=kwargs), images, y, steps=20, seed=seed)
            ckpt = save_checkpoint(model, work / f"{task}-{name}.pth", "state_dict")
            members.append({"name": name, "checkpoint": str(ckpt), "arch": arch, "encoder": "resnet18", "model_kwargs": kwargs,
                            "tta": ["identity", "hflip"]})
        raw = {"task": task, "classes": CLASSES, "members": members, **({"vote": vote} if task == "multilabel" else {})}
        build(parse_plan(raw, work), work / f"build-{task}", quiet=True)


def measure(work: Path, task: str, size: int, images: int) -> dict:
    """Seconds per image (after one warm-up) and this process's peak RSS, in a fresh process."""
    from segensemble.run_config import RunConfig
    from segensemble.runtime.engine import MASKS, Want, open_engine
    from segensemble.synthetic.data import smooth_image

    engine = open_engine(work / f"build-{task}", RunConfig(calls_in_flight=1, max_cost=1e6, max_memory_mb=1e6))
    batch = [smooth_image((size, size), seed) for seed in range(images + 1)]
    engine.predict(batch[:1], Want({MASKS}))
    times = []
    for image in batch[1:]:
        start = time.perf_counter()
        engine.predict([image], Want({MASKS}))
        times.append(time.perf_counter() - start)
    return {"task": task, "seconds_per_image": float(np.median(times)), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def agreement(work: Path, task: str, size: int) -> dict:
    """ensemble.onnx vs the float64 reference loop on one image."""
    from segensemble.export.reference import Reference, decide
    from segensemble.run_config import RunConfig
    from segensemble.runtime.engine import MASKS, PROBS, Want, open_engine
    from segensemble.synthetic.data import smooth_image

    engine = open_engine(work / f"build-{task}", RunConfig(calls_in_flight=1, max_cost=1e6, max_memory_mb=1e6))
    image = smooth_image((size, size), 99)
    got = engine.predict([image], Want({MASKS, PROBS}))[0]
    want, _ = Reference(work / f"build-{task}").predict(engine.manifest, image)
    decision = decide(want, engine.fusion)
    ours = got.masks.astype(bool) if task == "multilabel" else got.labels
    agree = (ours == decision).mean(axis=(1, 2)) if task == "multilabel" else np.array([(ours == decision).mean()])
    return {"task": task, "max_abs_prob": float(np.abs(got.probs - want).max()), "worst_class_agreement": float(agree.min()),
            "mean_agreement": float(agree.mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--vote", default="mean")
    p.add_argument("--work", type=Path)
    p.add_argument("--_step", help=argparse.SUPPRESS)
    p.add_argument("--_task", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._step:
        result = measure(args.work, args._task, args.size, args.images) if args._step == "measure" else agreement(args.work, args._task, args.size)
        print(json.dumps(result))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="tasks2048-"))
    print(f"CPU: {cpu_description()}")
    if not (work / "build-multiclass" / "manifest.json").exists():
        prepare(work, args.vote)
    for step in ("measure", "agreement"):
        for task in ("multilabel", "multiclass"):
            out = subprocess.run([sys.executable, __file__, "--work", str(work), "--size", str(args.size), "--images", str(args.images),
                                  "--_step", step, "--_task", task], capture_output=True, text=True, check=True)
            print(step, out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
