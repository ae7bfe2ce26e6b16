"""Image roots of COCO files, for merging: a COCO ``file_name`` means nothing without the folder it is
relative to, and a train file and pseudo-labels for another folder do not share one.

The merged file gets one root: the train root when the pseudo-labelled images lie under it (their names
rebased onto it), else the deepest folder holding both (the train names then gain the train root's path
below it as a prefix). Either way every name in the merged file is checked to open from that root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from segensemble.errors import SegEnsembleError


@dataclass(frozen=True)
class MergedRoot:
    root: Path  # every file_name of the merged file is relative to this
    train_prefix: str  # prepended to the train file's names ("" when the train root is the merged root)


def likely_roots(coco_path: Path, given: Path | None = None) -> list[Path]:
    """Where datasets put a COCO file's images: beside it, in the folder named after it (``train.json`` beside
    ``train/``), in an ``images/`` folder beside it (or its sub-folder named after the file), and, when a root
    was given, its parent (``--images data/images/val`` for file_names that start with ``val/``)."""
    parent, stem = coco_path.parent, coco_path.stem
    found = [parent, parent / stem, parent / "images", parent / "images" / stem]
    if given is not None:
        found += [Path(given).parent, Path(given) / stem]
    return list(dict.fromkeys(found))


def find_image_root(coco: dict, coco_path: Path, given: Path | None = None) -> Path:
    """The folder ``coco``'s file_names open from: ``given``, else the first of ``likely_roots`` that holds
    every image."""
    candidates = [Path(given)] if given else likely_roots(coco_path)
    names = [img["file_name"] for img in coco.get("images", [])]
    for root in candidates:
        missing = [n for n in names if not (root / n).is_file()]
        if not missing:
            return root
    tried = " or ".join(str(c) for c in candidates)
    raise SegEnsembleError(f"{coco_path}: {len(missing)} of its {len(names)} images are not under {tried} (e.g. {missing[0]!r}); "
                           "pass --merge-root, the folder its file_names are relative to")


def merged_root(train_root: Path, images_root: Path) -> MergedRoot:
    """One root for the train images and the pseudo-labelled ones (``images_root``)."""
    train, images = Path(os.path.abspath(train_root)), Path(os.path.abspath(images_root))
    if images.is_relative_to(train):
        return MergedRoot(Path(train_root), "")
    common = Path(os.path.commonpath([train, images]))
    if common == Path(common.anchor):
        raise SegEnsembleError(f"{images_root} and the train image root {train_root} share no folder but the filesystem root; "
                               "put the unlabelled images beside or under the training images")
    return MergedRoot(common, PurePosixPath(train.relative_to(common)).as_posix() + "/")


def rebase(images_root: Path, name: str, root: Path) -> str:
    """``name`` (relative to ``images_root``) made relative to ``root``, as a POSIX path."""
    path = Path(os.path.abspath(Path(images_root) / name))
    return PurePosixPath(path.relative_to(os.path.abspath(root))).as_posix()


def check_resolves(coco: dict, root: Path, source: str) -> None:
    """Every image of ``coco`` opens from ``root``; else an error naming the first that does not."""
    for img in coco.get("images", []):
        if not (Path(root) / img["file_name"]).is_file():
            raise SegEnsembleError(f"{source}: image {img['file_name']!r} does not resolve under {root}")
