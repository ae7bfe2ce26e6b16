"""How a build runs: one frozen, validated ``RunConfig`` that every entry point (the Python API, the CLI,
serve, Ray, the demo, analyze, the precision check) builds and hands to ``runtime.engine.open_engine``.

One meaning per field:

- ``images_per_call``: consecutive same-size images stacked into one graph run by offline jobs (not serve's
  batching window, which groups concurrent requests up to ``ServeSettings.max_batch``);
- ``calls_in_flight``: graph runs going at once (the session is thread-safe); on a CPU two calls with half the
  threads each beat one with all of them (docs/benchmarks.md);
- ``intra_op_threads``: ONNX Runtime threads per call; 0 divides the CPU's logical cores among the calls in
  flight, or with one call leaves ONNX Runtime its own default (one per physical core);
- ``precision``: fp32 (exact), bf16 (OpenVINO on a CPU with AVX512_BF16 or AMX), fp16 (TensorRT on a GPU);
- ``max_cost`` / ``max_memory_mb``: the per-image budget checked from the header (``cost.py``); a plan whose
  members are all tiled runs a larger image within ``max_memory_mb``: its tiles in chunks and, if still too
  large, region by region (``runtime/regions.py``);
- ``max_pixels`` / ``tiff_level``: how input files are read (``formats/images.py``): the largest image in
  pixels, and the pyramid level of a TIFF (0: full resolution).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from enum import Enum

from segensemble.cost import DEFAULT_MAX_MEGAPIXEL_VIEWS, DEFAULT_MAX_MEMORY_MB, Budget
from segensemble.errors import SegEnsembleError
from segensemble.formats.images import ReadOptions


class Precision(str, Enum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


PRECISIONS = tuple(p.value for p in Precision)


@dataclass(frozen=True)
class RunConfig:
    """How to run a build; validated when made (a bad value raises SegEnsembleError naming the field)."""

    providers: tuple[str, ...] | None = None  # ONNX Runtime providers in order (tensorrt, cuda, cpu); None: best available
    precision: Precision = Precision.FP32
    intra_op_threads: int = 0
    calls_in_flight: int = 1
    images_per_call: int = 1
    max_cost: float = DEFAULT_MAX_MEGAPIXEL_VIEWS
    max_memory_mb: float = DEFAULT_MAX_MEMORY_MB
    max_pixels: int | None = None  # None: Pillow's own limit
    tiff_level: int = 0
    io_binding: bool | None = None  # None: on when a GPU provider is active
    # TensorRT's optimization-profile shapes of the input, (N, H, W) min, opt, max (not a plan profile); None: from the plan
    trt_shapes: tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]] | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "precision", Precision(self.precision))
        except ValueError:
            raise SegEnsembleError(f"precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}") from None
        if self.providers is not None:
            object.__setattr__(self, "providers", tuple(self.providers))
        for name, low in (("intra_op_threads", 0), ("calls_in_flight", 1), ("images_per_call", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 4096:
                raise SegEnsembleError(f"{name}: must be an integer in {low}..4096 (got {value!r})")
        if self.max_pixels is not None and (isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 1):
            raise SegEnsembleError(f"max_pixels: must be a positive integer (got {self.max_pixels!r})")
        if isinstance(self.tiff_level, bool) or not isinstance(self.tiff_level, int) or not 0 <= self.tiff_level <= 64:
            raise SegEnsembleError(f"tiff_level: must be an integer in 0..64 (got {self.tiff_level!r})")
        for name in ("max_cost", "max_memory_mb"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise SegEnsembleError(f"{name}: must be a finite number > 0 (got {value!r})")

    @property
    def reading(self) -> ReadOptions:
        return ReadOptions(self.max_pixels, self.tiff_level)

    @property
    def budget(self) -> Budget:
        return Budget(self.max_cost, self.max_memory_mb)

    @property
    def threads(self) -> int:
        """ONNX Runtime intra-op threads per call (0: ONNX Runtime's own default)."""
        if self.intra_op_threads or self.calls_in_flight == 1:
            return self.intra_op_threads
        return max(1, (os.cpu_count() or 1) // self.calls_in_flight)
