"""`ensemble export-triton`: a Triton Inference Server model repository for a build."""

from __future__ import annotations

from pathlib import Path


def add(sub) -> None:
    p = sub.add_parser("export-triton", help="write a Triton model repository serving the build's ensemble graph",
                       description="Write REPO/segensemble (the build's ensemble.onnx: uint8 images of any size in, labels, "
                       "probs and each member's probabilities out) and REPO/segensemble_<profile> for each profile: ONNX "
                       "Runtime backend, dynamic batching with a bounded queue, TensorRT on GPU instances, warm-up. Each "
                       "config.pbtxt is validated by parsing; the repository is written to a temporary folder and renamed.")
    p.add_argument("build", type=Path, help="build directory written by `ensemble build`")
    p.add_argument("-o", "--output", type=Path, required=True, help="repository folder to write")
    p.add_argument("--kind", choices=["gpu", "cpu"], default="gpu", help="instance kind (default gpu; TensorRT only on gpu)")
    p.add_argument("--max-batch", type=int, default=8, help="max_batch_size and preferred batch (default 8)")
    p.add_argument("--max-queue", type=int, default=64, help="queue policy max_queue_size (default 64)")
    p.add_argument("--fp16", action="store_true", help="TensorRT in FP16 (default FP32, exact)")
    p.set_defaults(func=run)


def run(args) -> int:
    from segensemble.export.triton import TritonOptions, export_triton

    opts = TritonOptions(kind=args.kind, max_batch=args.max_batch, max_queue=args.max_queue, fp16=args.fp16)
    written = export_triton(args.build, args.output, opts)
    for path in written:
        print(f"wrote {path}")
    print(f"serve: tritonserver --model-repository {args.output}")
    return 0
