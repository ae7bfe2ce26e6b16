"""``ensemble check-submission``: a submission file checked before it is uploaded, as a contest's scorer
would: the header, every image present once per class (once for contest-csv), known images and classes, and
every mask inside its image (RLE runs numeric, paired, sorted, apart; contest-csv values class ids, H x W of
them). Each problem names its line (the header is line 1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from segensemble.errors import SegEnsembleError
from segensemble.files import open_regular
from segensemble.formats.images import ImageRef, header_size
from segensemble.formats.rle import parse_runs
from segensemble.formats.submission import CONTEST_SIZE, LAYOUTS, csv_rows

MAX_SUBMISSION_BYTES = 4 << 30


@dataclass
class CheckReport:
    rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems


def check_submission(path: Path, fmt: str, refs: list[ImageRef], classes: list[str], size_hw: tuple[int, int] | None) -> CheckReport:
    """Every problem of ``path`` in layout ``fmt`` for these images and classes (empty: it is valid)."""
    if fmt not in LAYOUTS:
        raise SegEnsembleError(f"--format: check-submission reads {', '.join(LAYOUTS)} (got {fmt!r})")
    layout = LAYOUTS[fmt]
    report = CheckReport()
    sizes = _SizeOf(refs, size_hw or (CONTEST_SIZE if fmt == "contest-csv" else None))
    seen: dict[tuple[str, str], int] = {}
    with open_regular(path, max_bytes=MAX_SUBMISSION_BYTES, fail=lambda why: SegEnsembleError(f"{path}: {why}")) as fh:
        text = fh.read().decode("utf-8", errors="replace")
    reader = csv_rows(text.splitlines())
    for line, row in enumerate(reader, start=1):
        if line == 1:
            if row != layout.header:
                report.problems.append(f"line 1: header {','.join(row)!r}; {fmt} needs {','.join(layout.header)!r}")
            continue
        report.rows += 1
        problem = _check_row(row, fmt, classes, sizes, seen, line)
        if problem:
            report.problems.append(f"line {line}: {problem}")
    wanted = [(r.image_id, c) for r in refs for c in (classes if layout.per_class else [""])]
    missing = [(i, c) for i, c in wanted if (i, c) not in seen]
    for image, cls in missing[:50]:
        report.problems.append(f"missing: image {image!r}" + (f" class {cls!r}" if cls else ""))
    if len(missing) > 50:
        report.problems.append(f"missing: {len(missing) - 50} more image/class rows")
    return report


class _SizeOf:
    """Each image's mask size: the submission size, or the image's own (read from its header once)."""

    def __init__(self, refs: list[ImageRef], fixed: tuple[int, int] | None):
        self.refs, self.fixed, self._cache = {r.image_id: r for r in refs}, fixed, {}

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.refs

    def __call__(self, image_id: str) -> tuple[int, int]:
        if self.fixed:
            return tuple(self.fixed)
        if image_id not in self._cache:
            path = self.refs[image_id].path
            with open_regular(path) as fh:
                self._cache[image_id] = header_size(fh.read(), str(path))
        return self._cache[image_id]


def _check_row(row: list[str], fmt: str, classes: list[str], sizes: _SizeOf, seen: dict, line: int) -> str | None:
    if len(row) != len(LAYOUTS[fmt].header):
        return f"{len(row)} fields; {fmt} rows have {len(LAYOUTS[fmt].header)}"
    if fmt == "kaggle-rle":
        image, _, number = row[0].rpartition("_")
        if not number.isdigit() or not 1 <= int(number) <= len(classes):
            return f"{row[0]!r}: ImageId_ClassId must end in _1.._{len(classes)} (the class's 1-based index)"
        cls, data = classes[int(number) - 1], row[1]
    elif fmt == "rle-per-class":
        image, cls, data = row
        if cls not in classes:
            return f"class {cls!r} is not one of the build's classes {classes}"
    else:
        image, cls, data = row[0], "", row[1]
    if image not in sizes:
        return f"image {image!r} is not in the images folder"
    if (image, cls) in seen:
        return f"image {image!r}" + (f" class {cls!r}" if cls else "") + f" again (first on line {seen[(image, cls)]})"
    seen[(image, cls)] = line
    h, w = sizes(image)
    if fmt == "contest-csv":
        values = data.split()
        if len(values) != h * w:
            return f"{len(values)} values; a {h}x{w} mask has {h * w}"
        if not all(v.isdigit() and int(v) < len(classes) for v in values):
            return f"values must be class ids 0..{len(classes) - 1}"
        return None
    _, problem = parse_runs(data, h * w)
    return problem
