"""Export one PyTorch model to ONNX, verified and self-describing.

The graph has input ``image`` (N, C, H, W float32, normalized) and output ``logits`` (N, classes, H, W),
dynamic in batch, height and width, verified in ONNX Runtime against PyTorch at every size the plan's views
feed the model (or two generic shapes when they follow the image). A model whose graph cannot be dynamic in
H and W (adaptive pooling: PSPNet, UPerNet; a shape traced into the graph) gets one export per view size,
each dynamic in batch only and verified at its size. A disagreement beyond the bound stops the export with
the figures; the bound is relative to the logits' scale, and never tighter than PyTorch's own float32 error
against float64 (random or badly conditioned weights reach logits of 1e5, where float32 itself errs by 0.1).
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

MAX_ABS_LOGIT = 1e-3  # the parity bound for logits up to 10 in size ...
MAX_REL_LOGIT = 1e-4  # ... and relative to the largest logit beyond
FLOAT32_MARGIN = 4.0  # ... or within this many times PyTorch float32's own error against float64, if larger
MAX_FLOAT32_NOISE = 0.01  # ... as long as that error is below this fraction of the logits' scale
MIN_ARGMAX_AGREEMENT = 0.999  # on decisive pixels (top two logits apart by more than twice the bound)
OPSET = 17


@dataclass(frozen=True)
class ExportOptions:
    class_names: list[str] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    stride: int = 32
    fixed_hw: tuple[int, int] | None = None  # the one size to use when dynamic H/W cannot be exported (CLI export)
    view_sizes: tuple[tuple[int, int], ...] | None = None  # every (padded) size the plan's views feed the model
    extra_metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class ExportReport:
    path: Path
    parity: dict
    gflops: float
    gflops_hw: tuple[int, int]
    fixed_hw: tuple[int, int] | None
    metadata: dict[str, str]


class _CannotRun(ExportError):
    """PyTorch itself cannot run the model at a size: no export can help."""


def export_onnx(loaded: LoadedModel, out: str | Path, options: ExportOptions = ExportOptions()) -> ExportReport:
    """Export ``loaded`` to ``out`` (written to a temporary name, then renamed), or to one file per view size
    (``out`` for the first, siblings named ``<stem>.<h>x<w>.onnx``) when no dynamic graph agrees at every size."""
    out = Path(out)
    model = loaded.model.eval()
    _disable_memory_efficient_swish(model)
    channels, stride = loaded.spec.in_channels, options.stride
    sizes = list(options.view_sizes or ([padded_size(options.fixed_hw, stride)] if options.fixed_hw else []))
    try:
        trace = (1, channels, *(sizes[0] if sizes else (2 * stride, 3 * stride)))
        shapes = [(1, channels, *hw) for hw in sizes] + [(2, channels, *sizes[-1])] if sizes else [
            (1, channels, 2 * stride, 3 * stride), (2, channels, 3 * stride, 2 * stride)]
        data = _trace(model, trace, loaded)
        parity, gflops = _check_parity(model, data, shapes, out)
        return _write(loaded, options, data, parity, gflops, out, None)
    except _CannotRun:
        raise
    except ExportError as exc:
        if not sizes:
            raise
        dynamic = exc
    why = "adaptive pooling needs a known size" if "adaptive pooling" in str(dynamic) else str(dynamic).split(": ", 1)[-1][:200]
    paths = [out] + [_sized_path(out, hw) for hw in sizes[1:]]
    listing = {"sized_files": json.dumps([[h, w, p.name] for (h, w), p in zip(sizes, paths)])} if len(sizes) > 1 else {}
    try:  # the siblings first, the first file last naming them all: a build killed between them leaves no half set
        for hw, path in zip(sizes[1:], paths[1:]):
            _export_fixed(model, loaded, options, hw, path, why)
        first = _export_fixed(model, loaded, options, sizes[0], out, why, listing)
    except _CannotRun:
        raise
    except ExportError as exc:
        raise ExportError(f"{exc}; a dynamic export failed too: {dynamic}") from exc
    return first


def _sized_path(out: Path, hw: tuple[int, int]) -> Path:
    return out.with_name(f"{out.stem}.{hw[0]}x{hw[1]}.onnx")


def _export_fixed(model, loaded: LoadedModel, options: ExportOptions, hw: tuple[int, int], out: Path, why: str,
                  extra: dict[str, str] | None = None) -> ExportReport:
    channels = loaded.spec.in_channels
    data = _trace_fixed(model, (1, channels, *hw))
    parity, gflops = _check_parity(model, data, [(1, channels, *hw), (2, channels, *hw)], out)
    return _write(loaded, options, data, parity, gflops, out, hw, why, extra or {})


def _write(loaded: LoadedModel, options: ExportOptions, data: bytes, parity: dict, gflops: float, out: Path, fixed,
           why: str = "", extra: dict[str, str] | None = None) -> ExportReport:
    import onnx

    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto)
    shape = parity["shapes"][0]
    meta = {**_metadata(loaded, options, parity, gflops, shape[2:], fixed), **(extra or {})}
    if fixed:
        meta["shape_note"] = f"{loaded.spec.arch}: {why}; exported at {fixed[0]}x{fixed[1]}, dynamic batch only"
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: onnx.save(proto, str(tmp)))
    return ExportReport(out, parity, gflops, tuple(shape[2:]), fixed, meta)


def _disable_memory_efficient_swish(model) -> None:
    """efficientnet encoders' memory-efficient swish is a custom autograd op the exporter cannot trace."""
    for module in model.modules():
        if hasattr(module, "set_swish"):
            module.set_swish(memory_efficient=False)


