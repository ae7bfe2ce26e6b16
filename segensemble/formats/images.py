"""Image input: listing, decoding and mode conversion to RGB uint8, with errors that name the image.

Decoding goes through Pillow so the pixel count is known from the header before any pixel is decoded
(decompression bombs are refused cheaply).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segensemble.errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageRef:
    """One input image: ``image_id`` is its path relative to the image root (COCO ``file_name``)."""

    image_id: str
    path: Path
    coco_id: int | None = None


def list_images(root: str | Path) -> list[ImageRef]:
    """All images under ``root`` (recursively), in sorted relative-path order."""
    root = Path(root)
    if not root.is_dir():
        raise ImageError(str(root), "not a directory of images")
    refs = [
        ImageRef(p.relative_to(root).as_posix(), p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not refs:
        raise ImageError(str(root), f"no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return refs


Admit = Callable[[tuple[int, int]], None]  # sees (H, W) from the header, raises ImageError to refuse


def read_image(path: str | Path, max_pixels: int | None = None, admit: Admit | None = None) -> np.ndarray:
    """Read a file as RGB uint8 (H, W, 3)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(str(path), f"cannot read ({exc.strerror or exc})") from exc
    return decode_image(data, str(path), max_pixels, admit)


def header_size(data: bytes, source: str) -> tuple[int, int]:
    """(H, W) from the image header alone, no pixel decoded."""
    return _open_checked(data, source, lambda img: (img.size[1], img.size[0]))


def decode_image(data: bytes, source: str, max_pixels: int | None = None, admit: Admit | None = None) -> np.ndarray:
    """Decode encoded bytes as RGB uint8 (H, W, 3); 16-bit, grayscale, palette, RGBA and CMYK are converted.

    The pixel limit and ``admit`` (e.g. the ensemble's cost budget) are checked from the header, before
    any pixel is decoded."""

    def load(img):
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageError(source, f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}")
        if admit is not None:
            admit((height, width))
        img.load()
        return _to_rgb(img, source)

    return _open_checked(data, source, load)


def _open_checked(data: bytes, source: str, use):
    """Open ``data`` with Pillow and hand the image to ``use``; Pillow's failures become ImageError."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError(source, "empty file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            return use(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(source, f"too many pixels ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(source, "not a decodable image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(source, f"corrupt or truncated image ({exc})") from exc


def _to_rgb(img, source: str) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        gray = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "F":
        raise ImageError(source, "floating-point images are not supported; save as 8- or 16-bit")
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, LA, P, RGBA (alpha dropped), CMYK, YCbCr
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
