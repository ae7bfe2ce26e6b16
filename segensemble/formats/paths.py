"""Output paths derived from input names (an image's COCO ``file_name`` or relative path): always inside the
output folder the user named, never onto an input file.

A name is refused, with an error naming the image, when it is absolute (``/x``, ``C:\\x``, ``\\\\server``),
contains a ``..`` component (read as POSIX or Windows), is empty or holds a NUL byte. A name that passes
can still resolve elsewhere through a symbolic link inside the output folder, so the resolved target is
checked to lie under the resolved folder, and to differ from the image it was computed from.

An output named after an image keeps the image's whole name and adds its own suffix (``x.jpg`` ->
``x.jpg.png``), so ``x.jpg`` and ``x.png`` never share a mask. Before a job writes anything, ``check_outputs``
refuses two outputs that differ only in case (file systems may not tell them apart), an output that is one of
the job's inputs, and an existing file that segensemble did not write (``is_ours``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath

from segensemble.errors import ImageError, SegEnsembleError


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
    """``root/<image_id><suffix>``, checked to stay under ``root`` and not to be the input ``source``."""
    name = PurePosixPath(check_image_name(image_id))
    target = Path(root) / name.with_name(name.name + suffix)
    resolved, base = target.resolve(), Path(root).resolve()
    if not resolved.is_relative_to(base):
        raise ImageError(image_id, f"its output {target} resolves to {resolved}, outside {root} (a symbolic link?); refused")
    if source is not None and resolved == Path(source).resolve():
        raise ImageError(image_id, f"its output {target} is the input image itself; write outputs to a folder apart from the images")
    return target


def _key(path: Path) -> str:
    """A path as a case-insensitive file system would compare it."""
    return str(Path(path).resolve()).casefold()


def check_outputs(outputs: Iterable[tuple[Path, str]], inputs: Iterable[Path], is_ours: Callable[[Path], bool] | None = None) -> None:
    """Refuse, before the first write: two outputs on one path (case-insensitively), an output that is an
    input, and (with ``is_ours``) an existing output file that this tool did not write. ``outputs`` pairs each
    path with what it is, for the message (e.g. "mask of a.jpg")."""
    taken = {_key(p): p for p in inputs}
    seen: dict[str, str] = {}
    for path, what in outputs:
        key = _key(path)
        if key in taken:
            raise SegEnsembleError(f"{path} ({what}) is one of this run's inputs ({taken[key]}); refusing to overwrite it: "
                                   "write outputs elsewhere")
        if key in seen:
            raise SegEnsembleError(f"{path}: two outputs of this run would share it ({seen[key]} and {what}; names that differ "
                                   "only in case are one file on some file systems); rename one of the inputs")
        seen[key] = what
        if path.is_dir():
            raise SegEnsembleError(f"{path} ({what}) is a folder; name a file")
        if is_ours is not None and path.exists() and not is_ours(path):
            raise SegEnsembleError(f"{path} ({what}) already exists and was not written by segensemble; refusing to replace it: "
                                   "move it or write outputs elsewhere")


def check_outside(folder: Path, flag: str, image_root: Path) -> None:
    """An output folder inside a listed image folder would have its files listed as images on the next run."""
    if Path(folder).resolve().is_relative_to(Path(image_root).resolve()):
        raise SegEnsembleError(f"{flag} {folder} lies inside the image folder {image_root}: its files would be listed as "
                               "images on the next run; write them to a folder outside it")
