"""``ensemble export-triton``: a Triton Inference Server model repository for a build.

Layout::

    REPO/<member>_<k>/config.pbtxt + 1/model.onnx   every member graph (logits), dynamic H/W
    REPO/segensemble/config.pbtxt  + 1/model.onnx   the fused ensemble (probs + labels) at a fixed H x W

Each config uses the ONNX Runtime backend with dynamic batching and a bounded, rejecting queue policy,
the TensorRT accelerator in FP16 on GPU instances, and a zero-input warm-up. Configs are validated by
parsing them into Triton's own ``ModelConfig`` protobuf (from ``tritonclient``) when it is installed,
else by a structural check of the fields this writer emits.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from segensemble.errors import SegEnsembleError
from segensemble.manifest import read_manifest


@dataclass(frozen=True)
class TritonOptions:
    kind: str = "gpu"  # gpu | cpu (instance_group kind; TensorRT only on gpu)
    max_batch: int = 8
    queue_delay_us: int = 2000
    max_queue: int = 64
    timeout_us: int = 30_000_000
    fp16: bool = True


def _tensor(name: str, dtype: str, dims: list[int]) -> str:
    return f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'


def model_config(name: str, inputs: list[tuple[str, str, list[int]]], outputs: list[tuple[str, str, list[int]]],
                 warmup_dims: list[int], opts: TritonOptions) -> str:
    """config.pbtxt text for one ONNX Runtime model."""
    accel = ""
    if opts.kind == "gpu":
        precision = "FP16" if opts.fp16 else "FP32"
        accel = ("optimization {\n  execution_accelerators {\n    gpu_execution_accelerator : [ {\n"
                 f'      name : "tensorrt"\n      parameters {{ key: "precision_mode" value: "{precision}" }}\n'
                 '      parameters { key: "max_workspace_size_bytes" value: "1073741824" }\n    } ]\n  }\n}\n')
    kind = "KIND_GPU" if opts.kind == "gpu" else "KIND_CPU"
    preferred = sorted({b for b in (opts.max_batch // 2, opts.max_batch) if b >= 1})
    ins = ",\n".join(_tensor(*i) for i in inputs)
    outs = ",\n".join(_tensor(*o) for o in outputs)
    return (
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {opts.max_batch}\n'
        f"input [\n{ins}\n]\n"
        f"output [\n{outs}\n]\n"
        f"instance_group [ {{ count: 1\n  kind: {kind} }} ]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        f"  max_queue_delay_microseconds: {opts.queue_delay_us}\n"
        "  default_queue_policy {\n    timeout_action: REJECT\n"
        f"    default_timeout_microseconds: {opts.timeout_us}\n    allow_timeout_override: true\n"
        f"    max_queue_size: {opts.max_queue}\n  }}\n}}\n"
        f"{accel}"
        "model_warmup [ {\n  name: \"zeros\"\n  batch_size: 1\n"
        f'  inputs {{\n    key: "{inputs[0][0]}"\n    value {{\n      data_type: TYPE_FP32\n'
        f"      dims: [ {', '.join(map(str, warmup_dims))} ]\n      zero_data: true\n    }}\n  }}\n}} ]\n"
    )


def validate_config(text: str, where: str) -> str:
    """Parse with Triton's ModelConfig schema when available; returns which check ran."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return _structural_check(text, where)
    try:
        text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise SegEnsembleError(f"{where}: not a valid Triton model config ({exc})") from exc
    return "tritonclient ModelConfig"


def _structural_check(text: str, where: str) -> str:
    """Without tritonclient: the fields this writer emits are there and brackets balance."""
    for field in ("name:", "backend:", "max_batch_size:", "input [", "output [", "dynamic_batching {"):
        if field not in text:
            raise SegEnsembleError(f"{where}: config.pbtxt lacks {field}")
    if text.count("{") != text.count("}") or text.count("[") != text.count("]"):
        raise SegEnsembleError(f"{where}: unbalanced braces in config.pbtxt")
    return "structural"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def export_triton(build_dir: str | Path, repo: str | Path, opts: TritonOptions = TritonOptions(),
                  fused_hw: tuple[int, int] | None = None) -> list[Path]:
    """Write the repository; returns the config files written (each validated)."""
    from segensemble.export.fuse import fuse

    build_dir, repo = Path(build_dir), Path(repo)
    manifest = read_manifest(build_dir)
    classes = len(manifest.classes)
    written = []
    for member in manifest.members:
        for k, entry in enumerate(member.models):
            name = _safe(f"{member.name}_{k}")
            hw = list(entry.fixed_hw) if entry.fixed_hw else [-1, -1]
            warm = list(entry.fixed_hw or member.input_size or (2 * member.stride, 2 * member.stride))
            text = model_config(name, [("image", "TYPE_FP32", [3, *hw])], [("logits", "TYPE_FP32", [classes, *hw])], [3, *warm], opts)
            written.append(_write_model(repo / name, text, build_dir / entry.file))
    hw = fused_hw or common_input_size(manifest)
    fused = build_dir / f"fused_{hw[0]}x{hw[1]}.onnx"
    if not fused.exists():
        fuse(manifest, build_dir, hw, fused)
    text = model_config("segensemble", [("image", "TYPE_FP32", [3, *hw])],
                        [("probs", "TYPE_FP32", [classes, *hw]), ("labels", "TYPE_INT64", list(hw))], [3, *hw], opts)
    written.append(_write_model(repo / "segensemble", text, fused))
    return written


def common_input_size(manifest) -> tuple[int, int]:
    sizes = {tuple(m.input_size) for m in manifest.members if m.input_size}
    if len(sizes) != 1:
        raise SegEnsembleError(f"the fused graph needs one image size; members have input sizes {sorted(sizes) or 'none'}: "
                               "give --size H W")
    return sizes.pop()


def _write_model(folder: Path, config: str, onnx_file: Path) -> Path:
    check = validate_config(config, str(folder))
    (folder / "1").mkdir(parents=True, exist_ok=True)
    tmp = folder / "1" / "model.onnx.tmp"
    shutil.copyfile(onnx_file, tmp)
    tmp.replace(folder / "1" / "model.onnx")
    (folder / "config.pbtxt").write_text(f"# segensemble export-triton; validated: {check}\n" + config)
    return folder / "config.pbtxt"
