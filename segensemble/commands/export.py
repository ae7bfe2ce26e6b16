"""`ensemble export`: one checkpoint (or an SWA of several) to a verified ONNX file."""

from __future__ import annotations

import json
from pathlib import Path

from segensemble.commands.common import floats3
from segensemble.constants import IMAGENET_MEAN, IMAGENET_STD
from segensemble.errors import SegEnsembleError


def add(sub) -> None:
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
    p.add_argument("--framework", choices=["smp", "torchvision"], default="smp", help="torchvision: --arch is one of its "
                   "segmentation builders (fcn_resnet50, deeplabv3_resnet101, lraspp_mobilenet_v3_large, ...); default smp")
    p.add_argument("--classes", type=int, help="number of output classes (default: read from the checkpoint)")
    p.add_argument("--in-channels", type=int, default=None, help="input channels (default 3)")
    p.add_argument("--class-names", nargs="+", help="class names, index = class id (stored in the metadata)")
    p.add_argument("--model-kwargs", type=json.loads, default=None, help='extra smp constructor arguments as JSON, '
                   'e.g. \'{"encoder_depth": 3, "decoder_channels": [32, 16, 8]}\'')
    p.add_argument("--mean", nargs=3, default=[str(v) for v in IMAGENET_MEAN], metavar="M",
                   help="normalization mean on 0..1 pixels (default ImageNet)")
    p.add_argument("--std", nargs=3, default=[str(v) for v in IMAGENET_STD], metavar="S", help="normalization std (default ImageNet)")
    p.add_argument("--stride", type=int, default=32, help="inputs are padded to a multiple of this (default 32)")
    p.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), help="fixed export size, used when the "
                   "architecture cannot export dynamic height/width (PSPNet's adaptive pooling)")
    p.add_argument("--trust-pickle", action="store_true", help="allow unpickling a whole saved model (runs code from the file)")
    p.add_argument("--swa", nargs="+", type=Path, metavar="CKPT", help="average these checkpoints' weights uniformly "
                   "(Stochastic Weight Averaging) into one model instead of exporting CHECKPOINT")
    p.add_argument("--bn-images", type=Path, help="with --swa: recompute BatchNorm statistics over the images in this "
                   "folder (without it BN statistics are averaged, not recomputed)")
    p.set_defaults(func=run)


def run(args) -> int:
    from segensemble.export.onnx_export import ExportOptions, export_onnx
    from segensemble.models.checkpoints import PartialSpec, load_checkpoint

    if bool(args.checkpoint) == bool(args.swa):
        raise SegEnsembleError("give exactly one of CHECKPOINT or --swa CKPT CKPT ...")
    if args.bn_images and not args.swa:
        raise SegEnsembleError("--bn-images only applies with --swa")
    spec = PartialSpec(args.arch, args.encoder, args.classes, args.in_channels, args.model_kwargs, args.framework)
    mean, std = floats3(args.mean, "--mean"), floats3(args.std, "--std")
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
    from segensemble.models.swa import SwaReport, average_checkpoints, bn_batches, recalibrate_bn

    loaded = average_checkpoints(list(args.swa), spec, trust_pickle=args.trust_pickle)
    count = 0
    if args.bn_images:
        size = tuple(args.input_size) if args.input_size else None
        count = recalibrate_bn(loaded.model, bn_batches(args.bn_images, size, mean, std, args.stride))
    return loaded, SwaReport(list(args.swa), bool(args.bn_images), count).describe()
