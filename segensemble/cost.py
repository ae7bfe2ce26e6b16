"""What one image costs the ensemble, estimated from its size and the plan before any pixel is decoded.

Work is counted in **megapixel-views**: for every view, the pixels the model really sees (the view's size
padded to the stride, so a 1 x 60000 image costs 32 x 60000 per view). Memory is the largest batched call
(TTA views of a model at a scale run together; a tiled member's tiles of every scale) times
``ACTIVATION_BYTES_PER_PIXEL`` plus the full-size outputs. Both are refused past a ``Budget``, in the server (4xx before decoding), in predict and
pseudo-label (the image is named; ``--skip-bad`` skips it) and in the plan (members with an input_size).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from segensemble.tiles import tile_count
from segensemble.views import TTA, padded_size, scaled_size

# Peak activation memory per padded input pixel per image in a call, measured with ONNX Runtime on CPU at
# 512^2-1024^2 for Unet/resnet18, FPN/resnet34 and DeepLabV3Plus/mobilenet_v2 (480-600 B); doubled for
# heavier encoders. An estimate for refusing absurd requests, not an allocator.
ACTIVATION_BYTES_PER_PIXEL = 1024
DEFAULT_MAX_MEGAPIXEL_VIEWS = 32.0  # e.g. 30 views of a 1024 x 1024 image; ~25 s on 2 CPU cores for resnet-sized members
DEFAULT_MAX_MEMORY_MB = 4096.0


class ViewSpec(Protocol):
    """What the estimate needs of a member (plan MemberSpec or manifest MemberEntry)."""

    input_size: tuple[int, int] | None
    scales: list[float]
    tta: list[str]
    stride: int

    @property
    def model_count(self) -> int: ...


@dataclass(frozen=True)
class Budget:
    max_megapixel_views: float = DEFAULT_MAX_MEGAPIXEL_VIEWS
    max_memory_mb: float = DEFAULT_MAX_MEMORY_MB


@dataclass(frozen=True)
class Cost:
    megapixel_views: float
    memory_mb: float

    def over(self, budget: Budget) -> str | None:
        """Why this cost exceeds ``budget`` (None: within it)."""
        if self.megapixel_views > budget.max_megapixel_views:
            return (f"would cost {self.megapixel_views:.1f} megapixel-views (the views' padded pixels) but the limit is "
                    f"{budget.max_megapixel_views:g}; raise --max-cost, or send a smaller image")
        if self.memory_mb > budget.max_memory_mb:
            return (f"would need about {self.memory_mb:.0f} MB of activations but the limit is {budget.max_memory_mb:g} MB; "
                    "raise --max-memory-mb, or send a smaller image")
        return None


def image_cost(members: Sequence[ViewSpec], image_hw: tuple[int, int], classes: int, batch: int = 1) -> Cost:
    """The cost of ``batch`` images of ``image_hw`` through every view of ``members``."""
    pixel_views, largest_call = 0, 0
    for m in members:
        groups = [sum(TTA[t].swaps_hw == swap for t in m.tta) for swap in (False, True)]
        tiles = getattr(m, "tiles", None)
        tiled = 0  # a tiled member's scales run their tiles in one call (export/graph_tiles.sliding_sum)
        for s in m.scales:
            if tiles:  # every tile of the scaled image is a view's worth of pixels
                h, w = tiles.size
                h *= tile_count(scaled_size(image_hw, s), tiles)
                tiled += h * w
            else:
                h, w = padded_size(scaled_size(tuple(m.input_size or image_hw), s), m.stride)
            pixel_views += h * w * len(m.tta) * m.model_count
            largest_call = max(largest_call, (tiled or h * w) * max(groups))
    outputs = classes * image_hw[0] * image_hw[1] * 4 * (len(members) + 3)  # member outputs, sums, probs
    memory = batch * (largest_call * ACTIVATION_BYTES_PER_PIXEL + outputs)
    return Cost(batch * pixel_views / 1e6, memory / 2**20)
