"""The one exception family users see: each message names the file, field or request at fault."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (libraries' messages run to pages), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


class SegEnsembleError(Exception):
    """A problem with the user's input (plan, checkpoint, image, flag); printed without a traceback."""


class PlanError(SegEnsembleError):
    """plan.yaml is invalid; the message starts with the YAML path of the bad field."""


class CheckpointError(SegEnsembleError):
    """A checkpoint cannot be loaded into the requested architecture."""


class ExportError(SegEnsembleError):
    """An export failed or did not reproduce PyTorch within tolerance."""


class ImageError(SegEnsembleError):
    """An image is missing, unreadable, truncated or too large."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
