"""Start uvicorn on the app. SIGTERM: uvicorn stops accepting, finishes in-flight requests, then the
lifespan drains the batch queue before the process exits."""

from __future__ import annotations

import copy

from segensemble.serve.app import create_app, open_engine
from segensemble.serve.settings import ServeSettings


def log_config() -> dict:
    """uvicorn's logging, with segensemble's own loggers (disconnects, failures) on the same handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["segensemble"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(create_app(settings, open_engine(settings)), host=host, port=port, log_level="info", log_config=log_config(),
                timeout_graceful_shutdown=int(settings.timeout_s) + 5,
                # a backstop on open connections (uvicorn answers 503 past it, /healthz included); the app's own
                # bounds (uploads, queue) are far below it, so /healthz keeps answering when /segment refuses work
                limit_concurrency=4 * (settings.max_queue + settings.max_uploads) + 256)
