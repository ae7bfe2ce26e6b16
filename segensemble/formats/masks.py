"""Label maps as PNG (uint8, or 16-bit for more than 256 classes) and probabilities as compressed npz.

A multiclass mask file is the label map (``x.jpg`` -> ``x.jpg.png``, pixel = class id); a binary task's is
its 0/1 mask under the same name; a multilabel task writes one 0/1 PNG per class (``x.jpg.<class>.png``,
the class name made file-safe).

Each file carries a mark (a PNG ``Software`` text chunk, an npz entry ``written_by``) so that a rerun replaces
its own earlier outputs and never a file it did not write (``is_ours``)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from segensemble.formats.atomic import write_bytes_atomic
from segensemble.formats.paths import output_path
from segensemble.names import safe_name

MARK = "segensemble"


def encode_png(labels: np.ndarray) -> bytes:
    from PIL import Image, PngImagePlugin

    arr = labels.astype(np.uint8) if labels.max(initial=0) < 256 else labels.astype(np.uint16)
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", MARK)
    Image.fromarray(arr).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def encode_mask_zip(masks: np.ndarray, classes: list[str]) -> bytes:
    """A multilabel answer over HTTP: a zip of one 0/1 PNG per class, ``<class>.png`` (file-safe name)."""
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
        for name, mask in zip(classes, masks):
            archive.writestr(f"{safe_name(name)}.png", encode_png(mask))
    return buffer.getvalue()


def is_ours(path: Path) -> bool:
    """Whether ``path`` is a mask or probability file segensemble wrote (its mark is read, not the pixels)."""
    import zipfile

    from PIL import Image

    if not path.is_file():  # a FIFO, device or folder is never opened
        return False
    try:
        if path.suffix == ".npz":
            with zipfile.ZipFile(path) as archive:
                return "written_by.npy" in archive.namelist()
        with Image.open(path, formats=["PNG"]) as img:
            return img.info.get("Software") == MARK
    except Exception:  # unreadable or another format: not ours
        return False


def mask_path(root: Path, image_id: str, source: Path | None = None, class_name: str | None = None) -> Path:
    """The mask file of an image (``class_name``: of one class of a multilabel task)."""
    return output_path(root, image_id, f".{safe_name(class_name)}.png" if class_name else ".png", source)


def mask_files(root: Path, image_id: str, source: Path | None, classes: list[str], task: str) -> list[Path]:
    """Every mask file an image gets: one, or one per class of a multilabel task."""
    if task == "multilabel":
        return [mask_path(root, image_id, source, name) for name in classes]
    return [mask_path(root, image_id, source)]


def save_masks(root: Path, image_id: str, prediction, source: Path | None, classes: list[str], task: str) -> list[Path]:
    """An image's mask files: the label map, the binary mask, or one PNG per class."""
    arrays = [prediction.labels] if task == "multiclass" else list(prediction.masks) if task == "multilabel" else [prediction.masks[0]]
    targets = mask_files(root, image_id, source, classes, task)
    for target, array in zip(targets, arrays):
        write_bytes_atomic(target, encode_png(array))
    return targets


def probs_path(root: Path, image_id: str, source: Path | None = None) -> Path:
    return output_path(root, image_id, ".npz", source)


def save_mask(root: Path, image_id: str, labels: np.ndarray, source: Path | None = None) -> Path:
    target = mask_path(root, image_id, source)
    write_bytes_atomic(target, encode_png(labels))
    return target


def encode_probs(probs: np.ndarray) -> bytes:
    """float16 (C, H, W) in a compressed npz under the key ``probs``."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, probs=probs.astype(np.float16), written_by=np.array(MARK))
    return buffer.getvalue()


def save_probs(root: Path, image_id: str, probs: np.ndarray, source: Path | None = None) -> Path:
    target = probs_path(root, image_id, source)
    write_bytes_atomic(target, encode_probs(probs))
    return target
