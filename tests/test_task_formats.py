"""Submission formats for every task: each RLE written decodes, with a plain-numpy decoder written here, to
exactly the masks --save-masks writes; coco-rle decodes with pycocotools; check-submission refuses each kind
of broken file, naming the line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import SIGMOID_CLASSES, cli, read_png

from segensemble.formats.images import list_images
from segensemble.jobs.check_submission import check_submission
from segensemble.jobs.predict import PredictOptions, predict_to_files
from segensemble.runtime.engine import Engine


def decode(runs: str, hw: tuple[int, int], order: str) -> np.ndarray:
    """Independent decoder: 1-indexed start/length pairs over the flattened mask."""
    flat = np.zeros(hw[0] * hw[1], np.uint8)
    numbers = [int(v) for v in runs.split()]
    for start, length in zip(numbers[0::2], numbers[1::2]):
        flat[start - 1:start - 1 + length] = 1
    return flat.reshape(hw, order=order)


def rows_of(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


@pytest.fixture(scope="module")
def multilabel_out(multilabel_built, sigmoid_data, tmp_path_factory):
    """rle-per-class, kaggle-rle and coco-rle of the multilabel build, and its per-class mask files."""
    engine = Engine.from_build(multilabel_built)
    refs = list_images(sigmoid_data["test"].images)
    out = tmp_path_factory.mktemp("ml-formats")
    predict_to_files(engine, refs, PredictOptions(out / "rle.csv", out / "masks", format="rle-per-class", progress=False))
    predict_to_files(engine, refs, PredictOptions(out / "kaggle.csv", format="kaggle-rle", progress=False))
    predict_to_files(engine, refs, PredictOptions(out / "coco.json", format="coco-rle", progress=False))
    return {"dir": out, "refs": refs, "engine": engine}


def test_rle_per_class_decodes_to_the_saved_masks(multilabel_out):
    out, refs = multilabel_out["dir"], multilabel_out["refs"]
    rows = rows_of(out / "rle.csv")
    assert rows[0] == ["image_name", "class", "rle"]
    assert [(r[0], r[1]) for r in rows[1:]] == [(ref.image_id, c) for ref in refs for c in SIGMOID_CLASSES]
    on = 0
    for image, cls, runs in rows[1:]:
        saved = read_png(out / "masks" / f"{image}.{cls}.png")
        assert saved.max() <= 1
        assert np.array_equal(decode(runs, saved.shape, "C"), saved)
        on += int(saved.sum())
    assert on > 0


def test_kaggle_rle_is_column_major_with_one_based_class_ids(multilabel_out):
    out, refs = multilabel_out["dir"], multilabel_out["refs"]
    rows = rows_of(out / "kaggle.csv")
    assert rows[0] == ["ImageId_ClassId", "EncodedPixels"]
    assert [r[0] for r in rows[1:]] == [f"{ref.image_id}_{c + 1}" for ref in refs for c in range(3)]
    for key, runs in rows[1:]:
        image, c = key.rsplit("_", 1)
        saved = read_png(out / "masks" / f"{image}.{SIGMOID_CLASSES[int(c) - 1]}.png")
        assert np.array_equal(decode(runs, saved.shape, "F"), saved)
        if saved.any():  # 64 x 80 images: read row-major, the same runs would draw another mask
            assert not np.array_equal(decode(runs, saved.shape, "C"), saved)


def test_coco_rle_decodes_with_pycocotools(multilabel_out):
    from pycocotools import mask as mask_utils

    out = multilabel_out["dir"]
    coco = json.loads((out / "coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == SIGMOID_CLASSES
    by_image = {img["id"]: img["file_name"] for img in coco["images"]}
    for ann in coco["annotations"]:
        rle = {**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode()}
        got = mask_utils.decode(rle)
        saved = read_png(out / "masks" / f"{by_image[ann['image_id']]}.{SIGMOID_CLASSES[ann['category_id']]}.png")
        assert np.array_equal(got, saved) and ann["area"] == int(saved.sum())
    per_image = {}
    for ann in coco["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann["category_id"])
    assert all(len(set(v)) == len(v) for v in per_image.values())  # one annotation per class present


def test_binary_and_multiclass_rle_match_their_mask_files(binary_built, built, sigmoid_data, data, tmp_path):
    engine = Engine.from_build(binary_built)
    refs = list_images(sigmoid_data["test"].images)
    predict_to_files(engine, refs, PredictOptions(tmp_path / "bin.csv", tmp_path / "bin", format="rle-per-class", progress=False))
    rows = rows_of(tmp_path / "bin.csv")
    assert len(rows) == 1 + len(refs) and {r[1] for r in rows[1:]} == {SIGMOID_CLASSES[0]}
    for image, _, runs in rows[1:]:
        saved = read_png(tmp_path / "bin" / f"{image}.png")
        assert np.array_equal(decode(runs, saved.shape, "C"), saved)
    multi = Engine.from_build(built["dir"])
    refs = list_images(data["test"].images)[:2]
    predict_to_files(multi, refs, PredictOptions(tmp_path / "mc.csv", tmp_path / "mc", format="rle-per-class", progress=False))
    for image, cls, runs in rows_of(tmp_path / "mc.csv")[1:]:
        labels = read_png(tmp_path / "mc" / f"{image}.png")
        assert np.array_equal(decode(runs, labels.shape, "C"), labels == multi.classes.index(cls))


def test_submission_size_resizes_every_format_nearest(multilabel_out, tmp_path):
    import cv2

    engine, refs = multilabel_out["engine"], multilabel_out["refs"][:1]
    predict_to_files(engine, refs, PredictOptions(tmp_path / "s.csv", format="kaggle-rle", submission_size=(32, 40), progress=False))
    for key, runs in rows_of(tmp_path / "s.csv")[1:]:
        image, c = key.rsplit("_", 1)
        full = read_png(multilabel_out["dir"] / "masks" / f"{image}.{SIGMOID_CLASSES[int(c) - 1]}.png")
        assert np.array_equal(decode(runs, (32, 40), "F"), cv2.resize(full, (40, 32), interpolation=cv2.INTER_NEAREST))


def test_contest_csv_is_refused_for_overlapping_classes(multilabel_out, tmp_path):
    from segensemble.errors import SegEnsembleError

    with pytest.raises(SegEnsembleError, match="contest-csv holds one label per pixel"):
        predict_to_files(multilabel_out["engine"], multilabel_out["refs"], PredictOptions(tmp_path / "x.csv", progress=False))


def test_a_resumed_per_class_file_continues_after_the_last_complete_image(multilabel_out, tmp_path):
    engine, refs = multilabel_out["engine"], multilabel_out["refs"]
    full = (multilabel_out["dir"] / "rle.csv").read_text()
    lines = full.splitlines(keepends=True)
    partial = tmp_path / "r.csv.partial"
    partial.write_text("".join(lines[: 1 + 3 + 2]) + lines[6][:5])  # one whole image, two rows of the next, a torn row
    summary = predict_to_files(engine, refs, PredictOptions(tmp_path / "r.csv", format="rle-per-class", resume=True, progress=False))
    assert summary.resumed == 1 and (tmp_path / "r.csv").read_text() == full


def _problems(tmp_path, text, fmt, refs, size=None):
    path = tmp_path / "sub.csv"
    path.write_text(text)
    return check_submission(path, fmt, refs, SIGMOID_CLASSES, size).problems


def test_check_submission_accepts_what_predict_wrote(multilabel_out):
    out, refs = multilabel_out["dir"], multilabel_out["refs"]
    assert check_submission(out / "rle.csv", "rle-per-class", refs, SIGMOID_CLASSES, None).valid
    assert check_submission(out / "kaggle.csv", "kaggle-rle", refs, SIGMOID_CLASSES, None).valid


def test_check_submission_refuses_each_kind_of_broken_file(multilabel_out, tmp_path):
    refs = multilabel_out["refs"]
    good = (multilabel_out["dir"] / "rle.csv").read_text().splitlines()
    first = refs[0].image_id
    pixels = 64 * 80

    def with_row(i, row):
        lines = list(good)
        lines[i] = row
        return "\n".join(lines) + "\n"

    cases = {
        "header": (with_row(0, "image,class,rle"), "line 1: header"),
        "duplicate": ("\n".join(good + [good[1]]) + "\n", f"line {len(good) + 1}: image {first!r} class 'radius' again (first on line 2)"),
        "missing": ("\n".join(good[:-1]) + "\n", f"missing: image {refs[-1].image_id!r} class 'scaphoid'"),
        "unsorted": (with_row(1, f"{first},radius,10 2 3 2"), "line 2: run 2 (start 3) is not after run 1"),
        "overlapping": (with_row(1, f"{first},radius,10 5 12 2"), "line 2: run 2 (start 12) is not after run 1 (pixels 10..14)"),
        "outside": (with_row(1, f"{first},radius,{pixels} 2"), f"line 2: the last run ends at pixel {pixels + 1}, past the image's {pixels} pixels"),
        "odd": (with_row(1, f"{first},radius,1 2 3"), "line 2: 3 numbers: runs are start-length pairs"),
        "zero start": (with_row(1, f"{first},radius,0 2"), "line 2: run 1 starts at 0; starts count from 1"),
        "text": (with_row(1, f"{first},radius,1 x"), "line 2: 'x' is not a whole number"),
        "class": (with_row(1, f"{first},femur,1 2"), "line 2: class 'femur' is not one of the build's classes"),
        "image": (with_row(1, "nope.png,radius,1 2"), "line 2: image 'nope.png' is not in the images folder"),
        "fields": (with_row(1, f"{first},radius"), "line 2: 2 fields; rle-per-class rows have 3"),
    }
    for name, (text, message) in cases.items():
        problems = _problems(tmp_path, text, "rle-per-class", refs)
        assert any(p.startswith(message) for p in problems), (name, problems)
    kaggle = _problems(tmp_path, "ImageId_ClassId,EncodedPixels\n" + f"{first}_4,1 2\n", "kaggle-rle", refs)
    assert any("must end in _1.._3" in p for p in kaggle)


def test_check_submission_exit_codes(multilabel_out, multilabel_built, sigmoid_data, tmp_path):
    images = sigmoid_data["test"].images
    ok = cli("check-submission", multilabel_out["dir"] / "rle.csv", "--format", "rle-per-class", "--images", images, "--build", multilabel_built)
    assert ok.returncode == 0 and "valid rle-per-class" in ok.stdout
    broken = tmp_path / "b.csv"
    broken.write_text("image_name,class,rle\n")
    bad = cli("check-submission", broken, "--format", "rle-per-class", "--images", images, "--build", multilabel_built)
    assert bad.returncode == 1 and "missing: image" in bad.stdout
    usage = cli("check-submission", broken, "--images", images, "--build", multilabel_built)
    assert usage.returncode == 2 and "--format" in usage.stderr
