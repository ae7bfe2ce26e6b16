"""Command line: ``ensemble <command>`` and ``pseudo-label``. Each handler parses, calls one library
function and prints; torch is imported only by the commands that export (export, build, demo)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from segensemble.errors import SegEnsembleError

IMAGENET = ["0.485", "0.456", "0.406"], ["0.229", "0.224", "0.225"]


def _floats3(text: list[str], flag: str) -> tuple[float, float, float]:
    if len(text) != 3:
        raise SegEnsembleError(f"{flag}: expected 3 numbers, got {len(text)}")
    return tuple(float(t) for t in text)  # type: ignore[return-value]


# ---------------------------------------------------------------- export
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export one checkpoint (or an SWA of several) to a verified ONNX file",
                       description="Export a segmentation-models-pytorch checkpoint to ONNX (input `image` N,3,H,W float32 "
                       "normalized; output `logits` N,C,H,W; dynamic batch/height/width), verify it against PyTorch at two "
                       "input shapes (max |Δlogit| ≤ 1e-3, argmax agreement ≥ 99.9%) and embed metadata.")
    p.add_argument("checkpoint", nargs="?", type=Path, help=".pt/.pth state_dict (plain, nested, DataParallel or Lightning), "
                   "an smp save_pretrained directory, or a pickled model (needs --trust-pickle)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .onnx file to write")
    p.add_argument("--arch", help="smp architecture (Unet, UnetPlusPlus, FPN, DeepLabV3Plus, PSPNet, Segformer, ...); "
                   "not needed for smp directories")
    p.add_argument("--encoder", help="smp encoder name (resnet34, efficientnet-b0, mit_b0, ...)")
    p.add_argument("--classes", type=int, help="number of output classes (default: read from the checkpoint)")
    p.add_argument("--in-channels", type=int, default=None, help="input channels (default 3)")
    p.add_argument("--class-names", nargs="+", help="class names, index = class id (stored in the metadata)")
    p.add_argument("--model-kwargs", type=json.loads, default=None, help='extra smp constructor arguments as JSON, '
                   'e.g. \'{"encoder_depth": 3, "decoder_channels": [32, 16, 8]}\'')
    p.add_argument("--mean", nargs=3, default=IMAGENET[0], metavar="M", help="normalization mean on 0..1 pixels (default ImageNet)")
    p.add_argument("--std", nargs=3, default=IMAGENET[1], metavar="S", help="normalization std (default ImageNet)")
    p.add_argument("--stride", type=int, default=32, help="inputs are padded to a multiple of this (default 32)")
    p.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), help="fixed export size, used when the "
                   "architecture cannot export dynamic height/width (PSPNet's adaptive pooling)")
    p.add_argument("--trust-pickle", action="store_true", help="allow unpickling a whole saved model (runs code from the file)")
    p.add_argument("--swa", nargs="+", type=Path, metavar="CKPT", help="average these checkpoints' weights uniformly "
                   "(Stochastic Weight Averaging) into one model instead of exporting CHECKPOINT")
    p.add_argument("--bn-images", type=Path, help="with --swa: recompute BatchNorm statistics over the images in this "
                   "folder (without it BN statistics are averaged, not recomputed)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    from segensemble.export.onnx_export import ExportOptions, export_onnx
    from segensemble.models.checkpoints import PartialSpec, load_checkpoint

    if bool(args.checkpoint) == bool(args.swa):
        raise SegEnsembleError("give exactly one of CHECKPOINT or --swa CKPT CKPT ...")
    if args.bn_images and not args.swa:
        raise SegEnsembleError("--bn-images only applies with --swa")
    spec = PartialSpec(args.arch, args.encoder, args.classes, args.in_channels, args.model_kwargs)
    mean, std = _floats3(args.mean, "--mean"), _floats3(args.std, "--std")
    if args.swa:
        loaded, note = _swa(args, spec, mean, std)
    else:
        loaded, note = load_checkpoint(args.checkpoint, spec, trust_pickle=args.trust_pickle), None
    options = ExportOptions(args.class_names, mean, std, args.stride, tuple(args.input_size) if args.input_size else None)
    report = export_onnx(loaded, args.output, options)
    print(f"exported {loaded.spec.describe()} from {loaded.source} ({loaded.form}) -> {report.path}")
    if note:
        print(note)
    print(f"parity vs PyTorch over shapes {report.parity['shapes']}: max |Δlogit| {report.parity['max_abs_logit']:.2e}, "
          f"argmax agreement {report.parity['argmax_agreement']:.4%}")
    if report.fixed_hw:
        print(f"note: {report.metadata['shape_note']}")
    return 0


def _swa(args, spec, mean, std):
    import numpy as np

    from segensemble.ensemble.views import prepare_input
    from segensemble.images import list_images, read_image
    from segensemble.models.swa import SwaReport, average_checkpoints, recalibrate_bn

    loaded = average_checkpoints(list(args.swa), spec, trust_pickle=args.trust_pickle)
    count = 0
    if args.bn_images:
        m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        size = tuple(args.input_size) if args.input_size else None
        batches = (prepare_input(img, size or img.shape[:2], m, s, args.stride)[None]
                   for img in (read_image(r.path) for r in list_images(args.bn_images)))
        count = recalibrate_bn(loaded.model, batches)
    return loaded, SwaReport(list(args.swa), bool(args.bn_images), count).describe()


# ---------------------------------------------------------------- build
def _add_build(sub) -> None:
    p = sub.add_parser("build", help="export and verify every member of a plan into a build directory",
                       description="Expand plan.yaml into members and views, export each checkpoint to ONNX (reusing an "
                       "earlier export when source sha256 and options match), verify parity and write DIR/manifest.json.")
    p.add_argument("plan", type=Path, help="plan.yaml")
    p.add_argument("-o", "--output", type=Path, help="build directory (default: build/ beside the plan)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_build)


def _default_build_dir(plan: Path) -> Path:
    return plan.parent / "build"


def _cmd_build(args) -> int:
    from segensemble.export.build import build, plan_table
    from segensemble.plan import load_plan

    out = args.output or _default_build_dir(args.plan)
    result = build(load_plan(args.plan), out, quiet=args.quiet)
    print(plan_table(result.manifest))
    for note in result.notes:
        print(f"note: {note}")
    for m in result.manifest.members:
        for e in m.models:
            if e.parity:
                print(f"{e.file}: parity max |Δlogit| {e.parity['max_abs_logit']:.2e}, argmax {e.parity['argmax_agreement']:.4%}")
    print(f"build: {out} ({result.exported} exported, {result.reused} reused); providers here: {', '.join(result.manifest.providers)}")
    return 0


# ---------------------------------------------------------------- runtime helpers
def _add_runtime_flags(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--build", type=Path, help="a build directory written by `ensemble build`")
    src.add_argument("--plan", type=Path, help="plan.yaml: build it first (into build/ beside it, reusing exports)")
    p.add_argument("--providers", nargs="+", help="ONNX Runtime providers in order (tensorrt, cuda, cpu; default: best available)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (default 0 = one per physical core)")
    p.add_argument("--batch-images", type=int, default=4, help="images per engine batch (default 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _engine(args):
    from segensemble.ensemble.engine import Engine
    from segensemble.ensemble.sessions import RuntimeOptions

    build_dir = args.build
    if args.plan:
        from segensemble.export.build import build
        from segensemble.plan import load_plan

        build_dir = _default_build_dir(args.plan)
        build(load_plan(args.plan), build_dir, quiet=args.quiet)
    engine = Engine.from_build(build_dir, RuntimeOptions(tuple(args.providers) if args.providers else None, args.threads))
    if engine.fell_back:
        print("warning: a GPU provider was requested but ONNX Runtime fell back to CPU", file=sys.stderr)
    return engine


def _refs(args):
    from segensemble.images import list_images
    from segensemble.outputs.coco import coco_images

    if args.coco:
        return coco_images(args.coco, args.images)
    return list_images(args.images)


# ---------------------------------------------------------------- predict
def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="predict a folder (or COCO file) of images into the submission CSV",
                       description="Run the ensemble over every image and write the competition CSV "
                       "(image_id,PredictionString: label map resized to --submission-size with nearest neighbour, "
                       "row-major, space-separated). Outputs are written under temporary names and renamed.")
    p.add_argument("images", type=Path, help="folder of images (the image root when --coco is given)")
    p.add_argument("--coco", type=Path, help="COCO json giving the images and their order (file_name relative to IMAGES)")
    p.add_argument("-o", "--output", type=Path, help="submission CSV to write (default submission.csv unless only masks/probs are asked for)")
    p.add_argument("--save-masks", type=Path, metavar="DIR", help="also write full-size PNG label maps here")
    p.add_argument("--save-probs", type=Path, metavar="DIR", help="also write per-image probabilities (float16 npz) here")
    p.add_argument("--submission-size", nargs=2, type=int, default=[256, 256], metavar=("H", "W"), help="CSV mask size (default 256 256)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run after its last written row")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed at the end) instead of stopping")
    _add_runtime_flags(p)
    _add_dist_flags(p)
    p.set_defaults(func=_cmd_predict)


def _add_dist_flags(p) -> None:
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="run locally (default) or on a Ray cluster")
    p.add_argument("--address", help="with --engine ray: Ray cluster address (default: start or join a local one)")
    p.add_argument("--actors", type=int, default=2, help="with --engine ray: engine actors (default 2)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, help="with --engine ray: GPUs per actor (default 0)")


def _cmd_predict(args) -> int:
    from segensemble.ensemble.predict import PredictOptions, predict_to_files

    csv_path = args.output or (None if (args.save_masks or args.save_probs) else Path("submission.csv"))
    engine = _engine(args)
    refs = _refs(args)
    options = PredictOptions(csv_path, args.save_masks, args.save_probs, tuple(args.submission_size), args.resume,
                             args.skip_bad, args.batch_images, not args.quiet)
    stream = _dist_stream(args, engine) if args.engine == "ray" else None
    s = predict_to_files(engine, refs, options, stream=stream)
    print(f"predicted {s.predicted} of {s.total} images in {s.seconds:.1f}s ({s.images_per_second:.2f} img/s, "
          f"{engine.forward_passes} forward passes per image on {', '.join(engine.active_providers)})"
          + (f"; {s.resumed} already done" if s.resumed else ""))
    for image_id, reason in s.skipped:
        print(f"skipped {image_id}: {reason}")
    for label, path in (("submission", s.csv), ("masks", args.save_masks), ("probabilities", args.save_probs)):
        if path:
            print(f"{label}: {path}")
    return 0


def _dist_stream(args, engine):
    from segensemble.dist.ray_engine import ray_stream

    return ray_stream(engine.build_dir, address=args.address, actors=args.actors, gpus_per_actor=args.gpus_per_actor)


# ---------------------------------------------------------------- evaluate
def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="per-class IoU and mIoU of each member and the ensemble on a labelled set",
                       description="Score every member alone and the ensemble on COCO ground truth: dataset-level mIoU "
                       "(one confusion matrix over all pixels) and the competition's per-image average.")
    p.add_argument("--coco", type=Path, required=True, help="COCO json with the ground truth")
    p.add_argument("--images", type=Path, required=True, help="image root (COCO file_name is relative to it)")
    p.add_argument("--unlabeled", choices=["background", "ignore"], help="unannotated pixels: class 0 or ignored "
                   "(default: background when the plan's first class is a background class)")
    p.add_argument("--json", type=Path, default=Path("evaluation.json"), help="report file (default evaluation.json)")
    _add_runtime_flags(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    from segensemble.ensemble.evaluate import EvaluateOptions, evaluate, format_table
    from segensemble.outputs.atomic import write_atomic

    engine = _engine(args)
    report = evaluate(engine, args.coco, args.images, EvaluateOptions(args.unlabeled, args.batch_images, not args.quiet))
    print(format_table(report))
    write_atomic(args.json, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    print(f"report: {args.json}")
    return 0


# ---------------------------------------------------------------- entry points
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ensemble", description="Segmentation ensembles: plan, export, build, predict, "
                                     "evaluate, pseudo-label and serve, on ONNX Runtime.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_export, _add_build, _add_predict, _add_evaluate):
        add(sub)
    for add in _extra_commands():
        add(sub)
    return parser


def _extra_commands():
    from segensemble import cli_more

    return cli_more.COMMANDS


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return _run(args)


def _run(args) -> int:
    try:
        return args.func(args)
    except SegEnsembleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


def pseudo_label_main(argv: list[str] | None = None) -> int:
    """The ``pseudo-label`` console script: same as ``ensemble pseudo-label``."""
    return main(["pseudo-label", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
