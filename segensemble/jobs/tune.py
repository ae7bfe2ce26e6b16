"""``ensemble tune``: post-processing chosen on labelled validation images, kept only where it helps images
it was not chosen on.

The images are split in two (``holdout`` of them held out, seeded). On the selection part each class's steps
are chosen in turn (fill_holes, then min_area, then for mask tasks the presence gate), every candidate value
scored on the images' mean score (multiclass: the image's mIoU, since a removal relabels pixels of other
classes; mask tasks: the class's Dice). On the held-out part each chosen change is scored alone against no
post-processing, image by image, and kept only when the 95% bootstrap interval of its mean per-image gain lies
above zero: a small gain every image shares is kept, a large one a few images carry is not. The scores are
the ones ``evaluate`` reports (IoU with an ignore label; Dice with empty/empty = 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from segensemble.formats.coco import IGNORE
from segensemble.postprocess import PostProcess, apply
from segensemble.progress import bar_off

CANDIDATES = {"fill_holes": (0, 16, 64, 256, 1024), "min_area": (0, 16, 64, 256, 1024, 4096)}
PRESENCE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
PRESENCE_PIXELS = (0, 16, 64, 256, 1024, 4096)
BOOTSTRAP = 2000


@dataclass
class Sample:
    """One validation image: the ensemble's probabilities and raw decision, and the truth (labels with IGNORE,
    or (C, H, W) masks)."""

    name: str
    probs: np.ndarray
    decision: np.ndarray
    truth: np.ndarray


@dataclass
class Change:
    """One class's chosen step and what it did."""

    cls: str
    step: str
    value: object
    selection_gain: float
    heldout_gain: float = 0.0
    interval: tuple[float, float] = (0.0, 0.0)
    kept: bool = False
    why: str = ""


@dataclass
class TuneResult:
    steps: PostProcess
    changes: list[Change] = field(default_factory=list)
    selection: list[int] = field(default_factory=list)
    heldout: list[int] = field(default_factory=list)
    heldout_gain: float = 0.0
    interval: tuple[float, float] = (0.0, 0.0)


def no_steps(classes: int) -> PostProcess:
    return PostProcess(fill_holes=[0] * classes, min_total_area=[0] * classes, keep_largest=[False] * classes, min_area=[0] * classes,
                       presence_threshold=[0.0] * classes, presence_min_pixels=[0] * classes)


def _with(steps: PostProcess, c: int, step: str, value) -> PostProcess:
    if step == "presence":
        threshold, pixels = value
        return steps.model_copy(update={"presence_threshold": _set(steps.presence_threshold, c, threshold),
                                        "presence_min_pixels": _set(steps.presence_min_pixels, c, pixels)})
    return steps.model_copy(update={step: _set(getattr(steps, step), c, value)})


def _set(values: list, c: int, value) -> list:
    out = list(values)
    out[c] = value
    return out


def image_scores(sample: Sample, steps: PostProcess, task: str) -> np.ndarray:
    """Per-class score of one image after ``steps`` (C,): IoU (multiclass, NaN where the class is in neither),
    Dice (mask tasks, 1 where both are empty)."""
    classes = sample.probs.shape[0]
    if task == "multiclass":
        pred = apply(steps, sample.probs, labels=sample.decision) if steps.active else sample.decision
        valid = sample.truth != IGNORE
        out = np.full(classes, np.nan)
        for c in range(classes):
            p, g = (pred == c) & valid, (sample.truth == c) & valid
            union = (p | g).sum()
            if union:
                out[c] = (p & g).sum() / union
        return out
    pred = apply(steps, sample.probs, masks=sample.decision).astype(bool) if steps.active else sample.decision.astype(bool)
    inter = (pred & sample.truth).sum((1, 2))
    total = pred.sum((1, 2)) + sample.truth.sum((1, 2))
    return np.where(total == 0, 1.0, 2 * inter / np.maximum(total, 1))


def _score(samples: list[Sample], indices: list[int], steps: PostProcess, task: str, c: int) -> np.ndarray:
    """Per image: the image's mIoU (multiclass) or class ``c``'s Dice (mask tasks)."""
    scores = [image_scores(samples[i], steps, task) for i in indices]
    if task == "multiclass":
        return np.array([np.nanmean(s) if np.isfinite(s).any() else 1.0 for s in scores])
    return np.array([s[c] for s in scores])


