"""Benchmark: how long `ensemble demo` takes, what training on crops buys, and the ensemble's gain per seed.

Runs the demo's library function with each --crop value in turn (``none`` = the full 96x96 images, as before
session 4) for each --seeds value, --repeats times, interleaved so a VM's drift hits both alike; prints total
and training seconds, the tuned ensemble's, the plan's equal vote's and the best member's mIoU on the
validation images per run, and the CPU model and flags. Seeds stand in for other CPUs: a CPU with other float
rounding trains the tiny members to other weights, as another seed does.
Usage: python bench/demo_time.py [--crops none 64] [--seeds 0] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from engine_vs_eager import cpu_description

from segensemble.synthetic.demo import DemoOptions, run_demo


def one_run(crop: int | None, seed: int, out: Path) -> str:
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        report = run_demo(DemoOptions(out=out, crop=crop, seed=seed))
    training = [line for line in printed.getvalue().splitlines() if "training so far" in line][-1]
    trained_s = training.rsplit("(", 1)[1].split(" s ")[0]
    best = max(m["miou"] for m in report["members"].values())
    tuned = report["tuned"]["ensemble"]["miou"]
    return (f"crop {crop or 'none':>4}, seed {seed}: {time.perf_counter() - started:5.1f} s total, {trained_s:>3} s training; "
            f"ensemble mIoU {tuned:.4f} (the plan's equal vote {report['ensemble']['miou']:.4f}), best member {best:.4f}, "
            f"gain {tuned - best:+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", nargs="+", default=["none", "64"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(cpu_description())
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for seed in args.seeds:
                for crop in args.crops:
                    print(one_run(None if crop == "none" else int(crop), seed, Path(tmp) / f"{crop}_{seed}_{r}"), flush=True)


if __name__ == "__main__":
    main()
