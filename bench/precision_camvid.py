"""Benchmark: what bf16 costs in mIoU on real photographs (CamVid frames), against fp32, same trained ensemble.

Trains a small ensemble on CPU from scratch (two Unet/resnet18 folds and an FPN/resnet18 on the 48 training
frames at 256x192, a few minutes), builds a plan (input_size 192x256, folds at scales 0.75 and 1.0, TTA
identity and hflip), then runs `ensemble evaluate --precision bf16` on the 16 validation frames, which
scores bf16 and fp32 side by side (dataset-level and per-image mIoU, per class). Prints the CPU model and
flags. Skips bf16, saying why, on a CPU without AVX512_BF16 or AMX.
Usage: python bench/precision_camvid.py [--data ../shared/data/camvid-mini] [--steps 120]
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

CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"]
HW = (192, 256)  # CamVid's aspect, sides divisible by 32 (FPN needs it)


def train(data: Path, work: Path, steps: int) -> None:
    """Two folds of a tiny Unet and a tiny FPN, trained at 192x144 on the training frames."""
    import cv2

    from segensemble.models.registry import ModelSpec
    from segensemble.synthetic.trainer import TINY_KWARGS, save_checkpoint, train_tiny

    coco = json.loads((data / "train.json").read_text())
    names = [img["file_name"] for img in coco["images"]]
    images = np.stack([cv2.resize(cv2.imread(str(data / "images" / n))[..., ::-1], HW[::-1], interpolation=cv2.INTER_AREA) for n in names])
    masks = np.stack([cv2.resize(cv2.imread(str(data / "masks" / Path(n).with_suffix(".png")), cv2.IMREAD_UNCHANGED), HW[::-1],
                                 interpolation=cv2.INTER_NEAREST) for n in names])
    halves = [np.arange(len(names)) % 2 != k for k in range(2)]
    for k, keep in enumerate(halves):
        model, _ = train_tiny(ModelSpec("Unet", "resnet18", len(CLASSES), extra=TINY_KWARGS["Unet"]), images[keep], masks[keep],
                              steps=steps, seed=k)
        save_checkpoint(model, work / f"unet_f{k}.pth", "state_dict")
    model, _ = train_tiny(ModelSpec("FPN", "resnet18", len(CLASSES), extra=TINY_KWARGS["FPN"]), images, masks, steps=steps, seed=7)
    save_checkpoint(model, work / "fpn.pth", "state_dict")


def small_plan() -> dict:
    """The plan of the three members ``train`` writes: Unet folds at two scales and an FPN, identity + hflip."""
    from segensemble.synthetic.trainer import TINY_KWARGS

    member = {"arch": "Unet", "encoder": "resnet18", "model_kwargs": TINY_KWARGS["Unet"]}
    return {"classes": CLASSES, "defaults": {"input_size": list(HW), "tta": ["identity", "hflip"]},
            "members": [member | {"name": "unet-folds", "folds": ["unet_f0.pth", "unet_f1.pth"], "scales": [0.75, 1.0]},
                        {"name": "fpn", "arch": "FPN", "encoder": "resnet18", "model_kwargs": TINY_KWARGS["FPN"], "checkpoint": "fpn.pth"}]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid-mini")
    ap.add_argument("--steps", type=int, default=120)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from engine_vs_eager import cpu_description

    from segensemble.runtime.openvino_session import BF16_FLAGS, cpu_flags

    print(f"CPU: {cpu_description()}")
    if not cpu_flags() & set(BF16_FLAGS):
        print(f"bf16 skipped: this CPU has none of {', '.join(BF16_FLAGS)}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        train(args.data, work, args.steps)
        print(f"trained 3 members in {time.perf_counter() - started:.0f}s ({args.steps} steps each)")
        import yaml

        (work / "plan.yaml").write_text(yaml.safe_dump(small_plan()))
        cli = [sys.executable, "-m", "segensemble.cli"]
        subprocess.run([*cli, "build", str(work / "plan.yaml"), "-o", str(work / "build"), "--quiet", "--check-precision", "bf16",
                        "--calib-images", str(args.data / "images" / "val")], check=True)
        done = subprocess.run([*cli, "evaluate", "--coco", str(args.data / "val.json"), "--images", str(args.data / "images"),
                               "--build", str(work / "build"), "--precision", "bf16", "--json", str(work / "eval.json"), "--quiet"],
                              capture_output=True, text=True, check=True)
        print(done.stdout)
        report = json.loads((work / "eval.json").read_text())
        d = report["delta_vs_fp32"]
        print(f"ensemble mIoU fp32 {report['fp32']['ensemble']['miou']:.4f} -> bf16 {report['ensemble']['miou']:.4f} ({d['miou']:+.4f}); "
              f"per-image {d['miou_per_image']:+.4f}; largest per-class change "
              f"{max((abs(v) for v in d['iou'].values() if v is not None), default=0):.4f}")


if __name__ == "__main__":
    main()
