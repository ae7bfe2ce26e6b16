"""Start uvicorn on the app. SIGTERM: uvicorn stops accepting, finishes in-flight requests, then the
lifespan drains the batch queue before the process exits."""

from __future__ import annotations

from segensemble.serve.app import create_app
from segensemble.serve.settings import ServeSettings


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level="info",
                timeout_graceful_shutdown=int(settings.timeout_s) + 5,
                # a bound on open connections, past the request queue
                limit_concurrency=settings.max_queue + settings.max_batch + 64)
