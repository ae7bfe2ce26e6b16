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


SILENT_CONNECTION_S = 5  # a connection that sends nothing for this long is closed (uvicorn's keep-alive timeout)


def _silent_connections_closed():
    """uvicorn's h11 protocol, with its keep-alive timer started when a connection opens, not only after a
    response: uvicorn never times out a connection that sends nothing, so 800 of them held every place of
    ``limit_concurrency`` and /healthz answered 503. A client that trickles its headers is the proxy's job."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class SilentConnectionsClosed(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    return SilentConnectionsClosed


def serve(settings: ServeSettings, port: int = 8000) -> None:
    import sys

    import uvicorn

    host = settings.host
    if not settings.loopback and settings.token is None:
        print(f"warning: serving on {host} without a token: anyone who can reach this address may call /segment; "
              "set SEGENSEMBLE_TOKEN (or --token) and send Authorization: Bearer <token>", file=sys.stderr)

    uvicorn.run(create_app(settings, open_engine(settings)), host=host, port=port, log_level="info", log_config=log_config(),
                timeout_graceful_shutdown=int(settings.timeout_s) + 5, http=_silent_connections_closed(),
                timeout_keep_alive=SILENT_CONNECTION_S,
                # a backstop on open connections (uvicorn answers 503 past it, /healthz included); the app's own
                # bounds (uploads, queue) are far below it, so /healthz keeps answering when /segment refuses work
                limit_concurrency=4 * (settings.max_queue + settings.max_uploads) + 256)
