"""Reading a request body safely: size-bounded before it is buffered, time-bounded while it arrives (a client
that stops sending gets 408), as raw image bytes or multipart."""

from __future__ import annotations

import asyncio

from fastapi import HTTPException, Request
from starlette.requests import ClientDisconnect
from starlette.requests import Request as StarletteRequest


class ClientGone(Exception):
    """The client closed the connection before its body arrived (logged as 499, not an error)."""


async def read_image_bytes(request: Request, limit: int, timeout_s: float) -> tuple[bytes, str]:
    """The image bytes and a name for error messages; 400/408/413/415 as HTTPException."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    multipart = ctype == "multipart/form-data"
    if not (multipart or ctype.startswith("image/")):
        raise HTTPException(415, f"content type {ctype or '(none)'!r} is not supported; "
                                 "send image/* bytes or multipart/form-data with a `file` field")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body of {int(declared)} bytes exceeds the limit of {limit}")
    body = bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    chunks = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), max(0.0, deadline - loop.time()))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise HTTPException(408, f"the request body did not arrive within {timeout_s:g}s ({len(body)} bytes received)") from None
        except ClientDisconnect:
            raise ClientGone() from None
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"body exceeds the limit of {limit} bytes")
    if not body:
        raise HTTPException(400, "empty body: send an image")
    if not multipart:
        return bytes(body), "request body"
    return await _multipart_file(request, bytes(body))


async def _multipart_file(request: Request, body: bytes) -> tuple[bytes, str]:
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await StarletteRequest(request.scope, receive).form(max_files=1, max_fields=64)
    except Exception as exc:  # malformed multipart
        raise HTTPException(400, f"malformed multipart body ({exc})") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise HTTPException(400, "multipart body needs a `file` field holding the image")
    data = await upload.read()
    if not data:
        raise HTTPException(400, f"uploaded file {upload.filename!r} is empty")
    return data, f"uploaded file {upload.filename!r}"
