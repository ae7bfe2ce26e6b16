"""Benchmark: segensemble's engine (the ensemble graph) vs the PyTorch loops notebooks run, on one ensemble.

Three members (Unet/resnet18, FPN/resnet34, DeepLabV3Plus/mobilenet_v2; random weights, no downloads),
two scales (0.75, 1.0) and two TTA views (identity, hflip) over the same images. Each way runs in its own
process (its own peak memory); probabilities are compared afterwards against the eager fp32 loop.

  --device cpu   eager loop vs the engine (ONNX Runtime CPU); prints the CPU model and flags; with
                 --precision bf16 also the engine on OpenVINO in bf16 (skipped, saying why, on a CPU without
                 AVX512_BF16 or AMX), its agreement measured against the fp32 engine
  --device cuda  on one GPU: eager fp32 loop (batch 1 per view), a competent notebook (TTA views of a scale
                 batched, fp16 autocast), the engine on CUDA fp32, TensorRT fp32 and TensorRT fp16;
                 images/s, ratios, argmax agreement, peak GPU memory

The engine's "host share" is the part of its wall time spent outside ``InferenceSession.run`` (decode,
batching, copies, the stream), measured with one worker.
Usage: python bench/engine_vs_eager.py [--device cpu] [--images 16] [--size 512] [--threads 2] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MEMBERS = [("unet", "Unet", "resnet18"), ("fpn", "FPN", "resnet34"), ("dlv3p", "DeepLabV3Plus", "mobilenet_v2")]
SCALES, TTA, CLASSES = [0.75, 1.0], ["identity", "hflip"], 11
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
CPU_MODES = ["eager", "engine"]
CUDA_MODES = ["eager", "notebook", "engine-cuda", "engine-trt", "engine-trt-fp16"]


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (reset by exec; ru_maxrss is not, and would carry the parent's peak from
    making the image), ru_maxrss where /proc is missing."""
    try:
        line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_description() -> str:
    """CPU model and the flags that matter for these kernels (AVX-512, AMX, bf16)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    return f"{model}; flags: {' '.join(wanted) or 'none of avx2/avx512/amx'}"


def prepare(work: Path, images: int, size: int) -> None:
    """Random-weight checkpoints, a plan over them, the build (with ensemble.onnx), and the test images."""
    import torch
    import yaml

    from segensemble.export.build import build
    from segensemble.models.registry import ModelSpec, create_model
    from segensemble.plan import load_plan
    from segensemble.synthetic.data import TRASH_CLASSES, write_split

    torch.manual_seed(0)
    for name, arch, enc in MEMBERS:
        torch.save(create_model(ModelSpec(arch, enc, CLASSES)).state_dict(), work / f"{name}.pth")
    plan = {"classes": TRASH_CLASSES, "defaults": {"scales": SCALES, "tta": TTA, "input_size": [size, size]},
            "members": [{"name": n, "arch": a, "encoder": e, "checkpoint": f"{n}.pth"} for n, a, e in MEMBERS]}
    (work / "plan.yaml").write_text(yaml.safe_dump(plan))
    build(load_plan(work / "plan.yaml"), work / "build", quiet=True)
    write_split(work, images, TRASH_CLASSES, (size, size), seed=3, name="images")


def run_torch(work: Path, size: int, threads: int, device: str, batched_fp16: bool) -> dict:
    """The notebook loops. Eager: member by member, view by view, batch 1, fp32. Competent (batched_fp16):
    the TTA views of a scale as one batch under fp16 autocast."""
    import torch
    import torch.nn.functional as F

    from segensemble.formats.images import list_images, read_image
    from segensemble.models.checkpoints import PartialSpec, load_checkpoint

    torch.set_num_threads(threads)
    dev = torch.device(device)
    models = [load_checkpoint(work / f"{n}.pth", PartialSpec(a, e, CLASSES)).model.to(dev).eval() for n, a, e in MEMBERS]
    mean, std = torch.from_numpy(MEAN).to(dev)[None, :, None, None], torch.from_numpy(STD).to(dev)[None, :, None, None]
    refs = list_images(work / "images")
    out = _Probs(work, "torch_fp16" if batched_fp16 else "eager")

    def views(model, x):
        if batched_fp16:
            with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=dev.type == "cuda"):
                y = model(torch.cat([x, x.flip(-1)])).float()
            return [y[:1], y[1:].flip(-1)]
        return [model(x) if t == "identity" else model(x.flip(-1)).flip(-1) for t in TTA]

    def predict(img):
        h, w = img.shape[2:]
        total = torch.zeros(1, CLASSES, h, w, device=dev)
        for model in models:
            member = torch.zeros(1, CLASSES, h, w, device=dev)
            for s in SCALES:
                sh = sw = int(np.floor(size * s + 0.5))
                x = F.interpolate(img, size=(sh, sw), mode="bilinear", align_corners=False)
                x = F.pad((x - mean) / std, (0, -(-sw // 32) * 32 - sw, 0, -(-sh // 32) * 32 - sh))
                for y in views(model, x):
                    member += F.interpolate(y[:, :, :sh, :sw].softmax(1), size=(h, w), mode="bilinear", align_corners=False)
            total += member / (len(SCALES) * len(TTA))
        return (total / len(models))[0]

    with torch.no_grad():
        predict(torch.zeros(1, 3, size, size, device=dev))  # warm-up (cuDNN autotune, allocator)
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for ref in refs:
            img = torch.from_numpy(read_image(ref.path)).to(dev).permute(2, 0, 1).float()[None] / 255.0
            out.put(ref.image_id, predict(img).cpu().numpy())
        seconds = time.perf_counter() - start
    result = {"images_per_s": len(refs) / seconds, "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}
    if dev.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def run_engine(work: Path, threads: int, batch_images: int, workers: int, providers: list[str] | None, trt_fp16: bool,
               name: str, precision: str = "fp32") -> dict:
    from segensemble.formats.images import list_images
    from segensemble.runtime.engine import PROBS, Engine, Want
    from segensemble.runtime.sessions import RuntimeOptions

    options = RuntimeOptions(tuple(providers) if providers else None, threads=max(1, threads // workers), trt_fp16=trt_fp16,
                             precision=precision, streams=workers)
    engine = Engine.from_build(work / "build", options, images_per_call=batch_images, workers=workers)
    refs = list_images(work / "images")
    inside = _time_runs(engine.graph)
    for _ in engine.stream(refs[:1], Want({PROBS})):  # warm-up (arena, TensorRT engine build or cache load)
        pass
    inside.clear()
    gpu = _GpuMemory() if engine.graph.device == "cuda" else None
    out, rss = _Probs(work, name), []
    start = time.perf_counter()
    for i, (ref, pred) in enumerate(engine.stream(refs, Want({PROBS}), batch_images=batch_images, workers=workers)):
        out.put(ref.image_id, pred.probs)
        if i + 1 in (max(1, len(refs) // 4), len(refs)):
            rss.append(_rss_mb())
    seconds = time.perf_counter() - start
    result = {"images_per_s": len(refs) / seconds, "seconds": seconds, "peak_rss_mb": _peak_rss_mb(),
              "torch_loaded": "torch" in sys.modules, "providers": engine.active_providers, "precision": engine.precision,
              "run_share": sum(inside) / (seconds * workers), "rss_quarter_end_mb": rss}
    if gpu:
        result["peak_gpu_mb"] = gpu.stop()
    return result


def _time_runs(graph) -> list[float]:
    """Wrap the session's run to add up the time spent inside ONNX Runtime."""
    spent: list[float] = []
    real = graph.run

    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - t)

    graph.run = timed
    return spent


