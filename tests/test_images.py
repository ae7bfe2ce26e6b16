"""Decoding rules shared by offline jobs and the server: orientation, 16-bit, formats, hostile files."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from segensemble.errors import ImageError
from segensemble.formats.images import MAX_HEADER_SEGMENTS, decode_image, find_images, header_size, read_image


def _photo(h=24, w=40) -> np.ndarray:
    """An asymmetric RGB picture: every flip and rotation of it differs."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x * y) % 256], axis=2).astype(np.uint8)


def _stored(image: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores so that applying ``orientation`` shows ``image`` (EXIF's inverse transforms)."""
    inverse = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud,
               5: lambda a: np.transpose(a, (1, 0, 2)), 6: lambda a: np.rot90(a, 1), 7: lambda a: np.transpose(a[::-1, ::-1], (1, 0, 2)),
               8: lambda a: np.rot90(a, -1)}
    return np.ascontiguousarray(inverse[orientation](image))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_cv2_imread_does(tmp_path, orientation):
    shown = _photo()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"
    Image.fromarray(_stored(shown, orientation)).save(path, exif=exif)  # PNG: lossless, so the pixels compare exactly
    want = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
    got = read_image(path)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, shown)
    assert header_size(path.read_bytes(), "x") == shown.shape[:2]  # the cost budget sees the oriented size
    np.testing.assert_array_equal(decode_image(path.read_bytes(), "x"), got)  # served = offline


def test_exif_orientation_jpeg_matches_cv2(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "o6.jpg"
    Image.fromarray(_stored(_photo(64, 96), 6)).save(path, exif=exif, quality=95)
    want = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
    got = read_image(path)
    assert got.shape == want.shape == (64, 96, 3)
    assert np.abs(got.astype(int) - want).mean() < 2.0  # two JPEG decoders, same orientation


def test_16_bit_grey_uses_one_fixed_rule_like_cv2(tmp_path):
    """Two images one grey level apart decode one level apart (the rule does not depend on their content)."""
    for name, top in (("dark.png", 255), ("bright.png", 256)):
        arr = np.linspace(0, top, 32 * 32).reshape(32, 32).astype(np.uint16)
        Image.fromarray(arr).save(tmp_path / name)
        want = cv2.imread(str(tmp_path / name), cv2.IMREAD_COLOR)[..., ::-1]
        np.testing.assert_array_equal(read_image(tmp_path / name), want)
    assert abs(read_image(tmp_path / "dark.png").mean() - read_image(tmp_path / "bright.png").mean()) < 1.0
    rgb = (np.random.default_rng(0).integers(0, 65536, (16, 16, 3))).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "rgb16.png"), cv2.imread(str(tmp_path / "rgb16.png"), cv2.IMREAD_COLOR)[..., ::-1])


@pytest.mark.parametrize("fmt", ["GIF", "EPS", "ICO", "PPM"])
def test_formats_outside_the_allow_list_are_refused_by_content(tmp_path, fmt):
    buffer = io.BytesIO()
    try:
        Image.fromarray(_photo()).save(buffer, format=fmt)
    except (OSError, KeyError):
        pytest.skip(f"Pillow cannot write {fmt} here")
    path = tmp_path / "disguised.png"  # the name says PNG; the content decides
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ImageError, match="accepted format"):
        read_image(path)
    with pytest.raises(ImageError, match="accepted format"):
        decode_image(buffer.getvalue(), "request body")


def _chunk(kind: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def chunk_bomb_png(empty_chunks: int) -> bytes:
    """A valid 1x1 PNG preceded by many empty ancillary chunks (slow for Pillow to walk in Python)."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    idat = _chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00"))
    return b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"tEXt") * empty_chunks + idat + _chunk(b"IEND")


def comment_bomb_jpeg(markers: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_photo()).save(buffer, format="JPEG")
    data = buffer.getvalue()
    return data[:2] + b"\xff\xfe\x00\x02" * markers + data[2:]


def test_header_bombs_are_refused_fast():
    assert decode_image(chunk_bomb_png(10), "ok").shape == (1, 1, 3)  # a few ancillary chunks are fine
    assert decode_image(comment_bomb_jpeg(10), "ok").shape == (24, 40, 3)
    for data, word in ((chunk_bomb_png(1_600_000), "PNG"), (comment_bomb_jpeg(1_250_000), "JPEG")):
        start = time.perf_counter()
        with pytest.raises(ImageError, match=f"{word} with more than {MAX_HEADER_SEGMENTS}"):
            header_size(data, "request body")
        assert time.perf_counter() - start < 1.0, "the budget must stop the walk early"


def test_offline_reader_refuses_fifos_devices_and_huge_files_before_reading(tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="FIFO"):
        read_image(fifo)  # returns at once: opened non-blocking
    zero = tmp_path / "zero.png"
    zero.symlink_to("/dev/zero")
    with pytest.raises(ImageError, match="character device"):
        read_image(zero)
    sparse = tmp_path / "sparse.png"
    with open(sparse, "wb") as fh:
        fh.truncate(6 << 30)  # 6 GB, no blocks on disk
    with pytest.raises(ImageError, match="exceeds the limit"):
        read_image(sparse)


def test_listing_names_the_files_it_leaves_out(tmp_path):
    Image.fromarray(_photo()).save(tmp_path / "a.png")
    Image.fromarray(_photo()).save(tmp_path / "b.gif")
    refs, others = find_images(tmp_path)
    assert [r.image_id for r in refs] == ["a.png"] and [p.name for p in others] == ["b.gif"]
