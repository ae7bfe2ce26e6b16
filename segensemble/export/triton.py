"""``ensemble export-triton``: a Triton Inference Server model repository serving the build's ensemble graph.

Layout::

    REPO/segensemble/config.pbtxt + 1/model.onnx            ensemble.onnx: uint8 images in, labels/probs out
    REPO/segensemble_<profile>/config.pbtxt + 1/model.onnx  each profile's graph

Every model takes any image size (H and W are dynamic; Triton batches requests of equal shape together).
Each config uses the ONNX Runtime backend with dynamic batching and a bounded, rejecting queue policy, the
TensorRT accelerator on GPU instances (FP32 unless asked for FP16), and a warm-up. Configs are validated by
parsing them into Triton's own ``ModelConfig`` protobuf (from ``tritonclient``) when it is installed, else
by a structural check. The repository is written into a temporary folder beside the target and renamed,
so a failed export leaves no half-written repository.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from segensemble.errors import SegEnsembleError
from segensemble.manifest import read_manifest
from segensemble.names import safe_name


@dataclass(frozen=True)
class TritonOptions:
    kind: str = "gpu"  # gpu | cpu (instance_group kind; TensorRT only on gpu)
    max_batch: int = 8
    queue_delay_us: int = 2000
    max_queue: int = 64
    timeout_us: int = 30_000_000
    fp16: bool = False


_ONNX_TO_TRITON = {"tensor(uint8)": "TYPE_UINT8", "tensor(float)": "TYPE_FP32", "tensor(int32)": "TYPE_INT32"}
WARMUP_HW = (64, 64)


def quote(text: str) -> str:
    """``text`` as a protobuf text-format string literal: quotes, backslashes and every byte outside printable
    ASCII escaped (as protobuf's own CEscape does), so a name can never close its string and add fields."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in "\\\"'":
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _tensor(name: str, dtype: str, dims: list[int]) -> str:
    return f'  {{\n    name: {quote(name)}\n    data_type: {dtype}\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'


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
        f'name: {quote(name)}\nbackend: "onnxruntime"\nmax_batch_size: {opts.max_batch}\n'
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
        f'  inputs {{\n    key: {quote(inputs[0][0])}\n    value {{\n      data_type: {inputs[0][1]}\n'
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


def export_triton(build_dir: str | Path, repo: str | Path, opts: TritonOptions = TritonOptions()) -> list[Path]:
    """Write the repository (atomically); returns the config files written (each validated)."""
    build_dir, repo = Path(build_dir), Path(repo)
    manifest = read_manifest(build_dir)
    staging = repo.with_name(f".{repo.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        written = []
        for profile in [None, *manifest.profiles]:
            name = "segensemble" if profile is None else safe_name(f"segensemble_{profile}")
            entry = manifest.graph_entry(profile)
            graph = entry.verify(build_dir)  # missing or altered files are refused here, not in Triton
            written.append(_write_model(staging / name, _graph_config(name, graph, opts), graph, list(entry.data)))
        _replace_folder(staging, repo)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [repo / p.relative_to(staging) for p in written]


def _graph_config(name: str, graph: Path, opts: TritonOptions) -> str:
    """config.pbtxt for an ensemble graph, its tensors read from the graph itself (batch dimension implicit)."""
    import onnxruntime as ort

    from segensemble.export.verify_graph import quiet_options

    session = ort.InferenceSession(str(graph), quiet_options(), providers=["CPUExecutionProvider"])
    def tensors(items):
        return [(t.name, _ONNX_TO_TRITON[t.type], [-1 if not isinstance(d, int) else d for d in t.shape[1:]]) for t in items]
    return model_config(name, tensors(session.get_inputs()), tensors(session.get_outputs()), [*WARMUP_HW, 3], opts)


def _replace_folder(staging: Path, target: Path) -> None:
    """Swap a finished folder into place; an existing target is moved aside first and removed after."""
    old = target.with_name(f".{target.name}.old{os.getpid()}")
    if target.exists():
        target.replace(old)
    staging.replace(target)
    shutil.rmtree(old, ignore_errors=True)


def _write_model(folder: Path, config: str, onnx_file: Path, data: list[str]) -> Path:
    check = validate_config(config, str(folder))
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_file, folder / "1" / "model.onnx")
    for name in data:  # weights past protobuf's limit live beside the graph, under the name the graph gives
        shutil.copyfile(onnx_file.with_name(name), folder / "1" / name)
    (folder / "config.pbtxt").write_text(f"# segensemble export-triton; validated: {check}\n" + config)
    return folder / "config.pbtxt"
