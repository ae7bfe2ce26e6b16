"""`ensemble build`: a plan into a build directory."""

from __future__ import annotations

from pathlib import Path

from segensemble.commands.common import default_build_dir


def add(sub) -> None:
    p = sub.add_parser("build", help="export and verify every member of a plan into a build directory",
                       description="Expand plan.yaml into members and views, export each checkpoint to ONNX (reusing an "
                       "earlier export when source sha256 and options match), verify parity and write DIR/manifest.json.")
    p.add_argument("plan", type=Path, help="plan.yaml")
    p.add_argument("-o", "--output", type=Path, help="build directory (default: build/ beside the plan)")
    p.add_argument("--fuse", action="store_true", help="also write one ONNX graph doing every member, scale, TTA view, "
                   "softmax and the weighted mean (for Triton and GPU serving), verified against the engine")
    p.add_argument("--fuse-size", nargs=2, type=int, metavar=("H", "W"), help="image size of the fused graph "
                   "(default: the members' common input_size)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from segensemble.export.build import build, plan_table
    from segensemble.plan import load_plan

    out = args.output or default_build_dir(args.plan)
    result = build(load_plan(args.plan), out, quiet=args.quiet)
    print(plan_table(result.manifest))
    for note in result.notes:
        print(f"note: {note}")
    for m in result.manifest.members:
        for e in m.models:
            if e.parity:
                print(f"{e.file}: parity max |Δlogit| {e.parity['max_abs_logit']:.2e}, argmax {e.parity['argmax_agreement']:.4%}")
    if args.fuse:
        from segensemble.export.fuse import fuse, verify_fused
        from segensemble.export.triton import common_input_size

        hw = tuple(args.fuse_size) if args.fuse_size else common_input_size(result.manifest)
        fused = fuse(result.manifest, out, hw, out / f"fused_{hw[0]}x{hw[1]}.onnx")
        figures = verify_fused(out, fused, hw)
        print(f"fused graph: {fused} (vs engine: max |ΔP| {figures['max_abs_prob']:.1e}, argmax {figures['argmax_agreement']:.4%})")
    print(f"build: {out} ({result.exported} exported, {result.reused} reused); providers here: {', '.join(result.manifest.providers)}")
    return 0
