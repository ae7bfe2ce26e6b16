"""Export one smp model to ONNX, verified and self-describing.

The graph has input ``image`` (N, C, H, W float32, normalized) and output ``logits`` (N, classes, H, W),
dynamic in batch, height and width. Models whose adaptive pooling needs a known size (PSPNet) are exported
at a fixed H x W, dynamic in batch only, and say so in their metadata. Every export is run in ONNX Runtime
against PyTorch at two input shapes; a disagreement beyond tolerance stops the export with the figures.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import segensemble
from segensemble.constants import IMAGENET_MEAN, IMAGENET_STD
from segensemble.errors import ExportError, first_line
from segensemble.formats.atomic import write_atomic
from segensemble.models.checkpoints import LoadedModel
from segensemble.views import padded_size

MAX_ABS_LOGIT = 1e-3
MIN_ARGMAX_AGREEMENT = 0.999
OPSET = 17


@dataclass(frozen=True)
class ExportOptions:
    class_names: list[str] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    stride: int = 32
    fixed_hw: tuple[int, int] | None = None  # used when dynamic H/W cannot be exported
    extra_metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class ExportReport:
    path: Path
    parity: dict
    gflops: float
    gflops_hw: tuple[int, int]
    fixed_hw: tuple[int, int] | None
    metadata: dict[str, str]


def export_onnx(loaded: LoadedModel, out: str | Path, options: ExportOptions = ExportOptions()) -> ExportReport:
    """Export ``loaded`` to ``out`` (written to a temporary name, then renamed)."""
    import onnx

    out = Path(out)
    model = loaded.model.eval()
    _disable_memory_efficient_swish(model)
    channels, stride = loaded.spec.in_channels, options.stride
    fixed = padded_size(options.fixed_hw, stride) if options.fixed_hw else None
    data, fixed_used = _export_bytes(model, loaded, channels, stride, fixed)
    shapes = [(1, channels, *fixed_used), (2, channels, *fixed_used)] if fixed_used else [
        (1, channels, 2 * stride, 3 * stride), (2, channels, 3 * stride, 2 * stride)]
    parity, gflops = _check_parity(model, data, shapes, out)
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto)
    meta = _metadata(loaded, options, parity, gflops, shapes[0][2:], fixed_used)
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: onnx.save(proto, str(tmp)))
    return ExportReport(out, parity, gflops, tuple(shapes[0][2:]), fixed_used, meta)


def _disable_memory_efficient_swish(model) -> None:
    """efficientnet encoders' memory-efficient swish is a custom autograd op the exporter cannot trace."""
    for module in model.modules():
        if hasattr(module, "set_swish"):
            module.set_swish(memory_efficient=False)


def _export_bytes(model, loaded: LoadedModel, channels: int, stride: int, fixed):
    try:
        return _trace(model, (1, channels, 2 * stride, 3 * stride), dynamic_hw=True), None
    except Exception as exc:
        reason = first_line(exc)
        if "adaptive" not in reason.lower() and "input size not accessible" not in reason:
            raise ExportError(f"{loaded.source}: ONNX export of {loaded.spec.describe()} failed: {reason}") from exc
        if not fixed:
            raise ExportError(
                f"{loaded.source}: {loaded.spec.arch}'s adaptive pooling cannot be exported with dynamic height/width; "
                "give a fixed input size (--input-size H W, or input_size in plan.yaml) to export at that size"
            ) from exc
    return _trace_fixed(model, (1, channels, *fixed)), fixed


def _trace(model, shape: tuple[int, ...], dynamic_hw: bool) -> bytes:
    import torch

    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), _quiet_fds():
        warnings.simplefilter("ignore")
        # the TorchScript exporter: dynamic H/W for smp graphs in ~1 s; torch.rot90 is never in a member graph
        torch.onnx.export(
            model, torch.zeros(shape), buffer, input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes}, opset_version=OPSET, dynamo=False,
        )
    return buffer.getvalue()


