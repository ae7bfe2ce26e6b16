"""Benchmark: peak memory of a very large image through a tiled ensemble, run region by region.

Three members (smp Unet/resnet18, FPN/resnet34, DeepLabV3Plus/mobilenet_v2; random weights, no downloads),
12 classes, tiles 512 x 512, overlap 0.25, gaussian blend, labels out. The image (``--size``, default
10000 x 10000 RGB) is made in the parent and handed over as a raw .npy, so the child's peak RSS is the
engine's: the decoded image, the label map, the graph's weights and the region in flight. Also printed: the
tiles per model call (the graph's ``tile_batch``), the regions, the tiles the regions computed against the
whole image's tile grid (tiles under a cut run twice), and the time.

``--first-regions N`` runs only the first N regions and writes the label map whole, then estimates the full
run's time from theirs; its peak is a lower bound (session 9's whole run peaked 0.7 GiB above its first 8
regions').

Usage: python bench/tiles_memory.py [--size 10000 10000] [--max-memory-mb 1200] [--threads 2] [--first-regions N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from engine_vs_eager import cpu_description, peak_rss_mb
from tiles_vs_monai import build_random

MEMBERS = [("unet", "Unet", "resnet18"), ("fpn", "FPN", "resnet34"), ("deeplab", "DeepLabV3Plus", "mobilenet_v2")]
CLASSES, TILE, OVERLAP = 12, (512, 512), 0.25


def prepare(work: Path) -> None:
    build_random(work, MEMBERS, CLASSES, TILE, OVERLAP, ["identity"])


def child(work: Path, max_memory_mb: float, threads: int, first: int | None) -> dict:
    from segensemble.graph_io import LABELS
    from segensemble.run_config import RunConfig
    from segensemble.runtime.engine import Want, open_engine
    from segensemble.runtime.regions import run_regions, tiles_of
    from segensemble.tiles import region_tiles

    engine = open_engine(work / "build", RunConfig(intra_op_threads=threads, max_cost=1e9, max_memory_mb=max_memory_mb))
    image = np.load(work / "image.npy")
    hw = image.shape[:2]
    regions, chunk = engine.regions(hw), engine.tile_batch(hw)
    whole = tiles_of(engine.members, hw, (0, hw[0], 0, hw[1]))
    computed = sum(tiles_of(engine.members, hw, r) for r in regions)
    start = time.perf_counter()
    if first is None:
        labels = engine.predict([image], Want({LABELS}))[0].labels
    else:  # the first regions only; the label map then written whole, as a full run writes it, before the peak is read
        labels = run_regions(engine.graph, image[None], [LABELS], regions[:first], engine.members, chunk=chunk)[0][0]
        labels.fill(0)
    seconds = time.perf_counter() - start
    ran = regions if first is None else regions[:first]
    ran_tiles = sum(tiles_of(engine.members, hw, r) for r in ran)
    largest = max(((r[1] - r[0], r[3] - r[2]) for r in regions), key=lambda s: s[0] * s[1])
    return {"tile_batch": chunk, "regions": len(regions), "regions_run": len(ran), "largest_region": largest,
            "tiles_per_member_grid": region_tiles(hw, (0, hw[0], 0, hw[1]), engine.members[0].tiles, 1.0),
            "tile_views_whole": whole, "tile_views_computed": computed, "seconds": seconds,
            "seconds_full_estimate": seconds / ran_tiles * computed, "labels_shape": list(labels.shape),
            "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, nargs=2, default=[10000, 10000])
    p.add_argument("--max-memory-mb", type=float, default=1200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--first-regions", type=int, help="run only the first N regions (the label map is still written whole); "
                   "the full run's time is then estimated from theirs")
    p.add_argument("--work", type=Path)
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        print(json.dumps(child(args.work, args.max_memory_mb, args.threads, args.first_regions)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="tiles-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_description()}; {args.threads} threads; image {args.size[0]}x{args.size[1]} RGB, "
          f"{len(MEMBERS)} members, {CLASSES} classes, tiles {TILE}, overlap {OVERLAP}; --max-memory-mb {args.max_memory_mb:g}")
    if not (work / "build" / "manifest.json").exists():
        prepare(work)
    from segensemble.synthetic.data import smooth_image

    np.save(work / "image.npy", smooth_image(tuple(args.size), 11))
    first = ["--first-regions", str(args.first_regions)] if args.first_regions else []
    out = subprocess.run([sys.executable, __file__, "--_child", "--work", str(work), "--max-memory-mb", str(args.max_memory_mb),
                          "--threads", str(args.threads), *first], capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr[-3000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result))
    untiled = CLASSES * args.size[0] * args.size[1] * 4 / 2**30
    ran = f"the first {result['regions_run']} of {result['regions']} regions" if args.first_regions else f"{result['regions']} regions"
    timing = (f"{result['seconds']:.0f} s for those; a full run about {result['seconds_full_estimate'] / 60:.0f} min (estimated)"
              if args.first_regions else f"{result['seconds']:.0f} s")
    print(f"peak RSS {result['peak_rss_mb'] / 1024:.2f} GiB = {result['peak_rss_mb'] * 2**20 / 1e9:.2f} GB over {ran}, "
          f"{result['tile_batch']} tiles per model call (one full-size probability map alone: {untiled:.1f} GiB); "
          f"{result['tile_views_computed'] / result['tile_views_whole']:.2f}x the tiles of the whole image's grid computed; {timing}")


if __name__ == "__main__":
    main()
