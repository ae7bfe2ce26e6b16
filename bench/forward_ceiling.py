"""Benchmark: the ceiling on engine-vs-eager speed, from one forward pass at a time.

The engine spends almost all its time inside ONNX Runtime's forward passes, so its best possible speed-up
over the eager loop is (PyTorch time for all of an image's forwards) / (ONNX Runtime time for the same).
This times each member of bench/engine_vs_eager.py's ensemble at each view shape on both runtimes (same
weights, same thread count, warm) and prints the per-forward ratio and that ceiling.
Usage: python bench/forward_ceiling.py [--size 512] [--threads 2] [--repeats 6]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from engine_vs_eager import CLASSES, MEMBERS, SCALES, TTA, prepare


def _ms(fn, x, repeats: int) -> float:
    fn(x)
    start = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args()

    import torch

    from segensemble.models.checkpoints import PartialSpec, load_checkpoint
    from segensemble.runtime.sessions import RuntimeOptions, open_session
    from segensemble.views import padded_size, scaled_size

    torch.set_num_threads(args.threads)
    totals = {"torch": 0.0, "ort": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work, 1, args.size)
        print(f"{'member':8} {'input':>9} {'torch ms':>9} {'ORT ms':>8} {'ratio':>6}")
        for name, arch, enc in MEMBERS:
            model = load_checkpoint(work / f"{name}.pth", PartialSpec(arch, enc, CLASSES)).model.eval()
            session = open_session(work / "build" / f"{name}-0.onnx", RuntimeOptions(threads=args.threads))
            for scale in SCALES:
                hw = padded_size(scaled_size((args.size, args.size), scale), 32)
                x = np.random.default_rng(0).standard_normal((1, 3, *hw), dtype=np.float32)
                with torch.no_grad():
                    t_torch = _ms(model, torch.from_numpy(x), args.repeats)
                t_ort = _ms(session.run, x, args.repeats)
                totals["torch"] += t_torch * len(TTA)
                totals["ort"] += t_ort * len(TTA)
                print(f"{name:8} {hw[0]:>4}x{hw[1]:<4} {t_torch:9.1f} {t_ort:8.1f} {t_torch / t_ort:5.2f}x")
    print(f"per image ({len(MEMBERS) * len(SCALES) * len(TTA)} forwards): torch {totals['torch']:.0f} ms, "
          f"ORT {totals['ort']:.0f} ms; ceiling on engine / eager = {totals['torch'] / totals['ort']:.2f}x")


if __name__ == "__main__":
    main()
