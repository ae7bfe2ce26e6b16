"""Soft voting: a weighted running sum of probabilities, divided by the weight actually received.

Probabilities arrive at the resolution their view ran at; bilinear resizing is linear, so views that share
a resolution are summed there and resized to the image's H x W once.
"""

from __future__ import annotations

import numpy as np

from segensemble.ensemble.views import resize_hwc


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax over the class axis, float32."""
    x = logits - logits.max(axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=axis, keepdims=True)
    return x


class Vote:
    """Accumulates weighted (C, h, w) probabilities of one image at any resolutions."""

    def __init__(self, image_hw: tuple[int, int]):
        self.image_hw = image_hw
        self._sums: dict[tuple[int, int], np.ndarray] = {}
        self.weight = 0.0

    def add(self, probs: np.ndarray, weight: float) -> None:
        """Add one view's (C, h, w) probabilities with ``weight``."""
        key = probs.shape[1:]
        acc = self._sums.get(key)
        if acc is None:
            self._sums[key] = probs * np.float32(weight)
        else:
            acc += probs * np.float32(weight)
        self.weight += weight

    def result(self) -> np.ndarray:
        """The weighted mean as (C, H, W) float32 at the image's size."""
        if self.weight <= 0:
            raise ValueError("no view was added to this vote")
        total = None
        for acc in self._sums.values():
            full = resize_hwc(np.ascontiguousarray(acc.transpose(1, 2, 0)), self.image_hw)
            if full.ndim == 2:  # cv2 drops a single channel axis
                full = full[..., None]
            total = full if total is None else total + full
        total /= np.float32(self.weight)
        return np.ascontiguousarray(total.transpose(2, 0, 1))
