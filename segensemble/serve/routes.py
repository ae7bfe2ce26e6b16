"""Routes: thin adapters over the engine (via the batcher) and the output encoders."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse

from segensemble.errors import ImageError, SegEnsembleError
from segensemble.formats.coco import class_rles, mask_rles
from segensemble.formats.images import decode_image, header_size
from segensemble.formats.masks import encode_mask_zip, encode_png, encode_probs
from segensemble.runtime.engine import LABELS, MASKS, PROBS, Want
from segensemble.serve.access import require_token
from segensemble.serve.batching import Batcher, DeadlineExceeded, QueueFull, Ticket
from segensemble.serve.body import ClientGone, read_image_bytes
from segensemble.serve.schemas import ErrorBody, Ready, SegmentJson
from segensemble.serve.settings import ServeSettings
from segensemble.serve.state import ServeState, State

log = logging.getLogger(__name__)
router = APIRouter()
_WANT = {"png": Want({LABELS, MASKS}), "json": Want({LABELS, MASKS, PROBS}), "probs": Want({PROBS})}  # graph outputs per format

Format = Annotated[Literal["png", "json", "probs"], Query(alias="format",
    description="png: the label map as a PNG (uint8 class ids, default; a binary task's 0/1 mask; a multilabel task's "
                "zip of one 0/1 PNG per class, `<class>.png`); json: per-class COCO RLE with class name, area and mean "
                "confidence, for every task (classes may overlap in a multilabel task); probs: float16 probabilities "
                "(C, H, W) in a compressed .npz under key `probs`")]

Profile = Annotated[str | None, Query(
    description="a lighter profile named in the build's plan (profiles:), e.g. fewer TTA views; default: the whole ensemble")]

_ERRORS = {code: {"model": ErrorBody, "description": text} for code, text in {
    400: "empty body, a multipart body without a `file` field, or a Host header the server does not accept",
    401: "the server has a token and the request lacks it (Authorization: Bearer <token>)",
    408: "the body did not arrive within the server's body timeout",
    413: "body larger than the server's limit",
    415: "content type is neither an image type nor multipart/form-data",
    422: "undecodable or truncated image, more pixels than the server's limit, an image whose estimated cost exceeds "
         "the budget (--max-cost, --max-memory-mb), or an invalid query parameter",
    503: "queue full, overloaded (the work admitted would keep this request past its deadline), or too many uploads "
         "in progress (see Retry-After), or not ready yet",
    504: "not answered within the server's deadline, counted from the request's arrival",
}.items()}

_BODY_DOC = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "minLength": 1, "description": "the image"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary", "minLength": 1, "description": "raw image bytes (PNG, JPEG, ...)"}},
}}}


@router.get("/healthz", summary="the process is alive")
async def healthz() -> dict:
    return {"status": "alive"}


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}}, summary="the model is loaded and warmed up")
async def readyz(state: State, response: Response) -> Ready:
    engine, ready = state.engine, state.ready
    response.status_code = 200 if ready else 503
    return Ready(
        ready=ready, providers=engine.active_providers if engine else [],
        requested_providers=list(engine.graph.requested) if engine else [],
        fell_back_to_cpu=engine.fell_back if engine else False, members=len(engine.members) if engine else 0,
        forward_passes_per_image=engine.forward_passes if engine else 0,
        runtime=engine.runtime if engine else "", device=engine.graph.device if engine else "", precision=engine.precision if engine else "",
        profiles={name: batcher.engine.forward_passes for name, batcher in state.batchers.items() if name},
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse, dependencies=[Depends(require_token)],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format"}})
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")


@router.post("/segment", summary="segment one image with the ensemble", responses={
    200: {"model": SegmentJson, "content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
          "description": "by `format`: image/png (png), application/json (json), application/octet-stream (probs)"},
    **_ERRORS}, openapi_extra=_BODY_DOC, dependencies=[Depends(require_token)])
async def segment(request: Request, state: State, fmt: Format = "png", profile: Profile = None) -> Response:
    settings = state.settings
    started, status = time.perf_counter(), 500
    deadline = time.monotonic() + settings.timeout_s  # counted from arrival: upload, header, decode, queue and run
    try:
        if not state.ready:
            raise HTTPException(503, "not ready yet", headers={"Retry-After": str(settings.retry_after_s)})
        batcher = state.batchers.get(profile or None)
        if batcher is None:
            raise HTTPException(422, f"unknown profile {profile!r}; this build has {sorted(p for p in state.batchers if p) or 'none'}")
        data, source = await _receive(state, settings, request)
        ticket = await _admit(settings, batcher, data, source, deadline)
        try:
            image = await _off_loop(deadline, settings.timeout_s, decode_image, data, source, settings.max_pixels)
        except BaseException:
            batcher.release(ticket)
            raise
        prediction = await _run(state, settings, batcher, ticket, image, _WANT[fmt])
        response = await run_in_threadpool(_render, prediction, fmt, state.engine.classes, state.engine.fusion.task)
        status = 200
        return response
    except HTTPException as exc:
        status = exc.status_code
        raise
    except ClientGone:
        status = 499  # nginx's label: the client closed the connection first; nothing to answer
        log.info("client %s disconnected before its request body arrived", request.client.host if request.client else "?")
        return Response(status_code=499)
    finally:
        state.metrics.requests.labels(status=str(status)).inc()
        state.metrics.latency.observe(time.perf_counter() - started)


async def _receive(state: ServeState, settings: ServeSettings, request: Request) -> tuple[bytes, str]:
    """The body, with at most ``max_uploads`` being received at once (slow clients cannot hold every
    connection: past it /segment answers 503 at once, and /healthz is never involved)."""
    if state.uploads >= settings.max_uploads:
        raise HTTPException(503, f"{settings.max_uploads} uploads already in progress; retry later",
                            headers={"Retry-After": str(settings.retry_after_s)})
    state.uploads += 1
    try:
        return await read_image_bytes(request, settings.max_body_bytes, settings.body_timeout_s)
    finally:
        state.uploads -= 1


async def _off_loop(deadline: float, timeout_s: float, fn, *args):
    """``fn(*args)`` in the thread pool, never on the event loop; 504 at the deadline, 422 for a bad image."""
    try:
        return await asyncio.wait_for(run_in_threadpool(fn, *args), max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        raise HTTPException(504, f"not answered within {timeout_s:g}s of its arrival (the time ran out while its image "
                                 "was read)") from None
    except ImageError as exc:
        raise HTTPException(422, f"{exc.source}: {exc.reason}") from None


async def _admit(settings: ServeSettings, batcher: Batcher, data: bytes, source: str, deadline: float) -> Ticket:
    """Header checks (pixels, the ensemble's cost budget) and a place in the queue, before any pixel is decoded;
    a request the admitted work would keep past its deadline is refused now (503), not timed out later."""
    hw = await _off_loop(deadline, settings.timeout_s, header_size, data, source)
    if hw[0] * hw[1] > settings.max_pixels:
        raise HTTPException(422, f"{source}: {hw[1]}x{hw[0]} = {hw[0] * hw[1]} pixels exceeds the limit of {settings.max_pixels}")
    try:
        batcher.engine.admit(hw, source)
    except ImageError as exc:
        raise HTTPException(422, f"{source}: {exc.reason}") from None
    try:
        return batcher.admit(batcher.engine.cost(hw).megapixel_views, deadline)
    except QueueFull as exc:
        retry = max(settings.retry_after_s, math.ceil(exc.retry_after_s))
        raise HTTPException(503, f"{exc.reason}; retry later", headers={"Retry-After": str(retry)}) from None


async def _run(state: ServeState, settings: ServeSettings, batcher: Batcher, ticket: Ticket, image, want: Want):
    """The batched engine call, its failures turned into the conventional statuses."""
    state.metrics.queue_depth.set(batcher.depth)
    try:
        return await batcher.submit(ticket, image, want)
    except DeadlineExceeded:
        raise HTTPException(504, f"not answered within {settings.timeout_s:g}s of its arrival") from None
    except SegEnsembleError as exc:  # e.g. a size a fixed-shape member cannot take
        raise HTTPException(422, str(exc)) from None
    except Exception:
        log.exception("the ensemble failed on a request")
        raise HTTPException(500, "the ensemble failed on this image; the server log has the details") from None
    finally:
        state.metrics.queue_depth.set(batcher.depth)


def _render(prediction, fmt: str, classes: list[str], task: str) -> Response:
    if fmt == "png" and task == "multilabel":
        return Response(encode_mask_zip(prediction.masks, classes), media_type="application/zip",
                        headers={"Content-Disposition": 'attachment; filename="masks.zip"'})
    if fmt == "png":
        return Response(encode_png(prediction.labels if task == "multiclass" else prediction.masks[0]), media_type="image/png")
    if fmt == "probs":
        return Response(encode_probs(prediction.probs), media_type="application/octet-stream",
                        headers={"Content-Disposition": 'attachment; filename="probs.npz"'})
    h, w = prediction.probs.shape[1:]
    entries = class_rles(prediction.labels, classes, prediction.probs) if task == "multiclass" else \
        mask_rles(prediction.masks, classes, prediction.probs)
    return Response(SegmentJson(width=int(w), height=int(h), classes=entries).model_dump_json(), media_type="application/json")
