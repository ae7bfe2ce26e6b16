"""ONNX Runtime sessions over the ensemble graph: provider choice, deliberate options, IO binding on GPUs.

Provider order: TensorRT, then CUDA, then CPU, among those this onnxruntime build offers; ``providers``
overrides it. onnxruntime-gpu lists TensorRT even when TensorRT's libraries are not installed (the common
case), so TensorRT is only chosen when ``libnvinfer`` loads; otherwise CUDA is used with one warning. ONNX
Runtime also silently falls back to CPU when CUDA libraries are missing, so the providers a session actually
got are read back and a fallback is reported, not assumed away.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from segensemble.errors import SegEnsembleError, first_line
from segensemble.graph_io import INPUT, REGION, TILE_BATCH, region_feed
from segensemble.run_config import PRECISIONS

log = logging.getLogger(__name__)

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
PREFERRED = (TRT, CUDA, CPU)
GPU_PROVIDERS = frozenset({TRT, CUDA})
_ALIASES = {"tensorrt": TRT, "trt": TRT, "cuda": CUDA, "cpu": CPU}
_NVINFER = ("libnvinfer.so.10", "libnvinfer.so", "nvinfer_10.dll", "nvinfer.dll")
_warned_trt = threading.Event()


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are built. ``threads=0`` lets ONNX Runtime use one thread per physical core."""

    providers: tuple[str, ...] | None = None
    threads: int = 0
    spin: bool = False  # ORT worker threads busy-wait between ops; measured slower here (see docs/benchmarks.md)
    trt_cache_dir: str | None = None  # engine + timing cache; the build directory's trt-cache/ by default
    trt_fp16: bool = False
    # TensorRT's optimization-profile shapes of the input `image` ((N, H, W) min, opt, max; not a plan profile); None: from the plan
    trt_shapes: tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]] | None = None
    io_binding: bool | None = None  # None: on when a GPU provider is active (input up once, requested outputs down)
    precision: str = "fp32"  # fp32 (exact, ONNX Runtime), bf16 (OpenVINO on a CPU with bf16), fp16 (TensorRT)
    streams: int = 1  # runs in flight at once (the engine's workers); OpenVINO sizes its CPU streams by it


@functools.cache
def tensorrt_loadable() -> bool:
    """Whether TensorRT's runtime library can be loaded (onnxruntime-gpu does not ship it)."""
    for name in _NVINFER:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def resolve_providers(requested: tuple[str, ...] | None, available: list[str] | None = None,
                      trt_ok=tensorrt_loadable) -> list[str]:
    """Requested providers (names or aliases) that exist here, or the preferred available ones."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    if requested:
        names = [_ALIASES.get(p.lower(), p) for p in requested]
        unknown = [n for n in names if n not in available]
        if unknown:
            raise SegEnsembleError(f"execution provider(s) {unknown} not available in this onnxruntime; available: {available}")
    else:
        names = [p for p in PREFERRED if p in available] or list(available)
    if TRT in names and not trt_ok():
        names = [n for n in names if n != TRT] or [CPU]
        if not _warned_trt.is_set():  # once per process, however many graphs open
            _warned_trt.set()
            log.warning("TensorRT's libraries (libnvinfer) are not installed: using %s. Install TensorRT 10 to use it.", ", ".join(names))
    return names


def _provider_entries(names: list[str], options: RuntimeOptions, profile_shapes: dict[str, str] | None) -> list:
    entries: list = []
    for name in names:
        if name == TRT:
            trt: dict = {"trt_fp16_enable": options.trt_fp16}
            if options.trt_cache_dir:
                Path(options.trt_cache_dir).mkdir(parents=True, exist_ok=True)
                trt |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": options.trt_cache_dir,
                        "trt_timing_cache_enable": True, "trt_timing_cache_path": options.trt_cache_dir}
            trt |= profile_shapes or {}
            entries.append((name, trt))
        else:
            entries.append(name)
    return entries


def trt_shape_options(shapes) -> dict[str, str]:
    """TensorRT EP provider options for (N, H, W) min/opt/max shapes of the uint8 NHWC input."""
    keys = ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")
    return {k: f"{INPUT}:{n}x{h}x{w}x3" for k, (n, h, w) in zip(keys, shapes)}


class RunCancelled(Exception):
    """A run stopped by ``RunControl.cancel`` (e.g. every request waiting on it timed out)."""


class RunControl:
    """One run's options: ``cancel()`` from any thread stops it between nodes; ``shrink`` hands the memory
    arena's unused regions back after a large run (ONNX Runtime keeps them otherwise)."""

    def __init__(self, shrink: bool = False):
        import onnxruntime as ort

        self._options = ort.RunOptions()
        self.shrink = shrink
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self._options.terminate = True

    def options(self, device: str):
        if self.shrink:
            self._options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0;gpu:0" if device == "cuda" else "cpu:0")
        return self._options


