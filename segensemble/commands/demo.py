"""`ensemble demo`: the whole product on synthetic data it makes itself."""

from __future__ import annotations

from pathlib import Path


def add(sub) -> None:
    p = sub.add_parser("demo", help="generate data, train tiny members, build, tune the vote, evaluate, predict, pseudo-label",
                       description="End to end on a synthetic dataset made on the spot (no downloads): trains tiny "
                       "members on CPU, writes a plan using every axis, builds, lets `ensemble analyze` choose member and "
                       "per-class weights on held-out tune images, evaluates each member, the plan's vote and the tuned "
                       "vote on validation images, predicts the test set into a submission CSV, writes pseudo-labels and "
                       "prints how to serve.")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="working folder (default demo-out)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed (default 0): reproducible on one CPU kind; another CPU's float rounding trains other weights")
    p.add_argument("--steps", type=int, default=120, help="training steps per tiny model (default 120)")
    p.add_argument("--task", choices=["multiclass", "multilabel"], default="multiclass",
                   help="multiclass (default: trash-like classes, one label per pixel) or multilabel (overlapping classes "
                   "as bones in an X-ray: sigmoid members, mean Dice, a per-class RLE submission)")
    p.set_defaults(func=run)


def run(args) -> int:
    from segensemble.synthetic.demo import DemoOptions, run_demo

    run_demo(DemoOptions(out=args.out, seed=args.seed, steps=args.steps, task=args.task))
    return 0
