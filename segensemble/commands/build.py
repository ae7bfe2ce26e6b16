"""`ensemble build`: a plan into a build directory."""

from __future__ import annotations

from pathlib import Path

from segensemble.commands.common import default_build_dir


def add(sub) -> None:
    p = sub.add_parser("build", help="export and verify every member of a plan into a build directory",
                       description="Expand plan.yaml into members and views, export each checkpoint to ONNX (reusing an "
                       "earlier export when source sha256 and options match) and verify it against PyTorch, write the whole "
                       "ensemble as one graph (DIR/ensemble.onnx, and DIR/ensemble.<profile>.onnx per profile) verified "
                       "against the reference loop, and write DIR/manifest.json.")
    p.add_argument("plan", type=Path, help="plan.yaml")
    p.add_argument("-o", "--output", type=Path, help="build directory (default: build/ beside the plan)")
    p.add_argument("--check-precision", choices=["bf16", "fp16"], help="measure what this precision costs against fp32 "
                   "(label agreement, max |ΔP|) on --calib-images, else the plan's bn_images, else synthetic images")
    p.add_argument("--calib-images", type=Path, help="images for --check-precision (the first 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from segensemble.export.build import build, plan_table
    from segensemble.export.verify_graph import describe
    from segensemble.plan import load_plan

    out = args.output or default_build_dir(args.plan)
    result = build(load_plan(args.plan), out, quiet=args.quiet)
    print(plan_table(result.manifest))
    for note in result.notes:
        print(f"note: {note}")
    for m in result.manifest.members:
        for e in m.models:
            if e.parity:
                print(f"{e.file}: parity max |Δlogit| {e.parity.max_abs_logit:.2e}, argmax {e.parity.argmax_agreement:.4%}")
    for line in describe(result.manifest.graphs):
        print(line)
    if args.check_precision:
        from segensemble.jobs.precision_check import agreement, sample_images
        from segensemble.jobs.precision_check import describe as describe_precision

        images = sample_images(args.calib_images, [m.bn_images for m in load_plan(args.plan).members if m.bn_images])
        print(describe_precision(agreement(out, args.check_precision, images)))
    print(f"build: {out} ({result.exported} exported, {result.reused} reused); providers here: {', '.join(result.manifest.providers)}")
    print(disk_use(out, result.manifest))
    return 0


def disk_use(out: Path, manifest) -> str:
    """What the build's files weigh, which of them the runtime reads, and what the others are for."""
    graphs = [out / e.file for e in manifest.graphs.values()]
    graph_bytes = sum(p.stat().st_size for p in graphs if p.is_file()) + sum(
        (out / d).stat().st_size for e in manifest.graphs.values() for d in e.data if (out / d).is_file())
    members = {f for member in manifest.members for m in member.models for f in m.files()}
    member_bytes = sum((out / f).stat().st_size for f in members if (out / f).is_file())
    mb = 2**20
    return (f"disk: {(graph_bytes + member_bytes) / mb:.0f} MB; the runtime (predict, evaluate, pseudo-label, serve, Triton) reads "
            f"only the ensemble graphs ({graph_bytes / mb:.0f} MB) and manifest.json; the {len(members)} member exports "
            f"({member_bytes / mb:.0f} MB) are what the next build reuses and what build's check, analyze and tune run one by "
            "one: a folder that only serves can go without them (`ensemble export-triton`, or copy ensemble*.onnx* and "
            "manifest.json)")
