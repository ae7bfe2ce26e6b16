"""Benchmark: tiled members in the ensemble graph vs MONAI's eager ``sliding_window_inference``, same work.

Two members (smp Unet/resnet18 and FPN/resnet34, random weights, no downloads), 12 classes, tiles 256 x 256,
overlap 0.25, gaussian blend, identity + hflip on every tile, one image whose sides are multiples of neither
the tile nor the stride. MONAI runs each member in PyTorch with the TTA views averaged as its predictor
(softmax), and the members are averaged, image after image with all the threads; segensemble runs the
build's ensemble.onnx as ``ensemble predict`` does by default (two calls in flight, the threads divided
between them, the default ``--max-memory-mb``: a call past it runs its tiles in chunks,
``runtime/regions.py``). The same ``--images`` images both ways, each way in its own process (its own peak RSS), one
warm-up then the median of ``--runs``; agreement of the two on every pixel.

Usage: python bench/tiles_vs_monai.py [--size 1000 1500] [--images 4] [--runs 3] [--threads 2] [--max-memory-mb MB]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from engine_vs_eager import cpu_description, peak_rss_mb

from segensemble.cost import DEFAULT_MAX_MEMORY_MB

MEMBERS = [("unet", "Unet", "resnet18"), ("fpn", "FPN", "resnet34")]
CLASSES, TILE, OVERLAP = 12, (256, 256), 0.25


def build_random(work: Path, specs, classes: int, tile, overlap: float, tta: list[str]) -> None:
    """A build of seeded random smp members ``(name, arch, encoder)``, every one tiled (no downloads)."""
    import torch

    from segensemble.export.build import build
    from segensemble.models.registry import ModelSpec, create_model
    from segensemble.plan import parse_plan

    torch.manual_seed(0)
    members = []
    for name, arch, encoder in specs:
        torch.save(create_model(ModelSpec(arch, encoder, classes)).state_dict(), work / f"{name}.pth")
        members.append({"name": name, "checkpoint": str(work / f"{name}.pth"), "arch": arch, "encoder": encoder,
                        "tta": tta, "tiles": {"size": list(tile), "overlap": overlap, "blend": "gaussian"}})
    build(parse_plan({"classes": [f"c{i}" for i in range(classes)], "members": members}, work), work / "build", quiet=True)


def prepare(work: Path) -> None:
    build_random(work, MEMBERS, CLASSES, TILE, OVERLAP, ["identity", "hflip"])


def _image(size, k: int = 0):
    from segensemble.synthetic.data import smooth_image

    return smooth_image(tuple(size), 7 + k)


def run_engine(work: Path, size, runs: int, threads: int, images: int, max_memory_mb: float) -> dict:
    """The engine as `ensemble predict` runs it by default: two calls in flight, the threads divided between them."""
    from segensemble.formats.images import ImageRef
    from segensemble.run_config import RunConfig
    from segensemble.runtime.engine import PROBS, Want, open_engine

    inputs = [_image(size, k) for k in range(images)]
    calls = 2 if images > 1 else 1
    engine = open_engine(work / "build", RunConfig(calls_in_flight=calls, intra_op_threads=max(1, threads // calls), max_cost=1e6,
                                                   max_memory_mb=max_memory_mb))
    refs = [ImageRef(str(k), Path(str(k))) for k in range(images)]

    def once():
        return [p.probs for _, p in engine.stream(refs, Want({PROBS}), reader=lambda ref: inputs[int(ref.image_id)])]

    once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        probs = once()
        times.append(time.perf_counter() - start)
    np.save(work / "engine.npy", np.stack(probs))
    return {"way": "segensemble", "seconds": float(np.median(times)), "calls_in_flight": calls,
            "tile_batch": engine.tile_batch(tuple(size)), "max_memory_mb": max_memory_mb,
            "peak_rss_mb": peak_rss_mb()}


def run_monai(work: Path, size, runs: int, threads: int, images: int, max_memory_mb: float) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    from segensemble.constants import IMAGENET_MEAN, IMAGENET_STD
    from segensemble.models.checkpoints import PartialSpec, load_checkpoint

    torch.set_num_threads(threads)
    models = [load_checkpoint(work / f"{name}.pth", PartialSpec(arch, encoder, CLASSES)).model.eval() for name, arch, encoder in MEMBERS]
    xs = [torch.from_numpy((((_image(size, k) / 255.0) - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)[None]
                           .astype(np.float32)) for k in range(images)]

    def member(model):
        return lambda t: (model(t).softmax(1) + model(t.flip(-1)).softmax(1).flip(-1)) / 2

    def once():
        with torch.inference_mode():
            return [(sum(sliding_window_inference(x, TILE, 4, member(m), overlap=OVERLAP, mode="gaussian") for m in models) / len(models))[0]
                    for x in xs]

    once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        probs = once()
        times.append(time.perf_counter() - start)
    np.save(work / "monai.npy", np.stack([p.numpy() for p in probs]))
    return {"way": "monai", "seconds": float(np.median(times)), "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, nargs=2, default=[1000, 1500])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=4, help="images per run, the same for both ways")
    p.add_argument("--max-memory-mb", type=float, default=DEFAULT_MAX_MEMORY_MB, help="the engine's budget (default: predict's)")
    p.add_argument("--work", type=Path)
    p.add_argument("--_way", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._way:
        run = run_engine if args._way == "segensemble" else run_monai
        print(json.dumps(run(args.work, args.size, args.runs, args.threads, args.images, args.max_memory_mb)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="tiles-monai-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_description()}; {args.threads} threads; {args.images} images {args.size[0]}x{args.size[1]}, tiles {TILE}, "
          f"overlap {OVERLAP}")
    if not (work / "build" / "manifest.json").exists():
        prepare(work)
    results = {}
    for way in ("monai", "segensemble"):
        out = subprocess.run([sys.executable, __file__, "--work", str(work), "--size", *map(str, args.size), "--runs", str(args.runs),
                              "--threads", str(args.threads), "--images", str(args.images),
                              "--max-memory-mb", str(args.max_memory_mb), "--_way", way],
                             capture_output=True, text=True, check=True)
        results[way] = json.loads(out.stdout.strip().splitlines()[-1])
        print(results[way])
    a, b = np.load(work / "engine.npy"), np.load(work / "monai.npy")
    print(f"segensemble {results['monai']['seconds'] / results['segensemble']['seconds']:.2f}x MONAI; max |dP| {np.abs(a - b).max():.2e}; "
          f"argmax agreement {(a.argmax(1) == b.argmax(1)).mean():.5%}")


if __name__ == "__main__":
    main()
