"""What the app holds while it runs, typed, and the FastAPI dependency that hands it to routes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from segensemble.serve.metrics import Metrics
from segensemble.serve.settings import ServeSettings


@dataclass
class ServeState:
    settings: ServeSettings
    metrics: Metrics
    engine: object | None = None  # the whole ensemble's Engine, once loaded
    batchers: dict = field(default_factory=dict)  # profile name (None: the whole ensemble) -> Batcher
    ready: bool = False
    uploads: int = 0  # bodies being received now


def get_state(request: Request) -> ServeState:
    return request.app.state.serve


State = Annotated[ServeState, Depends(get_state)]
