"""ONNX Runtime sessions: provider choice, deliberate session options, and the metadata each file carries.

Provider order: TensorRT, then CUDA, then CPU, among those this onnxruntime build offers; ``providers``
overrides it. ONNX Runtime silently falls back to CPU when CUDA libraries are missing, so the providers a
session actually got are read back and a fallback is reported, not assumed away.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segensemble.errors import SegEnsembleError

log = logging.getLogger(__name__)

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_ALIASES = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
            "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are built. ``threads=0`` lets ONNX Runtime use one thread per physical core."""

    providers: tuple[str, ...] | None = None
    threads: int = 0
    spin: bool = False  # ORT worker threads busy-wait between ops; measured slower here (see docs/benchmarks.md)
    trt_cache_dir: str | None = None
    trt_fp16: bool = False


def resolve_providers(requested: tuple[str, ...] | None) -> list[str]:
    """Requested providers (names or aliases) that exist here, or the preferred available ones."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        names = [_ALIASES.get(p.lower(), p) for p in requested]
        unknown = [n for n in names if n not in available]
        if unknown:
            raise SegEnsembleError(f"execution provider(s) {unknown} not available in this onnxruntime; available: {available}")
        return names
    return [p for p in PREFERRED if p in available] or available


def _provider_entries(names: list[str], options: RuntimeOptions) -> list:
    entries: list = []
    for name in names:
        if name == "TensorrtExecutionProvider":
            trt = {"trt_fp16_enable": options.trt_fp16}
            if options.trt_cache_dir:
                trt |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": options.trt_cache_dir}
            entries.append((name, trt))
        else:
            entries.append(name)
    return entries


@dataclass
class ModelSession:
    """One ONNX model: runs NCHW float32 batches and knows its metadata and fixed shape, if any."""

    path: Path
    session: object
    input_name: str
    metadata: dict[str, str]
    requested: list[str]
    active: list[str] = field(default_factory=list)

    @property
    def classes(self) -> int | None:
        value = self.metadata.get("classes")
        return int(value) if value else None

    @property
    def fixed_hw(self) -> tuple[int, int] | None:
        value = self.metadata.get("fixed_hw")
        return tuple(json.loads(value)) if value else None  # type: ignore[return-value]

    @property
    def fell_back(self) -> bool:
        """True when a GPU provider was asked for and ONNX Runtime quietly gave CPU instead."""
        gpu = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}
        return bool(gpu & set(self.requested)) and not (gpu & set(self.active))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, C, H, W) for a normalized batch (N, 3, H, W)."""
        fixed = self.fixed_hw
        if fixed and tuple(batch.shape[2:]) != fixed:
            raise SegEnsembleError(
                f"{self.path.name}: this graph was exported for a fixed input of {fixed[0]}x{fixed[1]} "
                f"({self.metadata.get('shape_note', 'static shape')}) but a view needs {batch.shape[2]}x{batch.shape[3]}; "
                "use scale 1.0, the export's input_size and no H/W-swapping TTA for this member"
            )
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def open_session(path: str | Path, options: RuntimeOptions = RuntimeOptions()) -> ModelSession:
    """Load ``path`` with deliberate options: full graph optimization, sequential execution, set threads."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise SegEnsembleError(f"{path}: ONNX file not found")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # conv+bn+act fusion matters most
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # CNNs are a chain: parallel mode only adds overhead
    so.intra_op_num_threads = options.threads  # 0: onnxruntime picks one thread per physical core
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # busy-waiting workers steal the cores that decoding, the HTTP loop and the other session need
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin else "0")
    names = resolve_providers(options.providers)
    try:
        session = ort.InferenceSession(str(path), sess_options=so, providers=_provider_entries(names, options))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise SegEnsembleError(f"{path}: onnxruntime cannot load this model ({str(exc).splitlines()[0][:300]})") from exc
    meta = dict(session.get_modelmeta().custom_metadata_map)
    ms = ModelSession(path, session, session.get_inputs()[0].name, meta, names, list(session.get_providers()))
    if ms.fell_back:
        log.warning("%s: asked for %s but onnxruntime is running on %s (CUDA/TensorRT libraries missing?)", path.name, names, ms.active)
    return ms

