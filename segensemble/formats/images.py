"""Image input: listing, decoding and mode conversion to RGB uint8, one function for offline jobs and the server.

The rules (README, "Limits and safety"):

- **Formats**: PNG, JPEG, BMP, TIFF and WebP, by their content, whatever the file is called; Pillow's other
  formats (GIF, EPS, ICO, ...) are refused, offline and served alike. TIFF goes through tifffile when the
  ``tiff`` extra is installed (BigTIFF, any codec, a pyramid level: ``formats/tiff.py``), else Pillow (classic
  TIFF, first page).
- **Orientation**: an EXIF orientation tag (2-8) is applied, as ``cv2.imread`` (what training code reads
  with) applies it: predictions are in the orientation a viewer shows.
- **16-bit** samples become 8-bit as ``cv2.imread`` makes them: the high byte, ``v >> 8``, whatever the image
  holds (two images one grey level apart stay one level apart); Pillow reads 16-bit RGB by the same rule.
- **Cost before pixels**: only regular files are opened (FIFOs and devices are refused by name), the file's
  size is bounded, and the header's structure (PNG chunks, JPEG markers before the scan) is counted and bounded
  before Pillow parses it; the pixel limit and ``admit`` (the ensemble's cost budget) see the oriented size
  from the header before any pixel is decoded.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from segensemble.errors import ImageError
from segensemble.files import open_regular
from segensemble.formats.tiff import is_tiff, read_tiff

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")  # Pillow's names; every other format is refused by content
MAX_FILE_BYTES = 1 << 30  # one image file, offline (the server bounds its body separately)
MAX_TIFF_BYTES = 1 << 36  # a TIFF (whole-slide pyramids are large files; only the level read is decoded)
DEFAULT_MAX_PIXELS = 2 * 89_478_485  # without --max-pixels: where Pillow's decompression-bomb check refuses, for every format
MAX_HEADER_SEGMENTS = 1024  # PNG chunks other than IDAT, JPEG marker segments before the first scan
IDAT_BYTES_PER_CHUNK = 1024  # PNG image-data chunks: at most one per this many bytes of file (encoders write 8-64 KiB)
_SWAPS_HW = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees


@dataclass(frozen=True)
class ImageRef:
    """One input image: ``image_id`` is its path relative to the image root (COCO ``file_name``)."""

    image_id: str
    path: Path
    coco_id: int | None = None


def find_images(root: str | Path) -> tuple[list[ImageRef], list[Path]]:
    """Images under ``root`` (recursively, sorted by relative path), and the other files found there."""
    root = Path(root)
    if not root.is_dir():
        raise ImageError(str(root), "not a directory of images")
    refs, others = [], []
    for p in sorted(root.rglob("*")):
        if p.is_dir():
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:  # FIFOs and devices with an image's name too: the reader refuses them by name
            refs.append(ImageRef(_check_utf8(p.relative_to(root).as_posix()), p))
        else:
            others.append(p)
    if not refs:
        raise ImageError(str(root), f"no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    return refs, others


def list_images(root: str | Path) -> list[ImageRef]:
    """All images under ``root`` (recursively), in sorted relative-path order."""
    return find_images(root)[0]


def _check_utf8(name: str) -> str:
    """A name that is not UTF-8 (kept by Python as surrogates) cannot go into a CSV or JSON output."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        raise ImageError(ascii(name), "the file name is not valid UTF-8; rename it (outputs name images in UTF-8)") from None


Admit = Callable[[tuple[int, int]], None]  # sees (H, W) from the header, raises ImageError to refuse


@dataclass(frozen=True)
class ReadOptions:
    """How input files are read: the pixel limit (None: Pillow's own decompression-bomb limit) and a TIFF's
    pyramid level (0: full resolution)."""

    max_pixels: int | None = None
    tiff_level: int = 0

    def read(self, path: str | Path, admit: Admit | None = None) -> np.ndarray:
        return read_image(path, self.max_pixels, admit, self.tiff_level)

    def size(self, path: str | Path) -> tuple[int, int]:
        """(H, W) that ``read`` will return, from the header alone (orientation and TIFF level applied)."""
        found: list[tuple[int, int]] = []

        def stop(hw: tuple[int, int]) -> None:
            found.append(hw)
            raise _SizeFound(str(path), "size found")

        try:
            self.read(path, stop)
        except _SizeFound:
            return found[0]
        raise ImageError(str(path), "no size in the header")  # not reached: every reader admits before decoding


class _SizeFound(ImageError):
    """Raised through a reader once the header gave the size (no pixel is decoded; readers pass ImageError on)."""


def read_image(path: str | Path, max_pixels: int | None = None, admit: Admit | None = None, tiff_level: int = 0) -> np.ndarray:
    """Read a regular file as RGB uint8 (H, W, 3); the header is checked before the body is read. ``tiff_level``:
    the pyramid level of a TIFF (0: full resolution)."""
    with open_regular(path, MAX_TIFF_BYTES, lambda reason: ImageError(str(path), reason)) as fh:
        size = fh.seek(0, io.SEEK_END)
        fh.seek(0)
        if size > MAX_FILE_BYTES and not is_tiff(fh.read(4)):
            raise ImageError(str(path), f"{size} bytes exceeds the limit of {MAX_FILE_BYTES} for one image file (TIFF excepted)")
        fh.seek(0)
        return _decode(fh, str(path), max_pixels, admit, tiff_level)


