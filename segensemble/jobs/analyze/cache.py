"""The per-view cache: each view's (C, H, W) probabilities of each image, on disk, read one image at a time.

One flat memory-mapped file per view holds every image back to back (images may differ in size), so
memory stays bounded by one image's views whatever the dataset size. float16 by default (half the disk;
argmax ties may flip on a handful of pixels), float32 for exact scoring.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segensemble.errors import SegEnsembleError
from segensemble.export.graph import build_graph
from segensemble.formats.images import ImageRef
from segensemble.graph_io import ViewId, list_views, view_output
from segensemble.progress import bar_off
from segensemble.runtime.engine import Engine
from segensemble.runtime.sessions import GraphSession, open_graph


class ViewCache:
    def __init__(self, root: Path, views: list[ViewId], sizes: list[tuple[int, int]], classes: int, dtype: str, mode: str = "w+"):
        self.root, self.views, self.sizes, self.classes = Path(root), views, sizes, classes
        self.offsets = np.concatenate([[0], np.cumsum([classes * h * w for h, w in sizes])]).astype(np.int64)
        self.root.mkdir(parents=True, exist_ok=True)
        self.files = [np.memmap(self.root / f"view_{j}.bin", dtype=dtype, mode=mode, shape=(int(self.offsets[-1]),))
                      for j in range(len(views))]
        self.seconds = np.zeros(len(views))  # time spent producing each view, all images together

    def put(self, view: int, image: int, probs: np.ndarray) -> None:
        self.files[view][self.offsets[image]:self.offsets[image + 1]] = probs.ravel()

    def get(self, view: int, image: int) -> np.ndarray:
        h, w = self.sizes[image]
        return np.asarray(self.files[view][self.offsets[image]:self.offsets[image + 1]], dtype=np.float32).reshape(self.classes, h, w)

    def combine(self, coeffs: dict[int, float], image: int) -> np.ndarray:
        """Σ coeff_v · p_v for one image (coefficients already normalized)."""
        total = None
        for view, c in coeffs.items():
            p = self.get(view, image) * np.float32(c)
            total = p if total is None else total + p
        return total


def _check_disk(root: Path, needed: int) -> None:
    """Refuse up front, naming the size, rather than fail half way through a long run."""
    import shutil

    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if needed > 0.9 * free:
        raise SegEnsembleError(f"{root}: the view cache needs {needed / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB is free; "
                               "use --max-images N to analyze a sample, or point -o at a larger disk")


def build_cache(engine: Engine, refs: list[ImageRef], root: Path, dtype: str = "float16", progress: bool = True) -> ViewCache:
    """Run every view of every member once over ``refs`` and store each view's full-size probabilities.

    Each member's views come from a variant of the ensemble graph whose outputs are that member's views at
    H x W (built into ``root/graphs``), so the time each member costs is measured on its own.
    """
    views = list_views(engine.members)
    sizes = [engine.reading.size(ref.path) for ref in refs]  # from the headers (orientation, TIFF level), without decoding twice
    _check_disk(root, sum(h * w for h, w in sizes) * len(engine.classes) * len(views) * np.dtype(dtype).itemsize)
    graphs = _member_graphs(engine, root / "graphs")
    cache = ViewCache(root, views, sizes, len(engine.classes), dtype)
    for i, ref in enumerate(tqdm(refs, desc="analyze: views", unit="img", disable=bar_off(progress))):
        image = engine.read(ref.path)[None]
        for mi, (session, names) in enumerate(graphs):
            started = time.perf_counter()
            outputs = session.run(image, names)
            spent = time.perf_counter() - started
            mine = [j for j, v in enumerate(views) if v.member == mi]
            for j, probs in zip(mine, outputs):
                cache.put(j, i, probs[0])
            area = np.array([views[j].scale ** 2 for j in mine])  # cost of a view grows with its pixel count
            cache.seconds[mine] += spent * area / area.sum()
    return cache


def _member_graphs(engine: Engine, folder: Path) -> list[tuple[GraphSession, list[str]]]:
    """One views graph per member: (session, its output names in list_views order)."""
    out = []
    for mi, member in enumerate(engine.members):
        for model in member.models:
            engine.build.model(model)
        alone = engine.manifest.model_copy(update={"members": [member], "profiles": {}})
        path = build_graph(alone, engine.build_dir, folder / f"member{mi}.views.onnx", views=True)
        out.append((open_graph(path, engine.options), [view_output(j) for j in range(member.views)]))
    return out
