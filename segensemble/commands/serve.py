"""`ensemble serve`: the same ensemble over HTTP (FastAPI + uvicorn)."""

from __future__ import annotations

from pathlib import Path

from segensemble.commands.common import add_call_flags, add_precision_flags


def add(sub) -> None:
    p = sub.add_parser("serve", help="serve a build over HTTP: POST /segment",
                       description="Start uvicorn with the segensemble app on a build directory. The model loads once at "
                       "start-up and is warmed up; /readyz reports readiness and the active execution providers.")
    p.add_argument("--build", type=Path, required=True, help="build directory written by `ensemble build`")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; expose deliberately)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--token", default=None, help="require Authorization: Bearer TOKEN on /segment and /metrics (16+ characters; "
                   "prefer the SEGENSEMBLE_TOKEN environment variable, which other users cannot read in the process list)")
    p.add_argument("--allowed-hosts", nargs="+", default=None, metavar="HOST", help="Host header values accepted, others get "
                   "400 (default: localhost, 127.0.0.1, ::1 when bound to loopback; any otherwise)")
    p.add_argument("--providers", nargs="+", help="ONNX Runtime providers in order (tensorrt, cuda, cpu)")
    add_call_flags(p, None, "engine calls running at once (default 1: lowest latency; 2 with --intra-op-threads 1 trades latency "
                   "for throughput on a small CPU)")
    p.add_argument("--max-batch", type=int, default=None, metavar="N", help="most requests grouped into one engine call "
                   "(default 8; fewer when a quarter of the deadline or --max-memory-mb cannot hold them at the measured speed)")
    p.add_argument("--batch-window-ms", type=float, default=None, help="how long a request waits for others to batch with (default 5)")
    p.add_argument("--max-queue", type=int, default=None, metavar="N", help="requests admitted (decoding, waiting or running) "
                   "beyond this get 503 + Retry-After (default 64)")
    p.add_argument("--max-body-mb", type=float, default=None, help="largest request body in MiB (default 20)")
    p.add_argument("--max-pixels", type=int, default=None, help="largest image in pixels (default 40000000)")
    p.add_argument("--timeout-s", type=float, default=None, metavar="S", help="a request not answered this long after it "
                   "arrived gets 504, and one the admitted work would keep past it is refused at once with 503 (default 30)")
    p.add_argument("--body-timeout-s", type=float, default=None, help="a request body not received by then gets 408 (default 10)")
    p.add_argument("--max-uploads", type=int, default=None, help="bodies received at once; past it /segment answers 503 (default 64)")
    p.add_argument("--max-cost", type=float, default=None, metavar="MPV", help="refuse (422) an image whose views would cost more "
                   "than this many megapixel-views: each view's pixels, padded to the stride, summed (default 32)")
    p.add_argument("--max-memory-mb", type=float, default=None, help="refuse (422) an image whose estimated activation memory "
                   "exceeds this (default 4096)")
    add_precision_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from segensemble.serve.run import serve
    from segensemble.serve.settings import ServeSettings

    fields = {"calls_in_flight": args.calls_in_flight, "max_batch": args.max_batch, "batch_window_ms": args.batch_window_ms,
              "max_queue": args.max_queue, "max_body_mb": args.max_body_mb, "max_pixels": args.max_pixels, "timeout_s": args.timeout_s,
              "body_timeout_s": args.body_timeout_s, "max_uploads": args.max_uploads, "max_cost": args.max_cost,
              "max_memory_mb": args.max_memory_mb, "token": args.token,
              "allowed_hosts": tuple(args.allowed_hosts) if args.allowed_hosts else None}
    settings = ServeSettings.from_flags(build_dir=args.build, host=args.host,
                                        providers=tuple(args.providers) if args.providers else None,
                                        intra_op_threads=args.intra_op_threads, precision=args.precision,
                                        **{k: v for k, v in fields.items() if v is not None})
    serve(settings, port=args.port)
    return 0
