"""The FastAPI app: the engine loads once in the lifespan, is warmed up, then serves.

``create_app(settings)`` for programs and tests; ``app`` (module attribute, built lazily from
SEGENSEMBLE_BUILD) for ``uvicorn segensemble.serve.app:app``.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import numpy as np

from segensemble.serve.settings import ServeSettings


def open_engine(settings: ServeSettings):
    """The engine the settings ask for; opened before uvicorn starts, so a bad build is a one-line error."""
    from segensemble.runtime.engine import open_engine as open_build

    return open_build(settings.build_dir, settings.run_config)


def create_app(settings: ServeSettings, engine=None):
    """The app over ``engine`` (opened from the settings in the lifespan when not given)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi_offline import FastAPIOffline
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from segensemble.serve.metrics import Metrics
    from segensemble.serve.routes import router
    from segensemble.serve.state import ServeState

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from segensemble.serve.batching import Batcher

        state = app.state.serve
        state.engine = engine or open_engine(settings)
        # one batcher per profile (each its own graph): requests are only grouped with requests for the same views
        for name in [None, *state.engine.manifest.profiles]:
            profiled = state.engine.with_profile(name)
            profiled.predict([np.zeros((64, 64, 3), np.uint8)])  # warm-up: first ORT runs allocate and tune
            state.batchers[name] = Batcher(profiled, settings.max_batch, settings.batch_window_ms / 1000, settings.max_queue,
                                           on_batch=state.metrics.batch_size.observe, workers=settings.calls_in_flight)
        for batcher in state.batchers.values():
            batcher.start()
        state.ready = True
        yield
        state.ready = False
        for batcher in state.batchers.values():
            await batcher.stop()

    # /docs and /redoc from assets shipped in fastapi-offline: a cluster's server has no CDN to load Swagger UI from
    app = FastAPIOffline(title="segensemble", version=_version(), lifespan=lifespan,
                  description="Semantic segmentation by a soft-voting ensemble: the same engine as `ensemble predict`.")
    app.state.serve = ServeState(settings, Metrics.create())
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.trusted_hosts)  # DNS rebinding: 400 for other names
    app.include_router(router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.openapi = lambda: _openapi(app, settings)
    return app


async def _validation_error(request, exc):
    """A bad query parameter, in the documented error shape ({"detail": text}) rather than FastAPI's list."""
    from fastapi.responses import JSONResponse

    text = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return JSONResponse({"detail": text}, status_code=422)


def _openapi(app, settings: ServeSettings) -> dict:
    """FastAPI's schema, with `profile` restricted to the profiles this build has (empty: the whole ensemble)."""
    from fastapi.openapi.utils import get_openapi

    from segensemble.manifest import read_manifest

    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        names = sorted(read_manifest(settings.build_dir).profiles)
        for param in schema["paths"]["/segment"]["post"]["parameters"]:
            if param["name"] == "profile":
                param["schema"] = {"anyOf": [{"type": "string", "enum": ["", *names]}, {"type": "null"}], "title": "Profile"}
        app.openapi_schema = schema
    return app.openapi_schema


def _version() -> str:
    import segensemble

    return segensemble.__version__


def __getattr__(name: str):
    if name == "app":  # built on first access so importing this module needs no environment
        return create_app(ServeSettings.from_env())
    raise AttributeError(name)
