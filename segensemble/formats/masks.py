"""Label maps as PNG (uint8, or 16-bit for more than 256 classes) and probabilities as compressed npz."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from segensemble.formats.atomic import write_bytes_atomic
from segensemble.formats.paths import output_path


def encode_png(labels: np.ndarray) -> bytes:
    from PIL import Image

    arr = labels.astype(np.uint8) if labels.max(initial=0) < 256 else labels.astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    return buffer.getvalue()


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
    np.savez_compressed(buffer, probs=probs.astype(np.float16))
    return buffer.getvalue()


def save_probs(root: Path, image_id: str, probs: np.ndarray, source: Path | None = None) -> Path:
    target = probs_path(root, image_id, source)
    write_bytes_atomic(target, encode_probs(probs))
    return target