def _trace(model, shape: tuple[int, ...], loaded: LoadedModel) -> bytes:
    """Dynamic batch, height and width through the TorchScript exporter (smp graphs in ~1 s)."""
    import torch

    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad(), _quiet_fds():
            warnings.simplefilter("ignore")
            # torch.rot90 is never in a member graph
            torch.onnx.export(
                model, torch.zeros(shape), buffer, input_names=["image"], output_names=["logits"],
                dynamic_axes={"image": axes, "logits": axes}, opset_version=OPSET, dynamo=False,
            )
    except Exception as exc:
        reason = first_line(exc)
        hint = ("; its adaptive pooling needs a known size: give the member an input_size or tiles in the plan "
                "(--input-size H W for `ensemble export`), and it is exported at each size its views need") \
            if "adaptive" in reason.lower() or "input size not accessible" in reason else ""
        raise ExportError(f"{loaded.source}: ONNX export of {loaded.spec.describe()} with dynamic height/width failed: {reason}{hint}") from exc
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
    """ORT vs PyTorch on each shape; returns the figures and GFLOPs of one forward at shapes[0]. The bound: see
    the module docstring; a logit error within it cannot flip a decisive pixel, so argmax is checked on those
    (near-ties of random weights may flip and are only reported)."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = {"max_abs_logit": 0.0, "logit_scale": 0.0, "bound": 0.0, "float32_error": None, "argmax_agreement": 1.0}
    decisive_min, flops, resized, failed = 1.0, 0.0, False, []
    for k, shape in enumerate(shapes):
        x = _probe(rng, shape)
        try:
            with torch.no_grad(), _count_flops(model) as counter:
                ref = model(torch.from_numpy(x)).numpy()
        except Exception as exc:
            raise _CannotRun(f"{out}: the model itself cannot run a {shape[2]}x{shape[3]} input in PyTorch ({first_line(exc)}); "
                             "choose scales and an input_size (or tiles) it takes, or build it to take any size "
                             "(a timm ViT encoder: model_kwargs: {dynamic_img_size: true})") from exc
        if k == 0:
            flops = counter.flops / shape[0]
        try:
            got = session.run(None, {"image": x})[0]
        except Exception as exc:
            raise ExportError(f"{out}: the exported graph fails at input shape {shape}: {first_line(exc)}") from exc
        if got.shape != ref.shape:
            raise ExportError(f"{out}: the exported graph outputs {got.shape} at input shape {shape}, PyTorch {ref.shape}")
        err, scale = float(np.abs(got - ref).max()), float(np.abs(ref).max())
        bound = max(MAX_ABS_LOGIT, MAX_REL_LOGIT * scale)
        if err > bound:
            worst["float32_error"] = f32 = _float32_error(model, x, ref)
            if f32 is not None and f32 <= MAX_FLOAT32_NOISE * scale:  # past that, float32 itself means nothing: no bound
                bound = max(bound, FLOAT32_MARGIN * f32)
        if err > bound:
            failed.append(f"{list(shape)}: max |Δlogit| {err:.3g} > bound {bound:.3g}")
        worst["max_abs_logit"], worst["logit_scale"] = max(worst["max_abs_logit"], err), max(worst["logit_scale"], scale)
        worst["bound"] = max(worst["bound"], bound)
        worst["argmax_agreement"] = min(worst["argmax_agreement"], float((got.argmax(1) == ref.argmax(1)).mean()))
        decisive_min = min(decisive_min, _decisive_agreement(ref, got, bound))
        resized = got.shape[2:] != tuple(shape[2:])  # logits at another resolution (SegFormer: 1/4): resized in the graph
    parity = {**worst, "decisive_agreement": decisive_min, "shapes": [list(s) for s in shapes], "resized": resized}
    if failed or decisive_min < MIN_ARGMAX_AGREEMENT:
        raise ExportError(
            f"{out}: ONNX Runtime disagrees with PyTorch: {'; '.join(failed) or 'logits within the bound'} (bound: max of "
            f"{MAX_ABS_LOGIT}, {MAX_REL_LOGIT} x the largest logit, {FLOAT32_MARGIN:g} x PyTorch's float32 error against float64); "
            f"argmax agreement {worst['argmax_agreement']:.4%}, {decisive_min:.4%} on decisive pixels "
            f"(limit {MIN_ARGMAX_AGREEMENT:.1%})")
    return parity, flops / 1e9


def _probe(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A normalized image-like input: smooth random colours (a coarse grid resized up) with a little pixel noise.
    White noise is far from any image: a trained or BN-calibrated model answers it with logits of 1e4 whose
    float32 error is as large as they are, and no comparison can be made there."""
    from segensemble.views import bilinear

    n, c, h, w = shape
    out = np.empty(shape, np.float32)
    for i in range(n):
        coarse = rng.uniform(-2.0, 2.0, (max(2, h // 16), max(2, w // 16), c))
        out[i] = (bilinear(coarse, h, w) + rng.normal(0, 0.05, (h, w, c))).transpose(2, 0, 1)
    return out


def _float32_error(model, x: np.ndarray, ref: np.ndarray) -> float | None:
    """How far PyTorch's own float32 forward is from float64 on ``x`` (None where the model cannot run in float64)."""
    import copy

    import torch

    try:
        with torch.no_grad():
            ref64 = copy.deepcopy(model).double()(torch.from_numpy(x).double()).numpy()
    except Exception:  # an op without a float64 kernel: the relative bound alone decides
        return None
    return float(np.abs(ref.astype(np.float64) - ref64).max())


def _decisive_agreement(ref: np.ndarray, got: np.ndarray, bound: float) -> float:
    """argmax agreement on the pixels whose reference top two logits differ by more than twice ``bound``."""
    if ref.shape[1] < 2:
        return 1.0
    top2 = np.sort(ref, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > 2 * bound
    return float((got.argmax(1) == ref.argmax(1))[decisive].mean()) if decisive.any() else 1.0


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
        "parity_bound": f"{parity['bound']:.3e}",
        "parity_logit_scale": f"{parity['logit_scale']:.3e}",
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
    if parity.get("float32_error") is not None:
        meta["parity_float32_error"] = f"{parity['float32_error']:.3e}"
    if fixed:
        meta["fixed_hw"] = json.dumps(list(fixed))
    return meta | options.extra_metadata