@contextlib.contextmanager
def _quiet_fds():
    """Silence C++-level prints: the TorchScript exporter dumps its whole IR graph to the terminal when it
    fails (its ONNX logging is switched on by a truthiness bug), and a refused PSPNet would flood the screen."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _trace_fixed(model, shape: tuple[int, ...]) -> bytes:
    """Fixed H x W, dynamic batch, through the dynamo exporter: it decomposes adaptive pooling for any
    size, where the TorchScript exporter needs the pooled sizes to divide the feature map."""
    import logging
    import tempfile

    import torch

    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings(), torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            # an example batch of 2: export specializes a batch of 1 into the graph
            program = torch.onnx.export(model, (torch.zeros((2, *shape[1:])),), input_names=["image"], output_names=["logits"],
                                        dynamic_shapes=({0: batch},), opset_version=18, dynamo=True, verbose=False)
        finally:
            logging.disable(logging.NOTSET)
        program.save(f"{tmp}/model.onnx")
        return Path(f"{tmp}/model.onnx").read_bytes()


def _check_parity(model, data: bytes, shapes: list[tuple[int, ...]], out: Path) -> tuple[dict, float]:
    """ORT vs PyTorch on each shape; returns the figures and GFLOPs of one forward at shapes[0]."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst, agree_min = 0.0, 1.0
    flops = 0.0
    for k, shape in enumerate(shapes):
        x = rng.standard_normal(shape, dtype=np.float32)
        with torch.no_grad(), _count_flops(model) as counter:
            ref = model(torch.from_numpy(x)).numpy()
        if k == 0:
            flops = counter.flops / shape[0]
        try:
            got = session.run(None, {"image": x})[0]
        except Exception as exc:
            raise ExportError(f"{out}: the exported graph fails at input shape {shape}: {first_line(exc)}") from exc
        worst = max(worst, float(np.abs(got - ref).max()))
        agree_min = min(agree_min, float((got.argmax(1) == ref.argmax(1)).mean()))
        resized = got.shape[2:] != tuple(shape[2:])  # logits at another resolution (SegFormer: 1/4): resized in the graph
    parity = {"max_abs_logit": worst, "argmax_agreement": agree_min, "shapes": [list(s) for s in shapes], "resized": resized}
    if worst > MAX_ABS_LOGIT or agree_min < MIN_ARGMAX_AGREEMENT:
        raise ExportError(
            f"{out}: ONNX Runtime disagrees with PyTorch: max |Δlogit| {worst:.3g} (limit {MAX_ABS_LOGIT}), "
            f"argmax agreement {agree_min:.4%} (limit {MIN_ARGMAX_AGREEMENT:.1%}) over shapes {parity['shapes']}"
        )
    return parity, flops / 1e9


class _count_flops:
    """Counts 2*MACs of convolutions and linear layers during one forward (a cost estimate, not a profile)."""

    def __init__(self, model):
        self.model, self.flops, self.handles = model, 0.0, []

    def __enter__(self):
        import torch.nn as nn

        def conv_hook(module, _inp, output):
            kernel = int(np.prod(module.kernel_size)) * (module.in_channels // module.groups)
            self.flops += 2.0 * output.numel() * kernel

        def linear_hook(module, _inp, output):
            self.flops += 2.0 * output.numel() * module.in_features

        for m in self.model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                self.handles.append(m.register_forward_hook(conv_hook))
            elif isinstance(m, nn.Linear):
                self.handles.append(m.register_forward_hook(linear_hook))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _metadata(loaded: LoadedModel, options: ExportOptions, parity: dict, gflops: float, gflops_hw, fixed) -> dict[str, str]:
    spec = loaded.spec
    names = options.class_names or [str(i) for i in range(spec.classes)]
    if len(names) != spec.classes:
        raise ExportError(f"{loaded.source}: {len(names)} class names given for a model with {spec.classes} classes")
    meta = {
        "arch": spec.arch,
        "encoder": spec.encoder,
        "classes": str(spec.classes),
        "class_names": json.dumps(names),
        "in_channels": str(spec.in_channels),
        "mean": json.dumps(list(options.mean)),
        "std": json.dumps(list(options.std)),
        "stride": str(options.stride),
        "source": str(loaded.source),
        "source_sha256": loaded.sha256,
        "source_form": loaded.form,
        "parity_max_abs_logit": f"{parity['max_abs_logit']:.3e}",
        "parity_argmax_agreement": f"{parity['argmax_agreement']:.6f}",
        "parity_shapes": json.dumps(parity["shapes"]),
        "dynamic_axes": "batch" if fixed else "batch,height,width",
        "gflops": f"{gflops:.4f}",
        "gflops_hw": json.dumps(list(gflops_hw)),
        "exporter": "torch.onnx dynamo opset 18" if fixed else f"torch.onnx (TorchScript) opset {OPSET}",
        "segensemble_version": segensemble.__version__,
    }
    if parity.get("resized"):
        meta["resize_output"] = "1"
    if fixed:
        meta["fixed_hw"] = json.dumps(list(fixed))
        meta["shape_note"] = f"{spec.arch} adaptive pooling: exported at a fixed {fixed[0]}x{fixed[1]}, dynamic batch only"
    return meta | options.extra_metadata
