"""Load test of `ensemble serve` on loopback: throughput and p50/p95/p99 latency at concurrency 1, 4, 16,
with batching (--max-batch 8), without (--max-batch 1), and with two engine
workers of one ONNX Runtime thread each (--workers 2 --threads 1). Bounded: --requests per level, --seconds cap.

Builds its own small ensemble (random weights, no downloads) unless --build is given.
Usage: python bench/serve_load.py [--requests 48] [--size 256] [--build DIR]
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def make_build(work: Path, size: int) -> Path:
    import torch
    import yaml

    from segensemble.export.build import build
    from segensemble.models.registry import ModelSpec, create_model
    from segensemble.plan import load_plan
    from segensemble.synthetic.data import TRASH_CLASSES

    torch.manual_seed(0)
    members = [("unet", "Unet", "resnet18"), ("fpn", "FPN", "mobilenet_v2")]
    for name, arch, enc in members:
        torch.save(create_model(ModelSpec(arch, enc, len(TRASH_CLASSES))).state_dict(), work / f"{name}.pth")
    plan = {"classes": TRASH_CLASSES, "defaults": {"tta": ["identity", "hflip"], "input_size": [size, size]},
            "members": [{"name": n, "arch": a, "encoder": e, "checkpoint": f"{n}.pth"} for n, a, e in members]}
    (work / "plan.yaml").write_text(yaml.safe_dump(plan))
    build(load_plan(work / "plan.yaml"), work / "build", quiet=True)
    return work / "build"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(build: Path, flags: list[str]):
    import httpx

    port = _port()
    proc = subprocess.Popen([sys.executable, "-m", "segensemble.cli", "serve", "--build", str(build), "--port", str(port),
                             "--max-queue", "256", *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def load(url: str, payloads: list[bytes], concurrency: int, requests: int, seconds: float) -> dict:
    import httpx

    latencies, statuses = [], []
    stop_at = time.perf_counter() + seconds
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        def one(i: int):
            if time.perf_counter() > stop_at:
                return None
            t = time.perf_counter()
            r = client.post(f"{url}/segment", content=payloads[i % len(payloads)], headers={"Content-Type": "image/png"})
            return time.perf_counter() - t, r.status_code

        client.post(f"{url}/segment", content=payloads[0], headers={"Content-Type": "image/png"})  # warm connection
        start_t = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for result in pool.map(one, range(requests)):
                if result:
                    latencies.append(result[0])
                    statuses.append(result[1])
        wall = time.perf_counter() - start_t
    lat = np.array(latencies) * 1000
    return {"done": len(statuses), "ok": statuses.count(200), "lost": len(statuses) - statuses.count(200),
            "rps": len(statuses) / wall, "p50": np.percentile(lat, 50), "p95": np.percentile(lat, 95), "p99": np.percentile(lat, 99)}


def main() -> None:
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=48, help="requests per concurrency level (default 48)")
    ap.add_argument("--seconds", type=float, default=120, help="cap per level (default 120)")
    ap.add_argument("--size", type=int, default=256, help="image side and member input size (default 256)")
    ap.add_argument("--build", type=Path, help="serve this build instead of making one")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    payloads = []
    for _ in range(4):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)).save(buf, format="PNG")
        payloads.append(buf.getvalue())
    with tempfile.TemporaryDirectory() as tmp:
        build = args.build or make_build(Path(tmp), args.size)
        print(f"{args.requests} requests per level, {args.size}x{args.size} PNG, loopback, 127.0.0.1")
        print(f"{'batching':<26}{'conc':>5}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'lost':>6}")
        configs = (("on (8)", ["--max-batch", "8"]), ("off (1)", ["--max-batch", "1"]),
                   ("on, 2 workers x 1 thread", ["--max-batch", "8", "--workers", "2", "--threads", "1"]))
        for label, flags in configs:
            proc, url = start(build, flags)
            try:
                base = None
                for conc in (1, 4, 16):
                    r = load(url, payloads, conc, args.requests, args.seconds)
                    base = base or r["rps"]
                    print(f"{label:<26}{conc:>5}{r['rps']:>8.2f}{r['p50']:>9.0f}{r['p95']:>9.0f}{r['p99']:>9.0f}{r['lost']:>6}"
                          f"   ({r['rps'] / base:.2f}x conc 1)")
            finally:
                proc.terminate()
                proc.wait(30)


if __name__ == "__main__":
    main()
