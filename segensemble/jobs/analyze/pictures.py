"""Where the ensemble fails, as pictures: per-image grids, per-class IoU bars, a confusion heat map."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segensemble.extras import missing_extra


def require_matplotlib():
    """matplotlib with the file-only backend; a one-line install hint when it is missing (call it before long work)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise missing_extra(exc, "ensemble analyze's pictures") or exc from None
    matplotlib.use("Agg")
    return matplotlib


def _plt():
    require_matplotlib()
    import matplotlib.pyplot as plt

    return plt


TP, FP, FN = (40, 200, 40), (230, 40, 40), (40, 90, 230)
WRONG, RIGHT = (230, 40, 40), (60, 60, 60)
NEITHER, IGNORED = (0, 0, 0), (255, 255, 255)
CODES = (TP, FP, FN, WRONG, RIGHT, NEITHER, IGNORED)
MIN_CODE_DISTANCE = 90  # RGB distance a class colour keeps from every error-coding colour
CLASS_PANELS_PER_ROW = 6


def palette(classes: int) -> np.ndarray:
    """A colour per class from matplotlib's tab20, tab20b and tab20c, none of them near an error-coding colour
    (TP green, FP/wrong red, FN blue, right grey, neither black, ignored white), so a class never reads as an
    error; past the 40-odd that remain, colours repeat."""
    matplotlib = require_matplotlib()
    candidates = [np.array(matplotlib.colormaps[m](i)[:3]) * 255 for m in ("tab20", "tab20b", "tab20c") for i in range(20)]
    codes = np.array(CODES, float)
    usable = [c for c in candidates if np.linalg.norm(codes - c, axis=1).min() >= MIN_CODE_DISTANCE]
    return np.array([usable[i % len(usable)] for i in range(classes)]).round().astype(np.uint8)


def colourize(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    out = np.full((*labels.shape, 3), 255, np.uint8)  # ignore (255) shows white
    valid = labels < len(colours)
    out[valid] = colours[labels[valid]]
    return out


def _patch(rgb, label: str):
    from matplotlib.patches import Patch

    return Patch(facecolor=np.asarray(rgb) / 255, edgecolor="0.5", label=label)


def _save(fig, path: Path, dpi: int) -> Path:
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def image_grid(path: Path, title: str, image: np.ndarray, gt: np.ndarray, pred: np.ndarray, names: list[str]) -> Path:
    return _save(grid_figure(title, image, gt, pred, names), path, 80)


def iou_bars(path: Path, names: list[str], series: dict[str, dict[str, float | None]]) -> Path:
    return _save(bars_figure(names, series), path, 90)


def confusion_heatmap(path: Path, names: list[str], cm: np.ndarray) -> Path:
    return _save(confusion_figure(names, cm), path, 90)


def grid_figure(title: str, image: np.ndarray, gt: np.ndarray, pred: np.ndarray, names: list[str]):
    """Image, ground truth, prediction and error map on the first row, then one panel per class present, six to
    a row (readable at 29 classes), with two legends below: the class colours, and the codes of the error map
    and of the per-class panels."""
    plt = _plt()
    colours = palette(len(names))
    present = [c for c in sorted(set(np.unique(gt).tolist()) | set(np.unique(pred).tolist())) if c < len(names)]
    cols = max(4, min(CLASS_PANELS_PER_ROW, len(present)))
    rows = 1 + -(-len(present) // cols)
    legend_rows = -(-(len(present) + 1) // 8) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.5 * rows + 0.35 * legend_rows + 0.6), squeeze=False)
    valid = gt != 255
    error = np.zeros((*gt.shape, 3), np.uint8)
    error[valid & (gt != pred)] = WRONG
    error[valid & (gt == pred)] = RIGHT
    summary = [(image, "image"), (colourize(gt, colours), "ground truth"), (colourize(pred, colours), "prediction"),
               (error, f"errors ({(valid & (gt != pred)).sum()} px)")]
    per_class = []
    for c in present:
        rgb = np.zeros((*gt.shape, 3), np.uint8)
        rgb[(gt == c) & (pred == c)] = TP
        rgb[(gt != c) & (pred == c) & valid] = FP
        rgb[(gt == c) & (pred != c)] = FN
        per_class.append((rgb, f"class: {names[c]}"))
    placed = [((0, i), p) for i, p in enumerate(summary)] + [((1 + k // cols, k % cols), p) for k, p in enumerate(per_class)]
    for ax in axes.flat:
        ax.axis("off")
    for (r, c), (arr, label) in placed:
        axes[r, c].imshow(arr, interpolation="nearest")
        axes[r, c].set_title(label, fontsize=7)
    classes = [_patch(colours[c], names[c]) for c in present] + ([_patch(IGNORED, "ignored")] if not valid.all() else [])
    codes = [_patch(WRONG, "error map: wrong"), _patch(RIGHT, "error map: right"), _patch(TP, "class panels: TP (both say it)"),
             _patch(FP, "FP (predicted only)"), _patch(FN, "FN (missed)"), _patch(NEITHER, "neither")]
    bottom = (0.35 * legend_rows + 0.6) / fig.get_figheight()
    fig.legend(handles=classes, loc="lower center", bbox_to_anchor=(0.5, 0.4 * bottom), ncol=min(len(classes), 8), fontsize=7,
               frameon=False, title="colours in ground truth and prediction", title_fontsize=7)
    fig.legend(handles=codes, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    # explicit spacing: tight_layout let a class panel's title sit on the image panel above it
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.7 / fig.get_figheight(), bottom=bottom + 0.02, wspace=0.06, hspace=0.18)
    return fig


def bars_figure(names: list[str], series: dict[str, dict[str, float | None]]):
    """Per-class IoU of each series; a class absent from both ground truth and prediction is marked n/a
    (its IoU is undefined), not drawn as 0."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(names) * len(series) + 1.5), 3.8))
    width = 0.8 / len(series)
    for k, (label, ious) in enumerate(series.items()):
        x = np.arange(len(names)) + k * width
        values = [ious.get(n) for n in names]
        bars = ax.bar([xi for xi, v in zip(x, values) if v is not None], [v for v in values if v is not None], width, label=label)
        colour = bars.patches[0].get_facecolor() if bars.patches else "0.4"
        for xi, v in zip(x, values):
            if v is None:
                ax.text(xi, 0.02, "n/a", ha="center", va="bottom", rotation=90, fontsize=7, color=colour)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("IoU")
    ax.set_ylim(0, 1.05)
    ax.axhline(1.0, color="0.7", lw=0.6, ls=":")
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series), frameon=False)
    fig.tight_layout()
    return fig


def confusion_figure(names: list[str], cm: np.ndarray):
    """Rows normalized to the ground-truth pixels of each class; a class with none is a grey n/a row."""
    plt = _plt()
    totals = cm.sum(1, keepdims=True)
    rows = np.ma.masked_where(np.broadcast_to(totals == 0, cm.shape), cm / np.maximum(totals, 1))
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    fig, ax = plt.subplots(figsize=(2 + 0.55 * len(names), 1.5 + 0.45 * len(names)))
    im = ax.imshow(rows, cmap=cmap, vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth (share of its pixels)")
    for r in range(len(names)):
        for c in range(len(names)):
            text, dark = ("n/a", False) if totals[r, 0] == 0 else (f"{rows[r, c]:.2f}", rows[r, c] < 0.6)
            ax.text(c, r, text, ha="center", va="center", fontsize=6, color="white" if dark else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
