"""Load test of `ensemble serve` on loopback under overload: goodput (answers in time per second), early
refusals (503 + Retry-After), timeouts (504) and p50/p95 latency of the answers, at concurrency 1, 4 and 16,
with a CPU hog beside the server (a busy machine). Each client sends its next request when the last is
answered; after a 503 it waits the Retry-After it was given (capped at 1 s), as a well-behaved client does.

Builds its own small ensemble (random weights, no downloads) unless --build is given.
Usage: python bench/serve_load.py [--seconds 30] [--size 384] [--timeout-s 5] [--hogs 1] [--build DIR]
Set SERVER_PYTHONPATH to serve another checkout's code with the same build (a before/after comparison).
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import platform
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
    env = {**os.environ, "PYTHONPATH": os.environ["SERVER_PYTHONPATH"]} if os.environ.get("SERVER_PYTHONPATH") else None
    proc = subprocess.Popen([sys.executable, "-m", "segensemble.cli", "serve", "--build", str(build), "--port", str(port),
                             *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            cwd=build.parent)  # not this checkout's folder: `python -m` would import from it first
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


def load(url: str, payloads: list[bytes], concurrency: int, seconds: float) -> dict:
    import httpx

    records = []  # (status, seconds)
    reasons: dict[str, int] = {}
    stop_at = time.perf_counter() + seconds
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        def client_loop(k: int) -> None:
            i = k
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                r = client.post(f"{url}/segment", content=payloads[i % len(payloads)], headers={"Content-Type": "image/png"})
                records.append((r.status_code, time.perf_counter() - t))
                if r.status_code != 200:
                    reasons[f"{r.status_code} {r.text[:70]}"] = reasons.get(f"{r.status_code} {r.text[:70]}", 0) + 1
                i += concurrency
                if r.status_code == 503:
                    time.sleep(min(1.0, float(r.headers.get("retry-after", "1"))))

        client.post(f"{url}/segment", content=payloads[0], headers={"Content-Type": "image/png"})  # warm connection
        start_t = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(client_loop, range(concurrency)))
        wall = time.perf_counter() - start_t
    ok = np.array([s for c, s in records if c == 200]) * 1000
    codes = [c for c, _ in records]
    return {"goodput": len(ok) / wall, "ok": len(ok), "503": codes.count(503), "504": codes.count(504),
            "other": len(codes) - len(ok) - codes.count(503) - codes.count(504),
            "p50": np.percentile(ok, 50) if len(ok) else float("nan"), "p95": np.percentile(ok, 95) if len(ok) else float("nan"),
            "reasons": reasons}


def _hog(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def cpu_line() -> str:
    model, flags = platform.processor() or "?", ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags"))
        flags = " ".join(f for f in flags if f.startswith(("avx", "amx")))
    except (OSError, StopIteration):
        pass
    return f"CPU: {model}, {os.cpu_count()} logical cores; {flags}"


def main() -> None:
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30, help="seconds per concurrency level (default 30)")
    ap.add_argument("--size", type=int, default=384, help="image side and member input size (default 384)")
    ap.add_argument("--timeout-s", type=float, default=5.0, help="the server's deadline per request (default 5)")
    ap.add_argument("--hogs", type=int, default=1, help="CPU-bound processes running beside the server (default 1)")
    ap.add_argument("--build", type=Path, help="serve this build instead of making one")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    payloads = []
    for _ in range(4):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)).save(buf, format="PNG")
        payloads.append(buf.getvalue())
    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        build = args.build or make_build(Path(tmp), args.size)
        stop = multiprocessing.Event()
        hogs = [multiprocessing.Process(target=_hog, args=(stop,), daemon=True) for _ in range(args.hogs)]
        for h in hogs:
            h.start()
        print(f"{args.seconds:g} s per level, {args.size}x{args.size} PNG, --timeout-s {args.timeout_s:g}, {args.hogs} CPU hog(s), "
              f"server code: {os.environ.get('SERVER_PYTHONPATH') or 'this checkout'}")
        print(f"{'conc':>5}{'goodput/s':>11}{'200':>6}{'503':>6}{'504':>6}{'other':>6}{'p50 ms':>9}{'p95 ms':>9}")
        proc, url = start(build, ["--timeout-s", str(args.timeout_s)])
        try:
            for conc in (1, 4, 16):
                r = load(url, payloads, conc, args.seconds)
                print(f"{conc:>5}{r['goodput']:>11.2f}{r['ok']:>6}{r['503']:>6}{r['504']:>6}{r['other']:>6}{r['p50']:>9.0f}{r['p95']:>9.0f}")
                for reason, count in sorted(r["reasons"].items(), key=lambda kv: -kv[1])[:3]:
                    print(f"{'':>7}{count} x {reason}")
        finally:
            proc.terminate()
            proc.wait(30)
            stop.set()
            for h in hogs:
                h.join()


if __name__ == "__main__":
    main()
