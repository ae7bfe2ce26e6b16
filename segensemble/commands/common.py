"""Flags and helpers shared by the runtime commands (predict, evaluate, pseudo-label, serve)."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from segensemble.cost import DEFAULT_MAX_MEGAPIXEL_VIEWS, DEFAULT_MAX_MEMORY_MB, Budget
from segensemble.errors import SegEnsembleError


def floats3(text: list[str], flag: str) -> tuple[float, float, float]:
    if len(text) != 3:
        raise SegEnsembleError(f"{flag}: expected 3 numbers, got {len(text)}")
    try:
        values = tuple(float(t) for t in text)
    except ValueError:
        raise SegEnsembleError(f"{flag}: expected 3 numbers, got {' '.join(text)}") from None
    if not all(math.isfinite(v) for v in values) or (flag == "--std" and min(values) <= 0):
        raise SegEnsembleError(f"{flag}: every value must be a finite number{' > 0' if flag == '--std' else ''} (got {' '.join(text)})")
    return values  # type: ignore[return-value]


def default_build_dir(plan: Path) -> Path:
    return plan.parent / "build"


def build_or_given(plan: Path | None, build_dir: Path | None, quiet: bool) -> Path:
    """``build_dir`` as given, or else ``plan`` built first (reusing exports) into build/ beside it."""
    if build_dir is not None:
        return build_dir
    from segensemble.export.build import build
    from segensemble.plan import load_plan

    build_dir = default_build_dir(plan)
    build(load_plan(plan), build_dir, quiet=quiet)
    return build_dir


def add_runtime_flags(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--build", type=Path, help="a build directory written by `ensemble build`")
    src.add_argument("--plan", type=Path, help="plan.yaml: build it first (into build/ beside it, reusing exports)")
    p.add_argument("--providers", nargs="+", help="ONNX Runtime providers in order (tensorrt, cuda, cpu; default: best available)")
    p.add_argument("--workers", type=int, default=2, help="image batches in flight at once (default 2: on a CPU two engine calls "
                   "with half the threads each beat one with all of them; see docs/benchmarks.md)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads per worker (default 0: the CPU count "
                   "divided among the workers)")
    p.add_argument("--profile", help="run a named lighter profile of the plan (profiles: in plan.yaml) instead of the whole ensemble")
    p.add_argument("--batch-images", type=int, default=1,
                   help="consecutive same-size images per graph run (default 1: fastest and leanest on CPU; raise it on a GPU)")
    add_precision_flags(p)
    add_budget_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_precision_flags(p) -> None:
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="fp32 (default, exact); bf16: OpenVINO on a CPU with AVX512_BF16 or AMX (faster, measure the cost "
                   "with `ensemble evaluate --precision bf16`); fp16: TensorRT on a GPU")
    p.add_argument("--trt-fp16", action="store_true", help="TensorRT in fp16 (same as --precision fp16 where TensorRT runs)")


def add_budget_flags(p) -> None:
    p.add_argument("--max-cost", type=float, default=DEFAULT_MAX_MEGAPIXEL_VIEWS, metavar="MPV",
                   help="refuse an image whose views would cost more than this many megapixel-views (each view's pixels, "
                   f"padded to the stride, summed; default {DEFAULT_MAX_MEGAPIXEL_VIEWS:g})")
    p.add_argument("--max-memory-mb", type=float, default=DEFAULT_MAX_MEMORY_MB,
                   help=f"refuse an image whose estimated activation memory exceeds this (default {DEFAULT_MAX_MEMORY_MB:g})")


def budget(args) -> Budget:
    if not (args.max_cost > 0 and args.max_memory_mb > 0) or not all(map(math.isfinite, (args.max_cost, args.max_memory_mb))):
        raise SegEnsembleError("--max-cost and --max-memory-mb must be finite and > 0")
    return Budget(args.max_cost, args.max_memory_mb)


def open_engine(args):
    """The engine the flags ask for: local (one ONNX Runtime session over the build's graph) or Ray actors."""
    from segensemble.runtime.engine import Engine
    from segensemble.runtime.sessions import RuntimeOptions

    build_dir = build_or_given(args.plan, args.build, args.quiet)
    if getattr(args, "engine", "local") == "ray":  # the models load in the actors only
        from segensemble.dist.ray_engine import RayEngine

        return RayEngine(build_dir, address=args.address, actors=args.actors, gpus_per_actor=args.gpus_per_actor,
                         threads_per_actor=args.threads or 1, profile=args.profile, budget=budget(args), precision=args.precision)
    workers = max(1, args.workers)
    threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
    options = RuntimeOptions(tuple(args.providers) if args.providers else None, threads, trt_fp16=args.trt_fp16,
                             precision=args.precision, streams=workers)
    engine = Engine.from_build(build_dir, options, max_batch=max(1, args.batch_images), workers=workers, profile=args.profile,
                               budget=budget(args))
    if engine.fell_back:
        print("warning: a GPU provider was requested but ONNX Runtime fell back to CPU", file=sys.stderr)
    return engine


def image_refs(args, output_dirs: dict[str, Path | None] | None = None):
    """The images the command runs on; ``output_dirs`` (flag -> folder) must lie outside a listed image folder."""
    from segensemble.formats.coco import coco_images
    from segensemble.formats.images import IMAGE_SUFFIXES, find_images
    from segensemble.formats.paths import check_outside

    if args.coco:
        return coco_images(args.coco, args.images)
    for flag, folder in (output_dirs or {}).items():
        if folder is not None:
            check_outside(folder, flag, args.images)
    refs, others = find_images(args.images)
    if others:  # a skipped file is always named
        shown = ", ".join(str(p.relative_to(args.images)) for p in others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        print(f"note: {len(others)} file(s) under {args.images} are not {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images and are "
              f"not predicted: {shown}", file=sys.stderr)
    return refs


def add_dist_flags(p) -> None:
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="run locally (default) or on a Ray cluster")
    p.add_argument("--address", help="with --engine ray: Ray cluster address (default: start or join a local one)")
    p.add_argument("--actors", type=int, default=2, help="with --engine ray: engine actors (default 2)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, help="with --engine ray: GPUs per actor (default 0)")
