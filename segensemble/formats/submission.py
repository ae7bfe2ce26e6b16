"""The competition CSV: ``image_id,PredictionString``, written row by row to a partial file, resumable.

PredictionString is the full-size label map resized to the submission size with nearest neighbour exactly
as the contest baseline does (albumentations ``A.Resize`` on a mask = cv2 INTER_NEAREST), flattened
row-major, space-separated. Rows go to ``<name>.partial`` (flushed per row) which is renamed to the final
name when the run completes; ``--resume`` continues a partial file after its last complete row.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import cv2
import numpy as np

from segensemble.errors import SegEnsembleError
from segensemble.formats.atomic import write_bytes_atomic

HEADER = ["image_id", "PredictionString"]


def submission_string(labels: np.ndarray, size_hw: tuple[int, int] = (256, 256)) -> str:
    small = cv2.resize(labels.astype(np.uint8), (size_hw[1], size_hw[0]), interpolation=cv2.INTER_NEAREST)
    return " ".join(map(str, small.ravel().tolist()))


def partial_path(csv_path: Path) -> Path:
    """Where an unfinished run's rows are kept (what ``--resume`` continues)."""
    return Path(csv_path).with_name(Path(csv_path).name + ".partial")


def _complete_rows(text: str) -> list[list[str]]:
    """The CSV's rows as the csv module reads them (names may hold any character, newlines included, quoted),
    up to the last complete one."""
    rows = []
    try:
        for row in csv.reader(io.StringIO(text, newline=""), strict=True):
            rows.append(row)
    except csv.Error:  # a row torn inside a quoted field
        pass
    return rows


def _rows_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


class SubmissionWriter:
    """Appends rows in input order; ``done`` holds the ids already written when resuming."""

    def __init__(self, target: Path, resume: bool = False):
        self.target = Path(target)
        self.partial = partial_path(self.target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.done: list[str] = self._recover() if resume else []
        self._fh = open(self.partial, "a" if self.done else "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._fh, lineterminator="\n")
        if not self.done:
            self._csv.writerow(HEADER)
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
        if not rows or rows[0] != HEADER:
            raise SegEnsembleError(f"{source}: cannot resume, not a submission file (header {rows[:1]})")
        write_bytes_atomic(self.partial, _rows_text(rows).encode())
        return [r[0] for r in rows[1:]]

    def check_order(self, image_ids: list[str]) -> None:
        """A resumed file must hold a prefix of this run's images, in this run's order."""
        if image_ids[: len(self.done)] != self.done:
            raise SegEnsembleError(
                f"{self.partial}: cannot resume, it holds {len(self.done)} rows that are not the first images of this input "
                "(different folder, COCO file or order?); rerun without --resume"
            )

    def write(self, image_id: str, prediction_string: str) -> None:
        self._csv.writerow([image_id, prediction_string])
        self._fh.flush()

    def finish(self) -> Path:
        self._fh.close()
        self.partial.replace(self.target)
        return self.target

    def abort(self) -> None:
        """Keep the partial file (for --resume) and leave any earlier final file untouched."""
        self._fh.close()
