"""Stochastic Weight Averaging: uniform mean of several checkpoints, then optional BatchNorm recalibration.

The mean is what ``torch.optim.swa_utils.AveragedModel`` computes for equal-weight snapshots. BatchNorm
running statistics of an averaged network are not the statistics of its activations; ``recalibrate_bn``
recomputes them over real images exactly as ``torch.optim.swa_utils.update_bn`` does (cumulative average).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segensemble.errors import CheckpointError
from segensemble.models.checkpoints import LoadedModel, PartialSpec, load_checkpoint


@dataclass
class SwaReport:
    sources: list[Path]
    bn_recomputed: bool
    bn_images: int

    def describe(self) -> str:
        if self.bn_recomputed:
            return f"SWA of {len(self.sources)} checkpoints; BatchNorm statistics recomputed over {self.bn_images} images"
        return (
            f"SWA of {len(self.sources)} checkpoints; BatchNorm statistics are AVERAGED, not recomputed "
            "(give bn_images / --bn-images to recalibrate them)"
        )


def average_checkpoints(paths: list[Path], spec: PartialSpec | None = None, *, trust_pickle: bool = False) -> LoadedModel:
    """Load every checkpoint and return the first model holding the uniform mean of all their tensors."""
    import torch

    if len(paths) < 2:
        raise CheckpointError(f"SWA needs at least 2 checkpoints, got {len(paths)}: {[str(p) for p in paths]}")
    loaded = [load_checkpoint(p, spec, trust_pickle=trust_pickle) for p in paths]
    first = loaded[0]
    for other in loaded[1:]:
        if other.spec != first.spec:
            raise CheckpointError(f"{other.source}: SWA members must share one architecture; {other.spec.describe()} vs {first.spec.describe()}")
    states = [m.model.state_dict() for m in loaded]
    averaged = {}
    for key, value in states[0].items():
        if torch.is_floating_point(value):
            averaged[key] = torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
        else:  # num_batches_tracked: counts, not weights
            averaged[key] = max((s[key] for s in states), key=lambda t: int(t.max()) if t.numel() else 0).clone()
    first.model.load_state_dict(averaged)
    digest = hashlib.sha256(b"swa:" + "".join(m.sha256 for m in loaded).encode()).hexdigest()
    return LoadedModel(first.model.eval(), first.spec, first.source, digest, "swa")


def recalibrate_bn(model, batches: Iterable[np.ndarray]) -> int:
    """Recompute BatchNorm running stats over normalized NCHW float32 batches; returns the image count."""
    import torch
    from torch.optim.swa_utils import update_bn

    count = 0

    def tensors():
        nonlocal count
        for batch in batches:
            count += len(batch)
            yield torch.from_numpy(np.ascontiguousarray(batch))

    with torch.no_grad():
        update_bn(tensors(), model)
    model.eval()
    return count


def bn_batches(folder: str | Path, size_hw: tuple[int, int] | None, mean, std, stride: int, batch: int = 8):
    """Images from ``folder`` preprocessed exactly as the engine feeds a model at scale 1, batched by shape."""
    from tqdm import tqdm

    from segensemble.formats.images import list_images, read_image
    from segensemble.progress import bar_off
    from segensemble.views import prepare_input

    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    pending: list[np.ndarray] = []
    for ref in tqdm(list_images(folder), desc="BN recalibration", unit="img", leave=False, disable=bar_off(True)):
        img = read_image(ref.path)
        x = prepare_input(img, size_hw or img.shape[:2], mean, std, stride)
        if pending and (len(pending) == batch or pending[0].shape != x.shape):
            yield np.stack(pending)
            pending = []
        pending.append(x)
    if pending:
        yield np.stack(pending)