def header_size(data: bytes, source: str) -> tuple[int, int]:
    """(H, W) as the image will be decoded (EXIF orientation applied), from the header alone."""
    return _open_checked(io.BytesIO(data), source, _oriented_hw)


def decode_image(data: bytes, source: str, max_pixels: int | None = None, admit: Admit | None = None) -> np.ndarray:
    """Decode encoded bytes as RGB uint8 (H, W, 3): the server's path, the same rules as ``read_image``."""
    return _decode(io.BytesIO(data), source, max_pixels, admit)


def _decode(fh: BinaryIO, source: str, max_pixels: int | None, admit: Admit | None, tiff_level: int = 0) -> np.ndarray:
    if is_tiff(fh.read(4)):
        fh.seek(0)
        if tiff_level or _has_tifffile():
            return read_tiff(fh, source, tiff_level, max_pixels or DEFAULT_MAX_PIXELS, admit)
    fh.seek(0)

    if max_pixels is not None and max_pixels > DEFAULT_MAX_PIXELS:
        max_pixels = DEFAULT_MAX_PIXELS  # Pillow refuses more; its error below names the limit

    def load(img):
        height, width = _oriented_hw(img)
        if max_pixels is not None and width * height > max_pixels:
            raise ImageError(source, f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}")
        if admit is not None:
            admit((height, width))
        img.load()
        return _to_rgb(_apply_orientation(img), source)

    return _open_checked(fh, source, load)


def _has_tifffile() -> bool:
    from importlib.util import find_spec

    return find_spec("tifffile") is not None


def _open_checked(fh: BinaryIO, source: str, use):
    """Check the header's structure, open ``fh`` with Pillow (allowed formats only) and hand the image to ``use``."""
    from PIL import Image, UnidentifiedImageError

    _check_structure(fh, source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the pixel limit is ours (max_pixels)
            img = Image.open(fh, formats=FORMATS)
        with img:
            return use(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(source, f"too many pixels ({exc}); only TIFF (the tiff extra) reads larger images") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(source, f"not a decodable image in an accepted format ({', '.join(FORMATS)})") from exc
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise ImageError(source, f"corrupt or truncated image ({exc})") from exc


def _check_structure(fh: BinaryIO, source: str) -> None:
    """Refuse a PNG or JPEG whose header is built to make parsing slow (millions of empty chunks or markers)."""
    head = fh.read(8)
    fh.seek(0)
    if not head:
        raise ImageError(source, "empty file")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        _count_png_chunks(fh, source)
    elif head.startswith(b"\xff\xd8"):
        _count_jpeg_segments(fh, source)
    fh.seek(0)


def _count_png_chunks(fh: BinaryIO, source: str) -> None:
    size = fh.seek(0, io.SEEK_END)
    idat_limit = MAX_HEADER_SEGMENTS + size // IDAT_BYTES_PER_CHUNK
    other = idat = 0
    pos = 8
    while pos + 8 <= size:
        fh.seek(pos)
        length, kind = struct.unpack(">I4s", fh.read(8))
        if kind == b"IDAT":
            idat += 1
        else:
            other += 1
        if other > MAX_HEADER_SEGMENTS or idat > idat_limit:
            what = f"more than {MAX_HEADER_SEGMENTS} non-image chunks" if other > MAX_HEADER_SEGMENTS else \
                f"more than {idat_limit} image-data chunks for {size} bytes"
            raise ImageError(source, f"PNG with {what}; refused (a file built to be slow to parse)")
        if kind == b"IEND":
            return
        pos += 12 + length


def _count_jpeg_segments(fh: BinaryIO, source: str) -> None:
    size = fh.seek(0, io.SEEK_END)
    segments, pos = 0, 2
    while pos + 4 <= size:
        fh.seek(pos)
        marker, kind = fh.read(2)
        if marker != 0xFF:
            return  # not a marker: Pillow reports the corruption
        if kind == 0xFF:  # fill byte
            pos += 1
            continue
        if kind == 0xDA or kind == 0xD9:  # start of scan (the entropy-coded data is libjpeg's, in C), end of image
            return
        segments += 1
        if segments > MAX_HEADER_SEGMENTS:
            raise ImageError(source, f"JPEG with more than {MAX_HEADER_SEGMENTS} marker segments before its image data; "
                                     "refused (a file built to be slow to parse)")
        if 0xD0 <= kind <= 0xD7 or kind == 0x01:
            pos += 2
            continue
        (length,) = struct.unpack(">H", fh.read(2))
        pos += 2 + length


def _orientation(img) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block is ignored, as cv2 ignores it
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _oriented_hw(img) -> tuple[int, int]:
    width, height = img.size
    return (width, height) if _orientation(img) in _SWAPS_HW else (height, width)


def _apply_orientation(img):
    from PIL import ImageOps

    return ImageOps.exif_transpose(img) if _orientation(img) != 1 else img


def _to_rgb(img, source: str) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.int64)
        gray = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)  # cv2.imread's 16 -> 8 bit rule
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "F":
        raise ImageError(source, "floating-point images are not supported; save as 8- or 16-bit")
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, LA, P, RGBA (alpha dropped), CMYK, YCbCr
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
