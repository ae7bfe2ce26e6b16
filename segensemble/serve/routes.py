"""Routes: thin adapters over the engine (via the batcher) and the output encoders."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from segensemble.ensemble.engine import LABELS, PROBS, Want
from segensemble.errors import ImageError, SegEnsembleError
from segensemble.images import decode_image
from segensemble.outputs.coco import class_rles
from segensemble.outputs.masks import encode_png, encode_probs
from segensemble.serve.batching import DeadlineExceeded, QueueFull
from segensemble.serve.body import read_image_bytes
from segensemble.serve.schemas import ErrorBody, Ready, SegmentJson

log = logging.getLogger(__name__)
router = APIRouter()
_WANT = {"png": Want({LABELS}), "json": Want({LABELS, PROBS}), "probs": Want({PROBS})}  # graph outputs each format needs

Format = Annotated[Literal["png", "json", "probs"], Query(
    description="png: the label map as a PNG (uint8 class ids, default); json: per-class COCO RLE with class name, "
                "area and mean confidence; probs: float16 probabilities (C, H, W) in a compressed .npz under key `probs`")]

Profile = Annotated[str | None, Query(
    description="a lighter profile named in the build's plan (profiles:), e.g. fewer TTA views; default: the whole ensemble")]

_ERRORS = {code: {"model": ErrorBody, "description": text} for code, text in {
    400: "empty body, or a multipart body without a `file` field",
    413: "body larger than the server's limit",
    415: "content type is neither an image type nor multipart/form-data",
    422: "undecodable or truncated image, or more pixels than the server's limit",
    503: "queue full (see Retry-After) or not ready yet",
    504: "the request waited past its deadline",
}.items()}

_BODY_DOC = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary", "description": "the image"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary", "description": "raw image bytes (PNG, JPEG, ...)"}},
}}}


@router.get("/healthz", summary="the process is alive")
async def healthz() -> dict:
    return {"status": "alive"}


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}}, summary="the model is loaded and warmed up")
async def readyz(request: Request, response: Response) -> Ready:
    state = request.app.state
    engine = getattr(state, "engine", None)
    ready = bool(getattr(state, "ready", False))
    response.status_code = 200 if ready else 503
    return Ready(
        ready=ready, providers=engine.active_providers if engine else [],
        requested_providers=list(engine.graph.requested) if engine else [],
        fell_back_to_cpu=engine.fell_back if engine else False, members=len(engine.members) if engine else 0,
        forward_passes_per_image=engine.forward_passes if engine else 0,
        profiles={name: state.batchers[name].engine.forward_passes for name in getattr(state, "batchers", {}) if name},
    )


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")


@router.post("/segment", summary="segment one image with the ensemble", responses={
    200: {"content": {"image/png": {}, "application/json": {"schema": SegmentJson.model_json_schema()},
                      "application/octet-stream": {}}, "description": "by `format`"}, **_ERRORS}, openapi_extra=_BODY_DOC)
async def segment(request: Request, format: Format = "png", profile: Profile = None) -> Response:
    state, settings = request.app.state, request.app.state.settings
    started, status = time.perf_counter(), 500
    try:
        if not getattr(state, "ready", False):
            raise HTTPException(503, "not ready yet", headers={"Retry-After": str(settings.retry_after_s)})
        batcher = state.batchers.get(profile)
        if batcher is None:
            raise HTTPException(422, f"unknown profile {profile!r}; this build has {sorted(p for p in state.batchers if p) or 'none'}")
        data, source = await read_image_bytes(request, settings.max_body_bytes)
        try:
            image = await run_in_threadpool(decode_image, data, source, settings.max_pixels)
        except ImageError as exc:
            raise HTTPException(422, f"{source}: {exc.reason}") from None
        prediction = await _run(state, settings, batcher, image, _WANT[format])
        response = await run_in_threadpool(_render, prediction, format, state.engine.classes)
        status = 200
        return response
    except HTTPException as exc:
        status = exc.status_code
        raise
    finally:
        state.metrics.requests.labels(status=str(status)).inc()
        state.metrics.latency.observe(time.perf_counter() - started)


async def _run(state, settings, batcher, image, want):
    """The batched engine call, its failures turned into the conventional statuses."""
    state.metrics.queue_depth.set(batcher.depth + 1)
    try:
        return await batcher.submit(image, want, settings.timeout_s)
    except QueueFull:
        raise HTTPException(503, f"queue full ({settings.max_queue} waiting); retry later",
                            headers={"Retry-After": str(settings.retry_after_s)}) from None
    except DeadlineExceeded:
        raise HTTPException(504, f"not answered within {settings.timeout_s:g}s") from None
    except SegEnsembleError as exc:  # e.g. a size a fixed-shape member cannot take
        raise HTTPException(422, str(exc)) from None
    except Exception:
        log.exception("the ensemble failed on a request")
        raise HTTPException(500, "the ensemble failed on this image; the server log has the details") from None
    finally:
        state.metrics.queue_depth.set(batcher.depth)


def _render(prediction, fmt: str, classes: list[str]) -> Response:
    if fmt == "png":
        return Response(encode_png(prediction.labels), media_type="image/png")
    if fmt == "probs":
        return Response(encode_probs(prediction.probs), media_type="application/octet-stream",
                        headers={"Content-Disposition": 'attachment; filename="probs.npz"'})
    labels = prediction.labels
    body = SegmentJson(width=int(labels.shape[1]), height=int(labels.shape[0]), classes=class_rles(labels, classes, prediction.probs))
    return Response(body.model_dump_json(), media_type="application/json")
