"""Survey: every smp architecture, with plain and timm-universal encoders, built as a plan member and checked
against the model's own eager forward.

One seeded random model per combination (no downloads), its BatchNorm statistics computed on 8 smooth random
images as training would leave them (uncalibrated random weights reach logits of 1e5, where PyTorch's own
float32 forward is 0.4 from its float64 one and every float32 difference is amplified), saved as a state_dict, one member with ``input_size``,
two scales and hflip, built by ``ensemble build`` (the export verified at the member's view sizes, the graph
against the reference loop); then the engine's member probabilities on one image against PyTorch running the
same views (resize, normalize, zero-pad to the stride, model, softmax, de-augment, crop, resize back, mean).
A combination smp itself cannot build is reported with smp's reason. Prints one row per combination.

Usage: python bench/smp_survey.py [--size 224] [--scales 1.0 0.75] [--only Unet PSPNet]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from eager import eager_member  # tests/eager.py: the member's views in PyTorch
from engine_vs_eager import cpu_description

# every architecture smp lists, each with a plain encoder and most with a timm-universal one
COMBOS = [
    ("Unet", "resnet18"), ("Unet", "tu-convnext_atto"), ("Unet", "tu-efficientnetv2_rw_t"), ("Unet", "mobileone_s0"),
    ("UnetPlusPlus", "resnet18"), ("MAnet", "resnet18"), ("MAnet", "tu-resnet18"), ("Linknet", "resnet18"),
    ("FPN", "resnet18"), ("FPN", "tu-mobilenetv3_small_100"), ("PSPNet", "resnet18"), ("PSPNet", "tu-resnet18"),
    ("DeepLabV3", "resnet18"), ("DeepLabV3Plus", "resnet18"), ("DeepLabV3Plus", "efficientnet-b0"), ("PAN", "resnet18"),
    ("UPerNet", "resnet18"), ("UPerNet", "tu-convnext_atto"), ("Segformer", "mit_b0"), ("Segformer", "resnet18"),
    ("DPT", "tu-vit_small_patch16_224"), ("DPT", "tu-vit_small_patch16_224", {"dynamic_img_size": True}),
]


def survey_one(arch: str, encoder: str, size: int, scales: list[float], work: Path, kwargs: dict | None = None) -> dict:
    import torch

    from segensemble.constants import IMAGENET_MEAN, IMAGENET_STD
    from segensemble.export.build import build
    from segensemble.models.registry import ModelSpec, create_model
    from segensemble.models.swa import recalibrate_bn
    from segensemble.plan import parse_plan
    from segensemble.runtime.engine import MEMBERS, Engine, Want
    from segensemble.synthetic.data import smooth_image
    from segensemble.views import prepare_input

    classes = ["background", "a", "b", "c", "d"]
    torch.manual_seed(0)
    started = time.perf_counter()
    try:
        model = create_model(ModelSpec(arch, encoder, len(classes), extra=kwargs or {})).eval()
    except Exception as exc:  # smp cannot build it: the registry's message says why
        return {"status": "smp cannot build", "reason": str(exc).splitlines()[0][:160]}
    calibration = np.stack([prepare_input(smooth_image((size, size), 100 + k), (size, size), np.array(IMAGENET_MEAN, np.float32),
                                          np.array(IMAGENET_STD, np.float32), 32) for k in range(8)])
    recalibrate_bn(model, [calibration[:4], calibration[4:]])
    torch.save(model.eval().state_dict(), work / "m.pth")
    plan = {"classes": classes, "members": [{"name": "m", "arch": arch, "encoder": encoder, "checkpoint": "m.pth",
                                             "input_size": [size, size], "scales": scales, "tta": ["identity", "hflip"],
                                             **({"model_kwargs": kwargs} if kwargs else {})}]}
    try:
        result = build(parse_plan(plan, work), work / "build")
    except Exception as exc:
        return {"status": "build failed", "reason": f"{str(exc).splitlines()[0][-170:]} | the same input in float32 "
                f"instead of float64 moves PyTorch's P by {_rounding_sensitivity(model, size):.1e}", "seconds": time.perf_counter() - started}
    entry = result.manifest.members[0]
    engine = Engine.from_build(work / "build")
    image = smooth_image((size * 3 // 4, size), 3)
    got = engine.predict([image], Want({MEMBERS}))[0].members["m"]
    want = eager_member(model, image, entry)
    parity = entry.models[0].parity
    return {"status": "ok", "exports": len(entry.models[0].files()), "parity": parity.max_abs_logit if parity else None,
            "bound": parity.bound if parity else None,
            "max_dp": float(np.abs(got - want).max()), "argmax": float((got.argmax(0) == want.argmax(0)).mean()),
            "seconds": time.perf_counter() - started}


def _rounding_sensitivity(model, size: int) -> float:
    """max |dP| of PyTorch's own forward between a verification image (64 x 64, resized to the input size)
    preprocessed in float64 (the reference loop) and in float32 (the graph): the noise floor of any float32
    pipeline on this model."""
    import cv2
    import torch

    from segensemble.constants import IMAGENET_MEAN, IMAGENET_STD
    from segensemble.synthetic.data import smooth_image
    from segensemble.views import bilinear

    image, mean, std = smooth_image((64, 64), 0), np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    x64 = (bilinear(image.astype(np.float64), size, size) / 255.0 - mean) / std
    x32 = cv2.resize(image.astype(np.float32), (size, size)) * (1 / (255 * std)).astype(np.float32) + (-mean / std).astype(np.float32)
    xs = [torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32)) for x in (x64, x32)]
    with torch.no_grad():
        return float((model(xs[0]).softmax(1) - model(xs[1]).softmax(1)).abs().max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.75])
    p.add_argument("--only", nargs="*", help="architectures to survey (default: all)")
    args = p.parse_args()
    print(f"CPU: {cpu_description()}; input_size {args.size}, scales {args.scales}, tta identity+hflip, 5 classes")
    print(f"{'arch':<14} {'encoder':<26} {'status':<18} {'exports':>7} {'parity':>9} {'bound':>9} {'max|dP|':>9} {'argmax':>8} {'s':>5}  reason")
    ok = 0
    combos = [c for c in COMBOS if not args.only or c[0] in args.only]
    for arch, encoder, *kwargs in combos:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                row = survey_one(arch, encoder, args.size, args.scales, Path(tmp), *kwargs)
            except Exception as exc:
                row = {"status": "error", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
                traceback.print_exc()
        ok += row["status"] == "ok"
        fig = (f"{row['exports']:>7} {row['parity'] or 0:>9.1e} {row['bound'] or 0:>9.1e} {row['max_dp']:>9.1e} {row['argmax']:>8.4%}"
               if row["status"] == "ok" else f"{'':>7} {'':>9} {'':>9} {'':>9} {'':>8}")
        label = encoder + (" " + ",".join(f"{k}={v}" for k, v in kwargs[0].items()) if kwargs else "")
        print(f"{arch:<14} {label:<26} {row['status']:<18} {fig} {row.get('seconds', 0):>5.0f}  {row.get('reason', '')}", flush=True)
    print(f"{ok} of {len(combos)} combinations built and agree")


if __name__ == "__main__":
    main()
