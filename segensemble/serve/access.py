"""Who may call: an optional bearer token on the routes that do work or reveal it (/segment, /metrics);
/healthz, /readyz and the docs stay open for probes. Compared in constant time."""

from __future__ import annotations

import secrets

from fastapi import HTTPException, Request


def require_token(request: Request) -> None:
    """401 unless the request carries ``Authorization: Bearer <token>`` when the server has a token."""
    token = request.app.state.serve.settings.token
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(401, "missing or wrong bearer token (send Authorization: Bearer <token>)",
                            headers={"WWW-Authenticate": "Bearer"})