@dataclass
class GraphSession:
    """One ensemble graph: runs uint8 NHWC batches, returning only the outputs asked for."""

    path: Path
    session: object
    metadata: dict[str, str]
    requested: list[str]
    active: list[str] = field(default_factory=list)
    io_binding: bool = False
    precision: str = "fp32"
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def output_channels(self, name: str) -> int:
        return next(o.shape[1] for o in self.session.get_outputs() if o.name == name)

    @property
    def fell_back(self) -> bool:
        """True when a GPU provider was asked for and ONNX Runtime quietly gave CPU instead."""
        return bool(GPU_PROVIDERS & set(self.requested)) and not (GPU_PROVIDERS & set(self.active))

    @property
    def device(self) -> str:
        return "cuda" if GPU_PROVIDERS & set(self.active) else "cpu"

    @property
    def regional(self) -> bool:
        """Whether the graph takes a ``region`` input (every member tiled: a large image can run part by part)."""
        return any(i.name == REGION for i in self.session.get_overridable_initializers())

    @property
    def chunked(self) -> bool:
        """Whether the graph takes a ``tile_batch`` input (regional graphs built since it exists)."""
        return any(i.name == TILE_BATCH for i in self.session.get_overridable_initializers())

    def run(self, images: np.ndarray, names: list[str], control: RunControl | None = None,
            region: tuple[int, int, int, int] | None = None, tile_batch: int | None = None) -> list[np.ndarray]:
        """The outputs ``names`` for a uint8 (N, H, W, 3) batch, or for one ``region`` of it (rows, then columns,
        [start, stop) each) with at most ``tile_batch`` tiles per model call; ``control`` can cancel it or shrink
        memory after."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        options = control.options(self.device) if control else None
        try:
            if not self.io_binding:
                return self.session.run(names, {INPUT: images, **region_feed(region, tile_batch)}, options)
            return self._run_bound(images, names, options, region_feed(region, tile_batch))
        except Exception as exc:
            if control and control.cancelled:
                raise RunCancelled() from exc
            raise

    def _run_bound(self, images: np.ndarray, names: list[str], options=None, feed=None) -> list[np.ndarray]:
        """IO binding: the input goes to the device once; only ``names`` come back. Bindings are kept per
        thread and reused while the batch shape repeats (a thread's binding is not shared)."""
        import onnxruntime as ort

        key = (images.shape, tuple(names))
        cached = getattr(self._local, "bound", None)
        if cached is None or cached[0] != key:
            binding = self.session.io_binding()
            value = ort.OrtValue.ortvalue_from_shape_and_type(images.shape, np.uint8, self.device, 0)
            binding.bind_ortvalue_input(INPUT, value)
            cached = self._local.bound = (key, binding, value)
        _, binding, value = cached
        value.update_inplace(images)
        for name, array in (feed or {}).items():
            binding.bind_cpu_input(name, array)
        binding.clear_binding_outputs()
        for name in names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding, options)
        return binding.copy_outputs_to_cpu()


def session_options(options: RuntimeOptions):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # conv+bn+act fusion matters most
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # views run one after another; parallel mode only adds overhead
    so.intra_op_num_threads = options.threads  # 0: onnxruntime picks one thread per physical core
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # busy-waiting workers steal the cores that decoding, the HTTP loop and the other batch in flight need
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin else "0")
    return so


def open_graph(path: str | Path, options: RuntimeOptions = RuntimeOptions(), default_shapes=None):
    """Load an ensemble graph on the runtime its precision needs: ONNX Runtime (fp32 on any provider, fp16 on
    TensorRT) or OpenVINO (bf16 on a CPU with native bf16). Both answer the same calls."""
    path = Path(path)
    if not path.is_file():
        raise SegEnsembleError(f"{path}: ONNX file not found")
    if options.precision not in PRECISIONS:
        raise SegEnsembleError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {options.precision!r}")
    if options.precision == "bf16":
        from segensemble.runtime.openvino_session import check_bf16, open_openvino

        check_bf16()
        return open_openvino(path, "bf16", options.threads, options.streams)
    return _open_onnxruntime(path, options, default_shapes)


def _open_onnxruntime(path: Path, options: RuntimeOptions, default_shapes) -> GraphSession:
    import onnxruntime as ort

    names = resolve_providers(options.providers)
    if options.precision == "fp16":
        if TRT not in names:
            raise SegEnsembleError(f"--precision fp16 runs on TensorRT, which is not usable here (providers: {', '.join(names)}); "
                                   "on a CPU use --precision bf16 (OpenVINO), or fp32")
        options = replace(options, trt_fp16=True)
    shapes = options.trt_shapes or default_shapes
    entries = _provider_entries(names, options, trt_shape_options(shapes) if shapes and TRT in names else None)
    so = session_options(options)
    try:
        session = ort.InferenceSession(str(path), sess_options=so, providers=entries)
        if any(i.name == REGION for i in session.get_overridable_initializers()):
            # a region changes the shapes inside the graph while the input shapes stay the same, and ONNX Runtime
            # plans its memory pattern per input shape: off, as a precaution (the wrong values once put down to it
            # came from ScatterND's race, docs/graph.md)
            so.enable_mem_pattern = False
            session = ort.InferenceSession(str(path), sess_options=so, providers=entries)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise SegEnsembleError(f"{path}: onnxruntime cannot load this model ({first_line(exc)})") from exc
    active = list(session.get_providers())
    on_gpu = bool(GPU_PROVIDERS & set(active))
    graph = GraphSession(path, session, dict(session.get_modelmeta().custom_metadata_map), names, active,
                         io_binding=on_gpu if options.io_binding is None else options.io_binding,
                         precision="fp16" if options.trt_fp16 and TRT in active else "fp32")
    if graph.fell_back:
        log.warning("%s: asked for %s but onnxruntime is running on %s (CUDA/cuDNN libraries missing?)", path.name, names, active)
    return graph
