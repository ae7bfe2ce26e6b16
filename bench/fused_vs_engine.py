"""Benchmark: the fused single ONNX graph vs the engine on CPU, same ensemble, same images.

Two members (Unet/resnet18, FPN/mobilenet_v2; random weights), scales 0.75/1.0, TTA identity/hflip
(8 forward passes per image), synthetic images at the fused size. Prints images/s for both, the ratio,
and their agreement. Usage: python bench/fused_vs_engine.py [--images 12] [--size 384]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import onnxruntime as ort
    import torch
    import yaml

    from segensemble.ensemble.engine import Engine
    from segensemble.ensemble.sessions import open_session
    from segensemble.export.build import build
    from segensemble.export.fuse import fuse
    from segensemble.models.registry import ModelSpec, create_model
    from segensemble.plan import load_plan
    from segensemble.synthetic.data import TRASH_CLASSES, make_sample

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--size", type=int, default=384)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        members = [("unet", "Unet", "resnet18"), ("fpn", "FPN", "mobilenet_v2")]
        for name, arch, enc in members:
            torch.save(create_model(ModelSpec(arch, enc, len(TRASH_CLASSES))).state_dict(), work / f"{name}.pth")
        plan = {"classes": TRASH_CLASSES, "defaults": {"scales": [0.75, 1.0], "tta": ["identity", "hflip"],
                                                       "input_size": [args.size, args.size]},
                "members": [{"name": n, "arch": a, "encoder": e, "checkpoint": f"{n}.pth"} for n, a, e in members]}
        (work / "plan.yaml").write_text(yaml.safe_dump(plan))
        result = build(load_plan(work / "plan.yaml"), work / "build", quiet=True)
        fused_path = fuse(result.manifest, work / "build", (args.size, args.size), work / "fused.onnx")
        rng = np.random.default_rng(0)
        images = [make_sample(rng, (args.size, args.size), len(TRASH_CLASSES))[0] for _ in range(args.images)]
        engine = Engine.from_build(work / "build")
        engine.predict(images[:1])
        start = time.perf_counter()
        want = [engine.predict([img])[0] for img in images]
        t_engine = time.perf_counter() - start
        fused = open_session(fused_path)  # the same session options as the engine
        m = result.manifest.members[0]
        norm = [((img / 255.0 - np.asarray(m.mean)) / np.asarray(m.std)).astype(np.float32).transpose(2, 0, 1)[None] for img in images]
        fused.session.run(None, {"image": norm[0]})
        start = time.perf_counter()
        got = [fused.session.run(None, {"image": x}) for x in norm]
        t_fused = time.perf_counter() - start
        diff = max(float(np.abs(g[0][0] - w.probs).max()) for g, w in zip(got, want))
        agree = min(float((g[1][0] == w.labels).mean()) for g, w in zip(got, want))
    print(f"{len(members)} members x 2 scales x 2 TTA = 8 forward passes, {args.images} images of {args.size}x{args.size}, "
          f"onnxruntime {ort.__version__} CPU")
    print(f" engine: {args.images / t_engine:.3f} images/s")
    print(f"  fused: {args.images / t_fused:.3f} images/s  ({t_engine / t_fused:.2f}x the engine)")
    print(f"  agreement: argmax {agree:.4%} (worst image), max |dP| {diff:.1e}")


if __name__ == "__main__":
    main()
