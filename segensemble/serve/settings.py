"""Server settings: typed, bounded, with safe defaults; each may also come from the environment as
``SEGENSEMBLE_<FIELD>`` (pydantic-settings), so ``uvicorn segensemble.serve.app:app`` works with
``SEGENSEMBLE_BUILD=DIR`` alone. Values given in code (the ``ensemble serve`` flags) win over the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from segensemble.cost import DEFAULT_MAX_MEGAPIXEL_VIEWS, DEFAULT_MAX_MEMORY_MB, Budget
from segensemble.errors import SegEnsembleError
from segensemble.run_config import Precision, RunConfig


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEGENSEMBLE_", frozen=True, allow_inf_nan=False, extra="ignore")

    build_dir: Path = Field(validation_alias=AliasChoices("build_dir", "SEGENSEMBLE_BUILD"), description="the build directory")
    providers: Annotated[tuple[str, ...] | None, NoDecode] = Field(None, description="ONNX Runtime providers in order (env: comma-separated)")
    intra_op_threads: int = Field(0, ge=0, validation_alias=AliasChoices(
        "intra_op_threads", "SEGENSEMBLE_INTRA_OP_THREADS", "SEGENSEMBLE_THREADS"),
        description="ONNX Runtime threads per call (0: the cores divided among the calls in flight; with one, ORT's default)")
    precision: Precision = Field(Precision.FP32, description="fp32, bf16 (OpenVINO, CPU) or fp16 (TensorRT)")
    max_batch: int = Field(8, ge=1, description="most images grouped into one engine call")
    batch_window_ms: float = Field(5.0, ge=0, description="how long the first request of a batch waits for company")
    max_queue: int = Field(64, ge=1, description="requests waiting for the engine beyond this get 503")
    calls_in_flight: int = Field(1, ge=1, validation_alias=AliasChoices(
        "calls_in_flight", "SEGENSEMBLE_CALLS_IN_FLIGHT", "SEGENSEMBLE_WORKERS"),
        description="engine calls running at once (throughput mode: 2 calls x 1 intra-op thread)")
    max_body_mb: float = Field(20.0, gt=0)
    max_pixels: int = Field(40_000_000, ge=1)
    timeout_s: float = Field(30.0, gt=0, description="a request not answered by then gets 504")
    body_timeout_s: float = Field(10.0, gt=0, description="a body not fully received by then gets 408")
    max_uploads: int = Field(64, ge=1, description="bodies being received at once; past it /segment answers 503")
    max_cost: float = Field(DEFAULT_MAX_MEGAPIXEL_VIEWS, gt=0, description="megapixel-views one image may cost (422 past it)")
    max_memory_mb: float = Field(DEFAULT_MAX_MEMORY_MB, gt=0, description="estimated activation memory one image may need (422 past it)")
    retry_after_s: int = Field(1, ge=1)
    # access: who may call, and under which names
    host: str = Field("127.0.0.1", description="the address uvicorn binds (it decides the default allowed_hosts)")
    token: str | None = Field(None, min_length=16, description="bearer token /segment and /metrics require (env: SEGENSEMBLE_TOKEN)")
    allowed_hosts: Annotated[tuple[str, ...] | None, NoDecode] = Field(
        None, description="Host header values accepted (env: comma-separated; default: localhost names when bound to "
                          "loopback, any otherwise); others get 400, which stops DNS rebinding")

    @property
    def loopback(self) -> bool:
        import ipaddress

        try:
            return self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def trusted_hosts(self) -> list[str]:
        if self.allowed_hosts:
            return list(self.allowed_hosts)
        return ["localhost", "127.0.0.1", "::1"] if self.loopback else ["*"]

    @field_validator("providers", "allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        return tuple(p.strip() for p in value.split(",") if p.strip()) if isinstance(value, str) else value

    @property
    def budget(self) -> Budget:
        return Budget(self.max_cost, self.max_memory_mb)

    @property
    def run_config(self) -> RunConfig:
        """The engine's RunConfig: one call holds up to ``max_batch`` requests' images."""
        return RunConfig(self.providers, self.precision, self.intra_op_threads, self.calls_in_flight, self.max_batch,
                         self.max_cost, self.max_memory_mb)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @classmethod
    def from_flags(cls, **values) -> ServeSettings:
        """Settings from `ensemble serve`'s flags; a bad value is a one-line error naming its flag."""
        try:
            return cls(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            flag = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "settings"
            raise SegEnsembleError(f"{flag}: {err['msg']} (got {err.get('input')!r})") from None

    @classmethod
    def from_env(cls) -> ServeSettings:
        try:
            return cls()
        except ValidationError as exc:
            if any(e["loc"] == ("SEGENSEMBLE_BUILD",) or e["type"] == "missing" for e in exc.errors()):
                raise SegEnsembleError("set SEGENSEMBLE_BUILD to a build directory (or use `ensemble serve --build DIR`)") from None
            raise SegEnsembleError(f"SEGENSEMBLE_* settings: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
