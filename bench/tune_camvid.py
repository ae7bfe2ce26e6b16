"""Benchmark: what `ensemble tune` finds on real photographs (CamVid frames), per class, whatever its sign.

Trains the small ensemble of ``precision_camvid.py`` on CPU from scratch (two Unet/resnet18 folds and an
FPN/resnet18 on the 48 training frames at 256x192), builds a plan (input_size 192x256, folds at scales 0.75
and 1.0, TTA identity and hflip), then runs `ensemble tune` on the 16 validation frames (half chosen on, half
held out) and prints its report: per class the step chosen, the gain on the selection frames and the held-out
gain with its 95% bootstrap interval. Also the post-processing's cost: its share of an image's time.
Usage: python bench/tune_camvid.py [--data ../shared/data/camvid-mini] [--steps 120] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from engine_vs_eager import cpu_description
from precision_camvid import CLASSES, small_plan, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid-mini")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    import yaml

    print(f"CPU: {cpu_description()}")
    work = args.work or Path(tempfile.mkdtemp(prefix="tune-camvid-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "fpn.pth").exists():
        started = time.perf_counter()
        train(args.data, work, args.steps)
        print(f"trained 3 members in {time.perf_counter() - started:.0f}s ({args.steps} steps each)")
    (work / "plan.yaml").write_text(yaml.safe_dump(small_plan()))
    cli = [sys.executable, "-m", "segensemble.cli"]
    subprocess.run([*cli, "build", str(work / "plan.yaml"), "-o", str(work / "build"), "--quiet"], check=True)
    started = time.perf_counter()
    done = subprocess.run([*cli, "tune", str(work / "plan.yaml"), "--build", str(work / "build"), "--coco", str(args.data / "val.json"),
                           "--images", str(args.data / "images"), "-o", str(work / "tune"), "--quiet"], capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr)
    print(done.stdout)
    print(f"tune took {time.perf_counter() - started:.0f}s; outputs in {work / 'tune'}")
    cost(work, args.data, json.loads((work / "tune" / "tune.json").read_text())["chosen"])


def cost(work: Path, data: Path, chosen: dict) -> None:
    """Post-processing's share of an image's time, with the steps tune chose (or min_area 64 and fill_holes 64
    for every class when it chose none), on the validation frames."""
    from segensemble.formats.images import list_images
    from segensemble.postprocess import PostProcessSpec, apply
    from segensemble.runtime.engine import LABELS, PROBS, Engine, Want

    spec = PostProcessSpec(**chosen) if chosen else PostProcessSpec(min_area=64, fill_holes=64)
    steps = spec.resolve(CLASSES, "multiclass")
    engine = Engine.from_build(work / "build").without_postprocess()
    graph_s = post_s = 0.0
    refs = list_images(data / "images" / "val")
    for ref in refs:
        image = engine.read(ref.path)
        started = time.perf_counter()
        pred = engine.predict([image], Want({LABELS, PROBS}))[0]
        graph_s += time.perf_counter() - started
        started = time.perf_counter()
        apply(steps, pred.probs, labels=pred.labels)
        post_s += time.perf_counter() - started
    print(f"post-processing ({steps.describe(CLASSES)}): {1000 * post_s / len(refs):.1f} ms per {image.shape[1]}x{image.shape[0]} frame, "
          f"{post_s / (graph_s + post_s):.1%} of the image's time (graph {1000 * graph_s / len(refs):.0f} ms)")


if __name__ == "__main__":
    main()
