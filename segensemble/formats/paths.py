"""Output paths derived from input names (an image's COCO ``file_name`` or relative path): always inside the
output folder the user named, never onto an input file.

A name is refused, with an error naming the image, when it is absolute (``/x``, ``C:\\x``, ``\\\\server``),
contains a ``..`` component (read as POSIX or Windows), is empty or holds a NUL byte. A name that passes
can still resolve elsewhere through a symbolic link inside the output folder, so the resolved target is
checked to lie under the resolved folder, and to differ from the image it was computed from.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from segensemble.errors import ImageError


def safe_name(name: str) -> str:
    """A plan's name (member, profile) as one file or folder name: letters, digits, '-' and '_' only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def check_image_name(name: str) -> str:
    """``name`` if it is a safe relative path; else ImageError naming it."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ImageError(repr(name), "an image name must be a non-empty relative path without NUL bytes")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        raise ImageError(name, "absolute image paths are refused: names must be relative to the image root")
    if ".." in posix.parts or ".." in windows.parts:
        raise ImageError(name, "'..' in an image name is refused: names must stay under the image root")
    return name


def output_path(root: Path, image_id: str, suffix: str, source: Path | None = None) -> Path:
    """``root/<image_id with suffix>``, checked to stay under ``root`` and not to be the input ``source``."""
    target = Path(root) / PurePosixPath(check_image_name(image_id)).with_suffix(suffix)
    resolved, base = target.resolve(), Path(root).resolve()
    if not resolved.is_relative_to(base):
        raise ImageError(image_id, f"its output {target} resolves to {resolved}, outside {root} (a symbolic link?); refused")
    if source is not None and resolved == Path(source).resolve():
        raise ImageError(image_id, f"its output {target} is the input image itself; write outputs to a folder apart from the images")
    return target
