"""Where the ensemble fails, as pictures: per-image grids, per-class IoU bars, a confusion heat map."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segensemble.extras import missing_extra


def _matplotlib():
    try:
        import matplotlib
    except ImportError as exc:
        raise missing_extra(exc, "ensemble analyze's pictures") or exc from None
    matplotlib.use("Agg")
    return matplotlib


def _plt():
    _matplotlib()
    import matplotlib.pyplot as plt

    return plt


def palette(classes: int) -> np.ndarray:
    matplotlib = _matplotlib()
    cmap = matplotlib.colormaps["tab20"]
    colours = (np.array([cmap(i % 20)[:3] for i in range(classes)]) * 255).astype(np.uint8)
    colours[0] = (0, 0, 0)
    return colours


def colourize(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    out = np.full((*labels.shape, 3), 255, np.uint8)  # ignore (255) shows white
    valid = labels < len(colours)
    out[valid] = colours[labels[valid]]
    return out


def image_grid(path: Path, title: str, image: np.ndarray, gt: np.ndarray, pred: np.ndarray, names: list[str]) -> Path:
    """Image, ground truth, prediction, error map, then one panel per class present (TP green, FP red, FN blue)."""
    plt = _plt()
    colours = palette(len(names))
    present = [c for c in sorted(set(np.unique(gt).tolist()) | set(np.unique(pred).tolist())) if c < len(names)]
    cols = 4 + len(present)
    fig, axes = plt.subplots(1, cols, figsize=(2.6 * cols, 2.9))
    valid = gt != 255
    error = np.zeros((*gt.shape, 3), np.uint8)
    error[valid & (gt != pred)] = (230, 40, 40)
    error[valid & (gt == pred)] = (60, 60, 60)
    panels = [(image, "image"), (colourize(gt, colours), "ground truth"), (colourize(pred, colours), "prediction"),
              (error, f"errors ({(valid & (gt != pred)).sum()} px)")]
    for c in present:
        rgb = np.zeros((*gt.shape, 3), np.uint8)
        rgb[(gt == c) & (pred == c)] = (40, 200, 40)
        rgb[(gt != c) & (pred == c) & valid] = (230, 40, 40)
        rgb[(gt == c) & (pred != c)] = (40, 90, 230)
        panels.append((rgb, names[c][:18]))
    for ax, (arr, label) in zip(axes, panels):
        ax.imshow(arr)
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def iou_bars(path: Path, names: list[str], series: dict[str, dict[str, float | None]]) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names) * len(series)), 3.5))
    width = 0.8 / len(series)
    for k, (label, ious) in enumerate(series.items()):
        values = [ious.get(n) or 0.0 for n in names]
        ax.bar(np.arange(len(names)) + k * width, values, width, label=label)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, [n[:14] for n in names], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("IoU")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def confusion_heatmap(path: Path, names: list[str], cm: np.ndarray) -> Path:
    plt = _plt()
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(names), 1 + 0.45 * len(names)))
    im = ax.imshow(rows, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), [n[:14] for n in names], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), [n[:14] for n in names], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    for r in range(len(names)):
        for c in range(len(names)):
            ax.text(c, r, f"{rows[r, c]:.2f}", ha="center", va="center", fontsize=6, color="white" if rows[r, c] < 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