class _GpuMemory:
    """Peak device memory used, sampled from nvidia-smi (ONNX Runtime has no peak counter of its own)."""

    def __init__(self):
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.is_set():
            done = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True)
            if done.returncode == 0:
                self.peak = max(self.peak, float(done.stdout.split()[0]))
            self._stop.wait(0.05)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


class _Probs:
    """Each image's probabilities as float16 on disk, one file per image, so memory stays what the run uses."""

    def __init__(self, work: Path, name: str):
        self.folder = work / name
        self.folder.mkdir(exist_ok=True)

    def put(self, image_id: str, probs: np.ndarray) -> None:
        np.save(self.folder / f"{Path(image_id).stem}.npy", probs.astype(np.float16))


def _rss_mb() -> float:
    """Resident memory now (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_mode(args, work: Path, mode: str) -> dict:
    if mode in ("eager", "notebook"):
        return run_torch(work, args.size, args.threads, args.device, batched_fp16=mode == "notebook")
    if mode == "engine-bf16":
        return run_engine(work, args.threads, args.batch_images, args.workers, None, False, mode, precision="bf16")
    providers = {"engine": None, "engine-cuda": ["cuda"], "engine-trt": ["tensorrt", "cuda"], "engine-trt-fp16": ["tensorrt", "cuda"]}[mode]
    return run_engine(work, args.threads, args.batch_images, args.workers, providers, mode == "engine-trt-fp16", mode)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-images", type=int, default=1, help="engine images per graph run (default 1)")
    ap.add_argument("--workers", type=int, default=1, help="engine batches in flight; each gets threads/workers ORT threads (default 1)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="on CPU, bf16 adds the engine on OpenVINO in bf16")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode == "prepare":
        prepare(args.work, args.images, args.size)
        return
    if args.mode:
        print(json.dumps(_run_mode(args, args.work, args.mode)))
        return
    modes = CPU_MODES if args.device == "cpu" else CUDA_MODES
    if args.device == "cpu" and args.precision == "bf16":
        from segensemble.runtime.openvino_session import BF16_FLAGS, cpu_flags

        if cpu_flags() & set(BF16_FLAGS):
            modes = [*modes, "engine-bf16"]
        else:
            print(f"bf16 skipped: this CPU has none of {', '.join(BF16_FLAGS)} ({cpu_description()})")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # every step in its own process: Linux keeps a parent's peak RSS across fork+exec, so a parent that had
        # built the ensemble (torch loaded) would inflate each child's figure
        subprocess.run([sys.executable, __file__, "--mode", "prepare", "--work", str(work)] + sys.argv[1:], check=True)
        results = {}
        for mode in modes:
            cmd = [sys.executable, __file__, "--mode", mode, "--work", str(work)] + sys.argv[1:]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                results[mode] = {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
                continue
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            saved = "torch_fp16" if mode == "notebook" else mode
            results[mode] |= _agreement(work / "eager", work / saved) if mode != "eager" else {}
            if mode == "engine-bf16":
                results[mode] |= {f"{k}_vs_fp32_engine": v for k, v in _agreement(work / "engine", work / saved).items()}
    _report(args, results)


def _agreement(reference: Path, other: Path) -> dict:
    diffs, agree = [], []
    for path in sorted(reference.glob("*.npy")):
        a, b = np.load(path).astype(np.float32), np.load(other / path.name).astype(np.float32)
        diffs.append(float(np.abs(a - b).max()))
        agree.append(float((a.argmax(0) == b.argmax(0)).mean()))
    return {"argmax_worst": min(agree), "max_abs_dp": max(diffs)}


def _report(args, results: dict) -> None:
    views = len(MEMBERS) * len(SCALES) * len(TTA)
    where = cpu_description() if args.device == "cpu" else _gpu_name()
    print(f"device: {args.device} ({where})")
    print(f"ensemble: {len(MEMBERS)} members x {len(SCALES)} scales x {len(TTA)} TTA = {views} forward passes per image, "
          f"{args.images} images of {args.size}x{args.size}, {args.threads} threads, engine batch {args.batch_images}, "
          f"{args.workers} engine worker(s)")
    eager = results.get("eager", {}).get("images_per_s")
    for mode, r in results.items():
        if "error" in r:
            print(f"{mode:>16}: failed: {r['error']}")
            continue
        line = f"{mode:>16}: {r['images_per_s']:.3f} images/s ({r['seconds']:.1f}s), peak RSS {r['peak_rss_mb']:.0f} MB"
        line += f", peak GPU {r['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in r else ""
        line += f", {r['images_per_s'] / eager:.2f}x eager" if eager and mode != "eager" else ""
        print(line)
        if "argmax_worst" in r:
            print(f"{'':>18}vs eager fp32: argmax {r['argmax_worst']:.4%} (worst image), max |dP| {r['max_abs_dp']:.2e} (float16 storage)")
        if "argmax_worst_vs_fp32_engine" in r:
            speed = r["images_per_s"] / results["engine"]["images_per_s"]
            print(f"{'':>18}vs the fp32 engine: {speed:.2f}x its images/s, argmax {r['argmax_worst_vs_fp32_engine']:.4%} (worst image), "
                  f"max |dP| {r['max_abs_dp_vs_fp32_engine']:.2e}")
        if "run_share" in r:
            print(f"{'':>18}providers {', '.join(r['providers'])}; inside InferenceSession.run {r['run_share']:.1%} of wall time, "
                  f"host side {1 - r['run_share']:.1%}; imported torch: {r['torch_loaded']}")
            q, end = r["rss_quarter_end_mb"]
            print(f"{'':>18}RSS after a quarter of the images {q:.0f} MB, after all {end:.0f} MB")


def _gpu_name() -> str:
    done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"], capture_output=True, text=True)
    return done.stdout.strip() or "no nvidia-smi"


if __name__ == "__main__":
    main()
