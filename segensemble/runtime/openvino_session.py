"""The ensemble graph on OpenVINO (CPU), for ``--precision bf16``: the same ``ensemble.onnx``, compiled with
``INFERENCE_PRECISION_HINT=bf16`` so convolutions run on the CPU's bf16 units (AVX512_BF16, AMX).

It answers the same calls as the ONNX Runtime session (``GraphSession``): ``run(images, names)``, the
metadata, the providers (here ``OpenVINO:CPU``). bf16 is refused on a CPU without native bf16 instructions:
OpenVINO would emulate it, slower than fp32.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segensemble.errors import SegEnsembleError
from segensemble.extras import missing_extra
from segensemble.graph_io import INPUT, REGION, TILE_BATCH, region_feed

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def check_bf16(flags: set[str] | None = None) -> None:
    """Refuse bf16 where the CPU lacks it, naming the missing feature."""
    flags = cpu_flags() if flags is None else flags
    if not flags & set(BF16_FLAGS):
        raise SegEnsembleError("--precision bf16 needs a CPU with native bf16 (AVX512_BF16 or AMX); this CPU has neither "
                               f"({', '.join(BF16_FLAGS)} missing from its flags), and emulated bf16 is slower than fp32: use fp32")


@dataclass
class OpenVinoSession:
    """A compiled ensemble graph run one call at a time: two Python threads driving one compiled model (two
    streams) deadlocked intermittently in a CI run (every thread waiting on the GIL, one inside OpenVINO's input
    dispatch), and a single stream with all the threads measured faster anyway (1.90x vs 1.68x fp32)."""

    path: Path
    compiled: object
    metadata: dict[str, str]
    precision: str
    requested: list[str] = field(default_factory=lambda: ["OpenVINO:CPU"])
    active: list[str] = field(default_factory=lambda: ["OpenVINO:CPU"])
    io_binding: bool = False
    device: str = "cpu"
    fell_back: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _request: object = field(default=None, repr=False)

    def output_channels(self, name: str) -> int:
        return int(self.compiled.output(name).get_partial_shape()[1].get_length())

    @property
    def regional(self) -> bool:
        return any(REGION in i.get_names() for i in self.compiled.inputs)

    @property
    def chunked(self) -> bool:
        return any(TILE_BATCH in i.get_names() for i in self.compiled.inputs)

    def run(self, images: np.ndarray, names: list[str], control=None, region=None, tile_batch=None) -> list[np.ndarray]:
        """The outputs ``names`` for a uint8 (N, H, W, 3) batch or a region of it (``control`` is not supported
        here: runs finish)."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        feed = {INPUT: images, **region_feed(region, tile_batch)}
        with self._lock:
            if self._request is None:
                self._request = self.compiled.create_infer_request()
            result = self._request.infer(feed)
            return [np.array(result[self.compiled.output(n)]) for n in names]


def open_openvino(path: Path, precision: str, threads: int, streams: int) -> OpenVinoSession:
    """Compile ``path`` for the CPU at ``precision`` (bf16 or f32)."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise missing_extra(exc, "--precision bf16 (OpenVINO)") or exc from None
    import onnx

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": 1}  # one call at a time (see OpenVinoSession)
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads * max(1, streams)  # the threads every worker would have had
    try:
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    except Exception as exc:  # OpenVINO raises RuntimeError with pages of context
        from segensemble.errors import first_line

        raise SegEnsembleError(f"{path}: OpenVINO cannot compile this graph ({first_line(exc)})") from exc
    metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return OpenVinoSession(path, compiled, metadata, precision)
