"""Benchmark: segensemble's engine vs the plain PyTorch eager loop notebooks use, on the same ensemble.

Three members (Unet/resnet18, FPN/resnet34, DeepLabV3Plus/mobilenet_v2; random weights, no downloads),
two scales (0.75, 1.0) and two TTA views (identity, hflip) over the same images. Each way runs in its own
process so peak RSS is its own; their probabilities are compared afterwards. Prints images/s, the ratio
and peak RSS. Usage: python bench/engine_vs_eager.py [--images 24] [--size 512] [--threads 2]
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

MEMBERS = [("unet", "Unet", "resnet18"), ("fpn", "FPN", "resnet34"), ("dlv3p", "DeepLabV3Plus", "mobilenet_v2")]
SCALES, TTA, CLASSES = [0.75, 1.0], ["identity", "hflip"], 11
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def prepare(work: Path, images: int, size: int) -> None:
    """Random-weight checkpoints, a plan over them, the build, and the test images."""
    import torch
    import yaml

    from segensemble.export.build import build
    from segensemble.models.registry import ModelSpec, create_model
    from segensemble.plan import load_plan
    from segensemble.synthetic.data import TRASH_CLASSES, write_split

    torch.manual_seed(0)
    for name, arch, enc in MEMBERS:
        torch.save(create_model(ModelSpec(arch, enc, CLASSES)).state_dict(), work / f"{name}.pth")
    plan = {"classes": TRASH_CLASSES, "defaults": {"scales": SCALES, "tta": TTA, "input_size": [size, size]},
            "members": [{"name": n, "arch": a, "encoder": e, "checkpoint": f"{n}.pth"} for n, a, e in MEMBERS]}
    (work / "plan.yaml").write_text(yaml.safe_dump(plan))
    build(load_plan(work / "plan.yaml"), work / "build", quiet=True)
    write_split(work, images, TRASH_CLASSES, (size, size), seed=3, name="images")


def run_eager(work: Path, size: int, threads: int) -> dict:
    """Member by member, view by view, batch 1, torch.no_grad: the notebook loop."""
    import torch
    import torch.nn.functional as F

    from segensemble.images import list_images, read_image
    from segensemble.models.checkpoints import PartialSpec, load_checkpoint

    torch.set_num_threads(threads)
    models = [load_checkpoint(work / f"{n}.pth", PartialSpec(a, e, CLASSES)).model for n, a, e in MEMBERS]
    refs = list_images(work / "images")
    out = {}
    start = time.perf_counter()
    with torch.no_grad():
        for ref in refs:
            img = torch.from_numpy(read_image(ref.path)).permute(2, 0, 1).float()[None] / 255.0
            h, w = img.shape[2:]
            total = torch.zeros(1, CLASSES, h, w)
            for model in models:
                member = torch.zeros(1, CLASSES, h, w)
                for s in SCALES:
                    sh, sw = int(np.floor(size * s + 0.5)), int(np.floor(size * s + 0.5))
                    x = F.interpolate(img, size=(sh, sw), mode="bilinear", align_corners=False)
                    x = (x - torch.from_numpy(MEAN)[None, :, None, None]) / torch.from_numpy(STD)[None, :, None, None]
                    ph, pw = -(-sh // 32) * 32, -(-sw // 32) * 32
                    x = F.pad(x, (0, pw - sw, 0, ph - sh))
                    for t in TTA:
                        xt = x.flip(-1) if t == "hflip" else x
                        y = model(xt)
                        y = y.flip(-1) if t == "hflip" else y
                        p = y[:, :, :sh, :sw].softmax(1)
                        member += F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
                total += member / (len(SCALES) * len(TTA))
            out[ref.image_id] = (total / len(models))[0].numpy()
    seconds = time.perf_counter() - start
    np.savez_compressed(work / "eager.npz", **{k.replace(".png", ""): v.astype(np.float16) for k, v in out.items()})
    return {"images_per_s": len(refs) / seconds, "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}


def run_engine(work: Path, threads: int, batch_images: int, workers: int) -> dict:
    from segensemble.ensemble.engine import Engine
    from segensemble.ensemble.sessions import RuntimeOptions
    from segensemble.images import list_images

    engine = Engine.from_build(work / "build", RuntimeOptions(threads=max(1, threads // workers)))
    refs = list_images(work / "images")
    out = {}
    start = time.perf_counter()
    for ref, pred in engine.stream(refs, batch_images=batch_images, workers=workers):
        out[ref.image_id] = pred.probs
    seconds = time.perf_counter() - start
    np.savez_compressed(work / "engine.npz", **{k.replace(".png", ""): v.astype(np.float16) for k, v in out.items()})
    return {"images_per_s": len(refs) / seconds, "seconds": seconds, "peak_rss_mb": _peak_rss_mb(),
            "torch_loaded": "torch" in sys.modules}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-images", type=int, default=1, help="engine images per batch (default 1)")
    ap.add_argument("--workers", type=int, default=1, help="engine batches in flight; each gets threads/workers ORT threads (default 1)")
    ap.add_argument("--mode", choices=["all", "eager", "engine"], default="all", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode != "all":
        if args.mode == "eager":
            result = run_eager(args.work, args.size, args.threads)
        else:
            result = run_engine(args.work, args.threads, args.batch_images, args.workers)
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work, args.images, args.size)
        results = {}
        for mode in ("eager", "engine"):
            done = subprocess.run([sys.executable, __file__, "--mode", mode, "--work", str(work), "--size", str(args.size),
                                   "--threads", str(args.threads), "--batch-images", str(args.batch_images), "--workers", str(args.workers)],
                                  capture_output=True, text=True, check=True)
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        eager, engine = np.load(work / "eager.npz"), np.load(work / "engine.npz")
        diffs = [float(np.abs(eager[k].astype(np.float32) - engine[k].astype(np.float32)).max()) for k in eager.files]
        agree = [float((eager[k].argmax(0) == engine[k].argmax(0)).mean()) for k in eager.files]
    views = len(MEMBERS) * len(SCALES) * len(TTA)
    print(f"ensemble: {len(MEMBERS)} members x {len(SCALES)} scales x {len(TTA)} TTA = {views} forward passes per image, "
          f"{args.images} images of {args.size}x{args.size}, {args.threads} threads,\n"
          f"engine batch {args.batch_images} images, {args.workers} engine worker(s)")
    for mode in ("eager", "engine"):
        r = results[mode]
        print(f"{mode:>7}: {r['images_per_s']:.3f} images/s ({r['seconds']:.1f}s), peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"  ratio: engine / eager = {results['engine']['images_per_s'] / results['eager']['images_per_s']:.2f}x")
    print(f"  agreement: argmax {min(agree):.4%} (worst image), max |dP| {max(diffs):.2e} (float16 storage)")
    print(f"  engine process imported torch: {results['engine']['torch_loaded']}")


if __name__ == "__main__":
    main()
