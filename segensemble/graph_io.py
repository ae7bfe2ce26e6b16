"""The ensemble graph's contract, in one home that its writer (``export/graph.py``) and every reader (the
engine, both session kinds, the build's verifier, the Ray engine, analyze) import: file names, the input's
and outputs' names, the view order, the format version. docs/graph.md describes the same for other runtimes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from segensemble.names import safe_name

GRAPH_FILE = "ensemble.onnx"
GRAPH_FORMAT = "2"  # 2: tile_batch. Bump when the graph's contract (inputs, outputs, semantics) changes
INPUT = "image"  # uint8 (N, H, W, 3) RGB
REGION = "region"  # int64 [4] (row start, row stop, column start, column stop), only where every member is tiled;
# optional (default: the whole image): the outputs are that part of the image's, equal to the same crop of the whole's
TILE_BATCH = "tile_batch"  # int64 [1], only with REGION: the most tiles one model call takes (a region's tiles run in
# equal chunks of at most this many, one after another); optional (default: all of them at once). Memory, not values.
LABELS = "labels"  # (N, H, W) uint8 class ids (int32 past 256 classes)
PROBS = "probs"  # (N, C, H, W) float32, the weighted vote
MASKS = "masks"  # multilabel: (N, C, H, W) uint8 0/1, P > threshold per class
MASK = "mask"  # binary: (N, H, W) uint8 0/1


def region_feed(region: tuple[int, int, int, int] | None, tile_batch: int | None = None) -> dict:
    """The optional inputs of a regional graph for one call (none: the whole image, every tile at once)."""
    import numpy as np

    feed = {} if region is None else {REGION: np.asarray(region, np.int64)}
    return feed if tile_batch is None else {**feed, TILE_BATCH: np.asarray([tile_batch], np.int64)}


def decision_output(task: str) -> str:
    """The graph output that holds a task's answer: labels, masks or mask."""
    return {"multiclass": LABELS, "multilabel": MASKS, "binary": MASK}[task]


def member_output(name: str) -> str:
    """A member's probabilities (N, C, H, W): the mean over its views."""
    return f"member:{name}"


def view_output(index: int) -> str:
    """One view's probabilities at H x W, in ``list_views`` order (the views graph analyze builds)."""
    return f"view:{index}"


def profile_file(profile: str | None) -> str:
    """The graph file of a profile (None: the whole ensemble)."""
    if profile is None:
        return GRAPH_FILE
    return f"ensemble.{safe_name(profile)}.onnx"


class _Member(Protocol):
    scales: list[float]
    tta: list[str]

    @property
    def model_count(self) -> int: ...


@dataclass(frozen=True)
class ViewId:
    """One view of the ensemble: member index, model index within it, scale, TTA name."""

    member: int
    model: int
    scale: float
    tta: str


def list_views(members: Sequence[_Member]) -> list[ViewId]:
    """Every view, in the graph's order: member, model, scale, then TTA view."""
    return [ViewId(mi, k, s, t) for mi, m in enumerate(members) for k in range(m.model_count) for s in m.scales for t in m.tta]