def bootstrap(gains: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``gains`` over images."""
    rng = np.random.default_rng(seed)
    means = gains[rng.integers(0, len(gains), (BOOTSTRAP, len(gains)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def split(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    order = np.random.default_rng(seed).permutation(n)
    cut = min(n - 1, max(1, round(n * holdout)))
    return sorted(order[cut:].tolist()), sorted(order[:cut].tolist())


def tune(samples: list[Sample], classes: list[str], task: str, holdout: float = 0.5, seed: int = 0, progress: bool = False) -> TuneResult:
    """Choose on one part, keep what the other confirms (the module docstring)."""
    if len(samples) < 4:
        raise ValueError(f"tune needs at least 4 labelled images to choose on some and confirm on others (got {len(samples)})")
    selection, heldout = split(len(samples), holdout, seed)
    steps, changes = no_steps(len(classes)), []
    searches = [(name, values) for name, values in CANDIDATES.items()]
    if task != "multiclass":
        searches.append(("presence", [(t, p) for t in PRESENCE_THRESHOLDS for p in PRESENCE_PIXELS]))
    bar = tqdm(total=len(searches) * len(classes), desc="tune: search", unit="step", disable=bar_off(progress))
    for step, values in searches:
        for c, name in enumerate(classes):
            base = _score(samples, selection, steps, task, c).mean()
            scored = [(_score(samples, selection, _with(steps, c, step, v), task, c).mean(), v) for v in values]
            best, value = max(scored, key=lambda sv: (sv[0], -values.index(sv[1])))  # ties: the earlier (gentler) value
            if best > base and value not in (0, (PRESENCE_THRESHOLDS[0], 0)):
                steps = _with(steps, c, step, value)
                changes.append(Change(name, step, value, float(best - base)))
            bar.update()
    bar.close()
    none = no_steps(len(classes))
    kept = none
    for change in changes:
        c = classes.index(change.cls)
        alone = _with(none, c, change.step, change.value)
        gains = _score(samples, heldout, alone, task, c) - _score(samples, heldout, none, task, c)
        change.heldout_gain, change.interval = float(gains.mean()), bootstrap(gains, seed)
        change.kept = change.interval[0] > 0
        change.why = (f"held-out gain {change.heldout_gain:+.4f}, 95% interval [{change.interval[0]:+.4f}, {change.interval[1]:+.4f}] "
                      + ("above zero: kept" if change.kept else "reaches zero: not kept"))
        if change.kept:
            kept = _with(kept, c, change.step, change.value)
    result = TuneResult(kept, changes, selection, heldout)
    if kept.active:
        overall = np.array([np.nanmean(image_scores(samples[i], kept, task)) - np.nanmean(image_scores(samples[i], none, task))
                            for i in heldout])
        result.heldout_gain, result.interval = float(overall.mean()), bootstrap(overall, seed)
    return result


def spec_of(steps: PostProcess, classes: list[str]) -> dict:
    """The plan's ``postprocess:`` section for ``steps`` (only the classes with a step)."""
    out: dict = {}
    for name in ("fill_holes", "min_area"):
        chosen = {c: v for c, v in zip(classes, getattr(steps, name)) if v}
        if chosen:
            out[name] = chosen
    gates = {c: {"threshold": t, "min_pixels": p} for c, t, p in zip(classes, steps.presence_threshold, steps.presence_min_pixels) if p}
    if gates:
        out["presence"] = gates
    return out


def collect(engine, coco_path, image_root, unlabeled: str | None = None, progress: bool = True) -> list[Sample]:
    """The ensemble's raw (not post-processed) decisions and probabilities on the labelled images, with their
    truth read as ``evaluate`` reads it."""
    from segensemble.formats.coco import category_map, class_masks, coco_images, label_map, load_coco
    from segensemble.jobs.evaluate import unlabeled_value
    from segensemble.runtime.engine import LABELS, PROBS, Want

    coco = load_coco(coco_path)
    cats = category_map(coco, engine.classes, str(coco_path))
    refs = coco_images(coco_path, image_root, coco)
    raw = engine.without_postprocess()
    fill = None if engine.fusion.sigmoid else unlabeled_value(unlabeled, engine.classes)
    samples = []
    for ref, result in tqdm(raw.stream(refs, Want({LABELS, PROBS})), total=len(refs), desc="tune: images", unit="img",
                            disable=bar_off(progress)):
        if isinstance(result, Exception):
            raise result
        if engine.fusion.sigmoid:
            truth, decision = class_masks(coco, ref.coco_id, cats, len(engine.classes)), result.masks
        else:
            truth, decision = label_map(coco, ref.coco_id, cats, fill), result.labels
        samples.append(Sample(ref.image_id, result.probs.astype(np.float32), decision, truth))
    return samples


def report(result: TuneResult, classes: list[str], task: str) -> dict:
    metric = "mIoU per image" if task == "multiclass" else "Dice per image and class"
    return {"metric": metric, "selection_images": len(result.selection), "heldout_images": len(result.heldout),
            "chosen": spec_of(result.steps, classes), "heldout_gain": result.heldout_gain, "interval": list(result.interval),
            "changes": [{"class": c.cls, "step": c.step, "value": c.value, "selection_gain": c.selection_gain,
                         "heldout_gain": c.heldout_gain, "interval": list(c.interval), "kept": c.kept, "why": c.why}
                        for c in result.changes]}


def pictures(samples: list[Sample], result: TuneResult, classes: list[str], out, count: int = 3) -> list[str]:
    """Before/after pictures of the held-out images the kept steps changed most (needs matplotlib)."""
    if not result.steps.active:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sigmoid = samples[0].decision.ndim == 3
    changed = []
    for i in result.heldout:
        s = samples[i]
        after = apply(result.steps, s.probs, masks=s.decision) if sigmoid else apply(result.steps, s.probs, labels=s.decision)
        changed.append((int((after != s.decision).sum()), i, after))
    names = []
    for n, i, after in sorted(changed, key=lambda t: -t[0])[:count]:
        if n == 0:
            break
        s = samples[i]
        show = (lambda x: x.argmax(0) + (x.any(0))) if sigmoid else (lambda x: x)
        fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
        for ax, (title, x) in zip(axes, [("truth", s.truth), ("before", s.decision), (f"after ({n} px changed)", after)]):
            ax.imshow(show(np.asarray(x)), cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.suptitle(s.name, fontsize=10)
        name = f"changed_{len(names):02d}.png"
        fig.savefig(out / name, dpi=80, bbox_inches="tight")
        plt.close(fig)
        names.append(name)
    return names
