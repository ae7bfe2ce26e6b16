"""Submission files, written image by image to a partial file, resumable. Three CSV layouts:

- ``contest-csv`` (the trash contest): ``image_id,PredictionString``, the label map resized to the submission
  size (default 256 x 256) with nearest neighbour exactly as the contest baseline does (albumentations
  ``A.Resize`` on a mask = cv2 INTER_NEAREST), flattened row-major, space-separated;
- ``rle-per-class`` (the hand-bone X-ray contest): ``image_name,class,rle``, one row per image and class in
  the plan's order, the mask run-length encoded row-major (``formats/rle.py``);
- ``kaggle-rle`` (SIIM, Severstal, Clouds): ``ImageId_ClassId,EncodedPixels``, ``ImageId`` the file name with
  its extension and ``ClassId`` the class's 1-based index, column-major runs.

RLE layouts keep the image's own size unless a submission size is given (then nearest neighbour, as
above); an empty mask is an empty string. An image's rows go to ``<name>.partial`` together (flushed per
image), renamed to the final name when the run completes; ``--resume`` continues after the last image
whose rows are all there.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from segensemble.errors import SegEnsembleError
from segensemble.formats.atomic import write_bytes_atomic
from segensemble.formats.rle import encode_runs

HEADER = ["image_id", "PredictionString"]
CONTEST_SIZE = (256, 256)  # contest-csv's size when none is given


@dataclass(frozen=True)
class CsvLayout:
    """One submission CSV layout: its header, whether it has a row per class, and its run order."""

    name: str
    header: list[str]
    per_class: bool
    order: str = "C"  # RLE flattening: C row-major, F column-major

    def image_of(self, row: list[str]) -> str:
        """The image a row belongs to (to resume after the last complete image)."""
        return row[0].rsplit("_", 1)[0] if self.name == "kaggle-rle" else row[0]

    def rows(self, image_id: str, masks: np.ndarray, classes: list[str], size_hw: tuple[int, int] | None) -> list[list[str]]:
        """An image's rows from its (C, H, W) class masks (contest-csv: its (H, W) label map)."""
        if not self.per_class:
            return [[image_id, submission_string(masks, size_hw or CONTEST_SIZE)]]
        out = []
        for c, name in enumerate(classes):
            runs = encode_runs(resize_nearest(masks[c], size_hw), self.order)
            out.append([image_id, name, runs] if self.name == "rle-per-class" else [f"{image_id}_{c + 1}", runs])
        return out


LAYOUTS = {
    "contest-csv": CsvLayout("contest-csv", HEADER, per_class=False),
    "rle-per-class": CsvLayout("rle-per-class", ["image_name", "class", "rle"], per_class=True, order="C"),
    "kaggle-rle": CsvLayout("kaggle-rle", ["ImageId_ClassId", "EncodedPixels"], per_class=True, order="F"),
}
FORMATS = (*LAYOUTS, "coco-rle", "png")  # what `ensemble predict --format` writes


def resize_nearest(mask: np.ndarray, size_hw: tuple[int, int] | None) -> np.ndarray:
    """A mask or label map at the submission size (cv2 INTER_NEAREST, as albumentations resizes masks)."""
    if size_hw is None or tuple(size_hw) == mask.shape:
        return mask
    small = mask.astype(np.uint8 if mask.max(initial=0) < 256 else np.uint16)  # label maps past 256 classes
    return cv2.resize(small, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_NEAREST)


def submission_string(labels: np.ndarray, size_hw: tuple[int, int] = CONTEST_SIZE) -> str:
    return " ".join(map(str, resize_nearest(labels, size_hw).ravel().tolist()))


def partial_path(csv_path: Path) -> Path:
    """Where an unfinished run's rows are kept (what ``--resume`` continues)."""
    return Path(csv_path).with_name(Path(csv_path).name + ".partial")


# A contest row holds 256 x 256 class ids: 196 608 characters once ids reach 10 (the trash contest's 11 classes),
# past the csv module's default field limit of 131 072; a 2048 x 2048 row would be 64 times that.
FIELD_LIMIT = 1 << 28


def csv_rows(lines, **options):
    """``csv.reader`` that takes rows as wide as a submission's (the field limit is the csv module's, process-wide)."""
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
    return csv.reader(lines, **options)


def _complete_rows(text: str) -> list[list[str]]:
    """The CSV's rows as the csv module reads them (names may hold any character, newlines included, quoted),
    up to the last complete one."""
    rows = []
    try:
        for row in csv_rows(io.StringIO(text, newline=""), strict=True):
            rows.append(row)
    except csv.Error:  # a row torn inside a quoted field
        pass
    return rows


def _rows_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


class SubmissionWriter:
    """Appends each image's rows in input order; ``done`` holds the images already written when resuming."""

    def __init__(self, target: Path, resume: bool = False, layout: CsvLayout = LAYOUTS["contest-csv"], classes: int = 1):
        self.target = Path(target)
        self.layout, self.rows_per_image = layout, classes if layout.per_class else 1
        self.partial = partial_path(self.target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.done: list[str] = self._recover() if resume else []
        self._fh = open(self.partial, "a" if self.done else "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._fh, lineterminator="\n")
        if not self.done:
            self._csv.writerow(self.layout.header)
            self._fh.flush()

    def _recover(self) -> list[str]:
        source = self.partial if self.partial.exists() else self.target if self.target.exists() else None
        if source is None:
            return []
        data = source.read_bytes()
        data = data[: data.rfind(b"\n") + 1]  # an interrupted last row is dropped (before decoding: it may end mid-character)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SegEnsembleError(f"{source}: cannot resume, byte {exc.start} is not UTF-8 (not a file this tool wrote)") from None
        rows = _complete_rows(text)
        if not rows or rows[0] != self.layout.header:
            raise SegEnsembleError(f"{source}: cannot resume, not a {self.layout.name} file (header {rows[:1]}, expected "
                                   f"{self.layout.header})")
        images: list[str] = []
        counts: dict[str, int] = {}
        for row in rows[1:]:
            image = self.layout.image_of(row)
            if image not in counts:
                images.append(image)
            counts[image] = counts.get(image, 0) + 1
        if images and counts[images[-1]] < self.rows_per_image:  # the last image's rows were cut short
            rows = rows[: len(rows) - counts[images.pop()]]
        write_bytes_atomic(self.partial, _rows_text(rows).encode())
        return images

    def check_order(self, image_ids: list[str]) -> None:
        """A resumed file must hold a prefix of this run's images, in this run's order."""
        if image_ids[: len(self.done)] != self.done:
            raise SegEnsembleError(
                f"{self.partial}: cannot resume, it holds {len(self.done)} rows that are not the first images of this input "
                "(different folder, COCO file or order?); rerun without --resume"
            )

    def write(self, rows: list[list[str]]) -> None:
        """One image's rows, together."""
        self._csv.writerows(rows)
        self._fh.flush()

    def finish(self) -> Path:
        self._fh.close()
        self.partial.replace(self.target)
        return self.target

    def abort(self) -> None:
        """Keep the partial file (for --resume) and leave any earlier final file untouched."""
        self._fh.close()
