"""Label maps as PNG (uint8, or 16-bit for more than 256 classes) and probabilities as compressed npz.

Each file carries a mark (a PNG ``Software`` text chunk, an npz entry ``written_by``) so that a rerun replaces
its own earlier outputs and never a file it did not write (``is_ours``)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from segensemble.formats.atomic import write_bytes_atomic
from segensemble.formats.paths import output_path

MARK = "segensemble"


def encode_png(labels: np.ndarray) -> bytes:
    from PIL import Image, PngImagePlugin

    arr = labels.astype(np.uint8) if labels.max(initial=0) < 256 else labels.astype(np.uint16)
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", MARK)
    Image.fromarray(arr).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def is_ours(path: Path) -> bool:
    """Whether ``path`` is a mask or probability file segensemble wrote (its mark is read, not the pixels)."""
    import zipfile

    from PIL import Image

    if not path.is_file():  # a FIFO, device or folder is never opened
        return False
    try:
        if path.suffix == ".npz":
            with zipfile.ZipFile(path) as archive:
                return "written_by.npy" in archive.namelist()
        with Image.open(path, formats=["PNG"]) as img:
            return img.info.get("Software") == MARK
    except Exception:  # unreadable or another format: not ours
        return False


def mask_path(root: Path, image_id: str, source: Path | None = None) -> Path:
    return output_path(root, image_id, ".png", source)


def probs_path(root: Path, image_id: str, source: Path | None = None) -> Path:
    return output_path(root, image_id, ".npz", source)


def save_mask(root: Path, image_id: str, labels: np.ndarray, source: Path | None = None) -> Path:
    target = mask_path(root, image_id, source)
    write_bytes_atomic(target, encode_png(labels))
    return target


def encode_probs(probs: np.ndarray) -> bytes:
    """float16 (C, H, W) in a compressed npz under the key ``probs``."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, probs=probs.astype(np.float16), written_by=np.array(MARK))
    return buffer.getvalue()


def save_probs(root: Path, image_id: str, probs: np.ndarray, source: Path | None = None) -> Path:
    target = probs_path(root, image_id, source)
    write_bytes_atomic(target, encode_probs(probs))
    return target
