"""Opening paths a user named (images, checkpoints, build files): regular files only, size known before reading.

A FIFO would hang a reader, ``/dev/zero`` would feed it forever and a sparse file claims gigabytes it never
stored; each is refused by its type or size before a byte of it is read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from segensemble.errors import SegEnsembleError


def open_regular(path: str | Path, max_bytes: int | None = None, fail: Callable[[str], Exception] | None = None) -> BinaryIO:
    """``path`` opened for reading if it is a regular file of at most ``max_bytes``; otherwise ``fail(reason)``
    is raised (default: SegEnsembleError naming the path).

    Opened non-blocking, so a FIFO cannot hang the caller before it is recognised; ``/dev/zero`` and other
    devices are refused by their type, not read."""
    fail = fail or (lambda reason: SegEnsembleError(f"{path}: {reason}"))
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise fail(f"cannot read ({exc.strerror or exc})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise fail(f"not a regular file ({_kind(info.st_mode)}); refused")
        if max_bytes is not None and info.st_size > max_bytes:
            raise fail(f"{info.st_size} bytes exceeds the limit of {max_bytes} for one file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a plain file"
