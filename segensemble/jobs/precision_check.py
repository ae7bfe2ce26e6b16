"""What a precision mode costs, measured against fp32 on the user's own images: label agreement and the largest
probability difference, image by image. ``ensemble build --check-precision`` prints it; ``ensemble evaluate
--precision`` reports the mIoU beside fp32's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segensemble.formats.images import list_images, read_image
from segensemble.run_config import Precision, RunConfig
from segensemble.runtime.engine import LABELS, MASKS, PROBS, Want, open_engine

SAMPLE_IMAGES = 8


def sample_images(calib_images: Path | None, plan_images: list[str]) -> list[np.ndarray]:
    """Up to SAMPLE_IMAGES images: --calib-images, else the plan's bn_images, else smooth synthetic ones."""
    from segensemble.synthetic.data import smooth_image

    for folder in [calib_images, *plan_images]:
        if folder and Path(folder).is_dir():
            return [read_image(r.path) for r in list_images(folder)[:SAMPLE_IMAGES]]
    return [smooth_image((256, 320), seed) for seed in range(SAMPLE_IMAGES)]


def agreement(build_dir: Path, precision: str, images: list[np.ndarray], config: RunConfig = RunConfig()) -> dict:
    """Decision agreement (labels, or every class's mask pixel; worst image and all pixels) and max |ΔP| of
    ``precision`` against fp32."""
    from dataclasses import replace

    exact = open_engine(build_dir, replace(config, precision=Precision.FP32))
    fast = open_engine(build_dir, replace(config, precision=Precision(precision)))
    want = Want({LABELS, MASKS, PROBS})
    agree, diffs, pixels, same = [], [], 0, 0
    for image in images:
        a, b = exact.predict([image], want)[0], fast.predict([image], want)[0]
        equal = a.labels == b.labels if a.labels is not None else a.masks == b.masks  # multiclass labels, or masks
        agree.append(float(equal.mean()))
        pixels, same = pixels + equal.size, same + int(equal.sum())
        diffs.append(float(np.abs(a.probs - b.probs).max()))
    return {"precision": precision, "runtime": fast.runtime, "images": len(images), "labels_agree": same / max(1, pixels),
            "labels_agree_worst_image": min(agree, default=1.0), "max_abs_prob": max(diffs, default=0.0)}


def describe(figures: dict) -> str:
    return (f"{figures['precision']} ({figures['runtime']}) vs fp32 on {figures['images']} images: labels agree on "
            f"{figures['labels_agree']:.3%} of pixels ({figures['labels_agree_worst_image']:.3%} on the worst image), "
            f"max |ΔP| {figures['max_abs_prob']:.1e}")
