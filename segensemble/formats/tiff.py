"""TIFF input through tifffile (the ``tiff`` extra): classic TIFF and BigTIFF, tiled or striped, any codec
imagecodecs decodes, and one chosen level of a pyramid (``--tiff-level``: 0 is full resolution; OME and SVS
pyramids, SubIFDs and reduced pages, as tifffile's ``series[0].levels`` lists them). The level's size is read
from its tags and checked against the pixel limit and the ensemble's budget before any strip is decoded.
Samples follow ``images.py``'s rules: 16-bit keeps the high byte, grey becomes RGB, alpha is dropped,
palettes are applied, the orientation tag is applied as cv2 applies it.
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np

from segensemble.errors import ImageError

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


def is_tiff(head: bytes) -> bool:
    return head[:4] in TIFF_MAGIC


def read_tiff(fh: BinaryIO, source: str, level: int, max_pixels: int | None, admit) -> np.ndarray:
    """The image at pyramid ``level`` as RGB uint8 (H, W, 3)."""
    try:
        import tifffile
    except ImportError as exc:
        from segensemble.extras import missing_extra

        raise missing_extra(exc, f"{source}: reading TIFF") or exc from None
    try:
        with tifffile.TiffFile(fh, name=source.rsplit("/", 1)[-1]) as tif:
            if not tif.series:
                raise ImageError(source, "a TIFF without images")
            levels = tif.series[0].levels
            if not 0 <= level < len(levels):
                raise ImageError(source, f"--tiff-level {level}: this TIFF has {len(levels)} level(s), 0..{len(levels) - 1} "
                                         "(0 is full resolution)")
            series = levels[level]
            height, width = _yx(series.axes, series.shape, source)
            orientation = _orientation(series.keyframe)
            hw = (width, height) if orientation in (5, 6, 7, 8) else (height, width)
            if max_pixels is not None and hw[0] * hw[1] > max_pixels:
                raise ImageError(source, f"{hw[1]}x{hw[0]} = {hw[0] * hw[1]} pixels (level {level}) exceeds the limit of {max_pixels}")
            if admit is not None:
                admit(hw)
            keyframe = series.keyframe
            photometric = int(keyframe.photometric)
            colormap = keyframe.colormap if photometric == 3 else None
            array = series.asarray()
    except ImageError:
        raise
    except Exception as exc:  # tifffile and imagecodecs raise many types for corrupt input
        raise ImageError(source, f"corrupt or unsupported TIFF ({type(exc).__name__}: {exc})") from exc
    rgb = _to_rgb(_samples_last(array, series.axes), photometric, colormap, source)
    return _orient(rgb, orientation)


def _yx(axes: str, shape: tuple[int, ...], source: str) -> tuple[int, int]:
    if "Y" not in axes or "X" not in axes:
        raise ImageError(source, f"a TIFF series with axes {axes!r} has no Y and X (not an image)")
    return shape[axes.index("Y")], shape[axes.index("X")]


def _samples_last(array: np.ndarray, axes: str) -> np.ndarray:
    """(H, W, samples): the first index of any other axis (pages, planes, time), samples or channels last."""
    keep = [a for a in axes if a in "YXSC"]
    index = tuple(slice(None) if a in keep else 0 for a in axes)
    array, axes = array[index], "".join(keep)
    order = [axes.index("Y"), axes.index("X"), *(axes.index(a) for a in axes if a in "SC")]
    array = np.transpose(array, order)
    return array.reshape(*array.shape[:2], -1)


def _to_rgb(x: np.ndarray, photometric: int, colormap, source: str) -> np.ndarray:
    if colormap is not None:  # palette: 16-bit colour table, indexed by the samples
        table = (np.asarray(colormap, np.int64) >> 8).astype(np.uint8).T  # (entries, 3)
        return np.ascontiguousarray(table[np.clip(x[..., 0].astype(np.int64), 0, len(table) - 1)])
    if photometric == 5:
        raise ImageError(source, "a CMYK (separated) TIFF; save it as RGB")
    if x.dtype == bool:
        x = x.astype(np.uint8) * 255
    elif x.dtype == np.uint16:
        x = (x >> 8).astype(np.uint8)  # cv2.imread's 16 -> 8 bit rule
    elif x.dtype != np.uint8:
        raise ImageError(source, f"{x.dtype} TIFF samples are not supported; save as 8- or 16-bit unsigned")
    if photometric == 0:  # min-is-white
        x = 255 - x
    if x.shape[2] in (1, 2):  # grey, grey + alpha
        x = np.repeat(x[..., :1], 3, axis=2)
    return np.ascontiguousarray(x[..., :3])


def _orientation(page) -> int:
    tag = page.tags.get(274)
    value = tag.value if tag is not None else 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def _orient(x: np.ndarray, orientation: int) -> np.ndarray:
    """Apply a TIFF orientation as ``images.py`` applies EXIF's (Pillow's transposes, so both paths agree)."""
    if orientation == 1:
        return x
    from PIL import Image

    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
    return np.ascontiguousarray(np.asarray(Image.fromarray(x).transpose(method[orientation])))
