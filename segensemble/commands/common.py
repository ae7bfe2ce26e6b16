"""Flags and helpers shared by the runtime commands (predict, evaluate, pseudo-label, serve)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from segensemble.cost import DEFAULT_MAX_MEGAPIXEL_VIEWS, DEFAULT_MAX_MEMORY_MB
from segensemble.errors import SegEnsembleError

if TYPE_CHECKING:
    from segensemble.run_config import RunConfig


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


class Deprecated(argparse.Action):
    """An old flag spelling kept for one release: sets the new flag's value and says what replaced it."""

    def __init__(self, option_strings, dest, replaced_by: str, const=None, **kwargs):
        self.replaced_by = replaced_by
        kwargs["default"] = argparse.SUPPRESS  # the new flag's default stands
        super().__init__(option_strings, dest, const=const, **{**kwargs, "help": argparse.SUPPRESS})  # said when used

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated; use {self.replaced_by}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.const is not None else values)


def add_call_flags(p, calls_default: int, calls_help: str) -> None:
    """How the graph runs: calls in flight and ONNX Runtime threads per call (RunConfig's fields)."""
    p.add_argument("--calls-in-flight", type=int, default=calls_default, metavar="N", help=calls_help)
    p.add_argument("--workers", dest="calls_in_flight", type=int, action=Deprecated, replaced_by="--calls-in-flight")
    p.add_argument("--intra-op-threads", type=int, default=0, metavar="N", help="ONNX Runtime threads per call (default 0: the CPU's "
                   "cores divided among the calls in flight; with one call, ONNX Runtime's own default)")
    p.add_argument("--threads", dest="intra_op_threads", type=int, action=Deprecated, replaced_by="--intra-op-threads")


def add_runtime_flags(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--build", type=Path, help="a build directory written by `ensemble build`")
    src.add_argument("--plan", type=Path, help="plan.yaml: build it first (into build/ beside it, reusing exports)")
    p.add_argument("--providers", nargs="+", help="ONNX Runtime providers in order (tensorrt, cuda, cpu; default: best available)")
    add_call_flags(p, 2, "graph runs going at once (default 2: on a CPU two calls with half the threads each beat one with "
                   "all of them; see docs/benchmarks.md)")
    p.add_argument("--profile", help="run a named lighter profile of the plan (profiles: in plan.yaml) instead of the whole ensemble")
    p.add_argument("--images-per-call", type=int, default=1, metavar="N",
                   help="consecutive same-size images stacked into one graph run (default 1: fastest and leanest on CPU; "
                   "raise it on a GPU)")
    p.add_argument("--batch-images", dest="images_per_call", type=int, action=Deprecated, replaced_by="--images-per-call")
    add_precision_flags(p)
    add_budget_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_precision_flags(p) -> None:
    from segensemble.run_config import PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default, exact); bf16: OpenVINO on a CPU with AVX512_BF16 or AMX (faster, measure the cost "
                   "with `ensemble evaluate --precision bf16`); fp16: TensorRT on a GPU")
    p.add_argument("--trt-fp16", dest="precision", nargs=0, action=Deprecated, const="fp16", replaced_by="--precision fp16")


def add_budget_flags(p) -> None:
    p.add_argument("--max-cost", type=float, default=DEFAULT_MAX_MEGAPIXEL_VIEWS, metavar="MPV",
                   help="refuse an image whose views would cost more than this many megapixel-views (each view's pixels, "
                   f"padded to the stride, summed; default {DEFAULT_MAX_MEGAPIXEL_VIEWS:g})")
    p.add_argument("--max-memory-mb", type=float, default=DEFAULT_MAX_MEMORY_MB,
                   help=f"refuse an image whose estimated activation memory exceeds this (default {DEFAULT_MAX_MEMORY_MB:g}); "
                   "where every member is tiled, a larger image runs within it instead: its tiles in chunks and, if still too "
                   "large, region by region")
    p.add_argument("--max-pixels", type=int, default=None, help="refuse an input image of more pixels than this (default and "
                   "most for PNG/JPEG: Pillow's limit, 178956970; TIFF with the tiff extra may go beyond)")
    p.add_argument("--tiff-level", type=int, default=0, metavar="N",
                   help="read level N of a pyramidal TIFF (0, the default: full resolution; needs the tiff extra)")


def run_config(args) -> RunConfig:
    """The RunConfig the runtime flags describe (validated there, worded as the flags here)."""
    from segensemble.run_config import RunConfig

    fields = {"providers": tuple(args.providers) if getattr(args, "providers", None) else None, "precision": args.precision,
              "intra_op_threads": getattr(args, "intra_op_threads", 0), "calls_in_flight": getattr(args, "calls_in_flight", 1),
              "images_per_call": getattr(args, "images_per_call", 1), "max_cost": args.max_cost, "max_memory_mb": args.max_memory_mb,
              "max_pixels": getattr(args, "max_pixels", None), "tiff_level": getattr(args, "tiff_level", 0)}
    try:
        return RunConfig(**fields)
    except SegEnsembleError as exc:
        field, _, rest = str(exc).partition(": ")
        raise SegEnsembleError(f"--{field.replace('_', '-')}: {rest}") from None


def open_engine(args):
    """The engine the flags ask for: local (one ONNX Runtime session over the build's graph) or Ray actors."""
    from segensemble.runtime.engine import open_engine as open_local

    config = run_config(args)
    build_dir = build_or_given(args.plan, args.build, args.quiet)
    if getattr(args, "engine", "local") == "ray":  # the models load in the actors only
        from segensemble.dist.ray_engine import RayEngine

        return RayEngine(build_dir, config, address=args.address, actors=args.actors, gpus_per_actor=args.gpus_per_actor,
                         profile=args.profile)
    engine = open_local(build_dir, config, args.profile)
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
