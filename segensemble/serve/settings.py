"""Server settings: typed, with safe bounds by default; also read from SEGENSEMBLE_* environment variables
so ``uvicorn segensemble.serve.app:app`` works with ``SEGENSEMBLE_BUILD=DIR``."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from segensemble.cost import DEFAULT_MAX_MEGAPIXEL_VIEWS, DEFAULT_MAX_MEMORY_MB, Budget
from segensemble.errors import SegEnsembleError


class ServeSettings(BaseModel):
    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    build_dir: Path
    providers: tuple[str, ...] | None = None
    threads: int = 0
    trt_fp16: bool = False
    max_batch: int = Field(8, ge=1, description="most images grouped into one engine call")
    batch_window_ms: float = Field(5.0, ge=0, description="how long the first request of a batch waits for company")
    max_queue: int = Field(64, ge=1, description="requests waiting for the engine beyond this get 503")
    workers: int = Field(1, ge=1, description="engine calls running at once (throughput mode: 2 workers x --threads 1)")
    max_body_mb: float = Field(20.0, gt=0)
    max_pixels: int = Field(40_000_000, ge=1)
    timeout_s: float = Field(30.0, gt=0, description="a request not answered by then gets 504")
    body_timeout_s: float = Field(10.0, gt=0, description="a body not fully received by then gets 408")
    max_uploads: int = Field(64, ge=1, description="bodies being received at once; past it /segment answers 503")
    max_cost: float = Field(DEFAULT_MAX_MEGAPIXEL_VIEWS, gt=0, description="megapixel-views one image may cost (422 past it)")
    max_memory_mb: float = Field(DEFAULT_MAX_MEMORY_MB, gt=0, description="estimated activation memory one image may need (422 past it)")
    retry_after_s: int = Field(1, ge=1)

    @property
    def budget(self) -> Budget:
        return Budget(self.max_cost, self.max_memory_mb)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @classmethod
    def from_env(cls) -> ServeSettings:
        build = os.environ.get("SEGENSEMBLE_BUILD")
        if not build:
            raise SegEnsembleError("set SEGENSEMBLE_BUILD to a build directory (or use `ensemble serve --build DIR`)")
        values: dict = {"build_dir": Path(build)}
        for field in ("threads", "workers", "max_batch", "batch_window_ms", "max_queue", "max_body_mb", "max_pixels", "timeout_s",
                      "body_timeout_s", "max_uploads", "max_cost", "max_memory_mb"):
            raw = os.environ.get(f"SEGENSEMBLE_{field.upper()}")
            if raw:
                values[field] = raw
        if os.environ.get("SEGENSEMBLE_PROVIDERS"):
            values["providers"] = tuple(os.environ["SEGENSEMBLE_PROVIDERS"].split(","))
        return cls(**values)
