"""Views: the scale and TTA axes as pure array functions.

Every TTA transform has an ``augment`` on the image batch (N, C, H, W) and a ``deaugment`` on the logits
it produced, such that deaugment(augment(x)) == x (identity included). Scale is undone exactly to the
original H x W by resizing, never by multiplying with 1/scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

Array = np.ndarray


def hflip(x: Array) -> Array:
    """Mirror left-right (last axis)."""
    return x[..., ::-1]


def vflip(x: Array) -> Array:
    """Mirror top-bottom (second-to-last axis)."""
    return x[..., ::-1, :]


def rot90(x: Array) -> Array:
    """Rotate 90 degrees counter-clockwise in the (H, W) plane, as torch.rot90(x, 1, (-2, -1))."""
    return np.rot90(x, 1, axes=(-2, -1))


def rot270(x: Array) -> Array:
    """Rotate 270 degrees counter-clockwise (90 clockwise)."""
    return np.rot90(x, -1, axes=(-2, -1))


def transpose(x: Array) -> Array:
    """Swap H and W."""
    return np.swapaxes(x, -2, -1)


def identity(x: Array) -> Array:
    return x


@dataclass(frozen=True)
class Tta:
    name: str
    augment: Callable[[Array], Array]
    deaugment: Callable[[Array], Array]
    swaps_hw: bool


TTA: dict[str, Tta] = {
    "identity": Tta("identity", identity, identity, False),
    "hflip": Tta("hflip", hflip, hflip, False),
    "vflip": Tta("vflip", vflip, vflip, False),
    "rot90": Tta("rot90", rot90, rot270, True),
    "rot270": Tta("rot270", rot270, rot90, True),
    "transpose": Tta("transpose", transpose, transpose, True),
}


def scaled_size(base_hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """Base size times scale, rounded half up, at least 1 pixel."""
    return (max(1, int(np.floor(base_hw[0] * scale + 0.5))), max(1, int(np.floor(base_hw[1] * scale + 0.5))))


def resize_hwc(x: Array, size_hw: tuple[int, int]) -> Array:
    """Bilinear resize (half-pixel centres, as cv2 INTER_LINEAR) of an (H, W[, C]) float32 array."""
    if x.shape[:2] == tuple(size_hw):
        return x
    return cv2.resize(x, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_LINEAR)


def padded_size(size_hw: tuple[int, int], stride: int) -> tuple[int, int]:
    return (-(-size_hw[0] // stride) * stride, -(-size_hw[1] // stride) * stride)


def model_sizes(input_size: tuple[int, int] | None, tile_size: tuple[int, int] | None, scales, tta, stride: int) -> list[tuple[int, int]] | None:
    """Every input size (h, w) a member's model sees over its views (padded to the stride; H and W swapped for
    rot90-like TTA), largest first; None when they follow the image's own size (no input_size, no tiles)."""
    if tile_size is None and input_size is None:
        return None
    bases = [tuple(tile_size)] if tile_size else [padded_size(scaled_size(tuple(input_size), s), stride) for s in scales]
    swaps = any(TTA[t].swaps_hw for t in tta)
    sizes = {hw for h, w in bases for hw in (((h, w), (w, h)) if swaps else ((h, w),))}
    return sorted(sizes, key=lambda hw: (-hw[0] * hw[1], hw))


def prepare_input(image: Array, size_hw: tuple[int, int], mean: Array, std: Array, stride: int) -> Array:
    """RGB uint8 (H, W, 3) -> normalized, zero-padded (bottom/right) float32 (3, H', W') at ``size_hw``."""
    x = resize_hwc(image.astype(np.float32), size_hw)
    x = (x / 255.0 - mean) / std
    ph, pw = padded_size(size_hw, stride)
    out = np.zeros((x.shape[2], ph, pw), dtype=np.float32)
    out[:, : size_hw[0], : size_hw[1]] = x.transpose(2, 0, 1)
    return out


def bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize of (H, W, C), edges clamped, no antialias (cv2 INTER_LINEAR)."""
    h, w = x.shape[:2]

    def axis(n_out, n_in):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = np.where(lo >= n_in - 1, 0.0, src - lo)
        return lo, hi, frac

    y0, y1, fy = axis(out_h, h)
    x0, x1, fx = axis(out_w, w)
    x = x.astype(np.float64)
    top = x[y0][:, x0] * (1 - fx)[None, :, None] + x[y0][:, x1] * fx[None, :, None]
    bottom = x[y1][:, x0] * (1 - fx)[None, :, None] + x[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]
