"""Offline predict: the CSV format (parsed back against masks), resume after a failure, bad images."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys

import albumentations as A
import numpy as np
import pytest
from conftest import read_png

from segensemble.errors import ImageError
from segensemble.formats.images import list_images, read_image
from segensemble.jobs.predict import PredictOptions, predict_to_files

csv.field_size_limit(1 << 30)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_csv_rows_are_the_masks_resized_like_the_baseline(engine, data, tmp_path):
    refs = list_images(data["test"].images)
    out = tmp_path / "sub.csv"
    summary = predict_to_files(engine, refs, PredictOptions(csv=out, masks_dir=tmp_path / "masks", probs_dir=tmp_path / "probs", progress=False))
    assert summary.predicted == len(refs) and not out.with_name("sub.csv.partial").exists()
    rows = _rows(out)
    assert rows[0] == ["image_id", "PredictionString"]
    assert [r[0] for r in rows[1:]] == [r.image_id for r in refs]
    resize = A.Resize(256, 256)
    for ref, (_, pred) in zip(refs, rows[1:]):
        full = read_png(tmp_path / "masks" / (ref.image_id + ".png"))
        assert full.shape == read_image(ref.path).shape[:2]
        want = resize(image=read_image(ref.path), mask=full)["mask"]
        got = np.array(pred.split(), dtype=np.int64).reshape(256, 256)
        np.testing.assert_array_equal(got, want)
        probs = np.load(tmp_path / "probs" / (ref.image_id + ".npz"))["probs"]
        np.testing.assert_array_equal(probs.astype(np.float32).argmax(0), full)


def test_coco_order_and_submission_size(engine, data, tmp_path):
    import json

    from segensemble.formats.coco import coco_images

    coco = json.loads(data["test"].coco.read_text())
    coco["images"] = coco["images"][::-1]
    reordered = tmp_path / "test.json"
    reordered.write_text(json.dumps(coco))
    refs = coco_images(reordered, data["test"].images)
    out = tmp_path / "s.csv"
    predict_to_files(engine, refs, PredictOptions(csv=out, submission_size=(32, 48), progress=False))
    rows = _rows(out)[1:]
    assert [r[0] for r in rows] == [img["file_name"] for img in coco["images"]]
    assert all(len(r[1].split()) == 32 * 48 for r in rows)


def _copy_images(data, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(data["test"].images, folder)
    return folder


def test_bad_image_stops_keeps_rows_and_resume_finishes(engine, data, tmp_path):
    folder = _copy_images(data, tmp_path)
    good = (folder / "test_0003.png").read_bytes()
    (folder / "test_0003.png").write_bytes(good[: len(good) // 3])  # truncated
    out = tmp_path / "sub.csv"
    out.write_text("an earlier submission\n")
    refs = list_images(folder)
    with pytest.raises(ImageError, match="test_0003.png"):
        predict_to_files(engine, refs, PredictOptions(csv=out, progress=False))
    assert out.read_text() == "an earlier submission\n"  # nothing already written is lost
    partial = _rows(out.with_name("sub.csv.partial"))
    assert [r[0] for r in partial[1:]] == ["test_0000.png", "test_0001.png", "test_0002.png"]
    (folder / "test_0003.png").write_bytes(good)
    summary = predict_to_files(engine, refs, PredictOptions(csv=out, resume=True, progress=False))
    assert summary.resumed == 3 and summary.predicted == 3
    fresh = tmp_path / "fresh.csv"
    predict_to_files(engine, refs, PredictOptions(csv=fresh, progress=False))
    assert out.read_text() == fresh.read_text()


def test_a_stopped_cli_run_says_what_resume_continues(built, data, tmp_path):
    folder = _copy_images(data, tmp_path)
    (folder / "test_0002.png").write_bytes(b"not a png at all")
    out = tmp_path / "sub.csv"
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "predict", str(folder), "--build", str(built["dir"]),
                           "-o", str(out), "--quiet", "--calls-in-flight", "1"], capture_output=True, text=True)
    assert done.returncode == 2 and "test_0002.png" in done.stderr
    assert f"the 2 rows written so far are kept in {out}.partial; rerun with --resume" in done.stderr


def test_resume_drops_a_torn_last_row(engine, data, tmp_path):
    refs = list_images(data["test"].images)
    full = tmp_path / "full.csv"
    predict_to_files(engine, refs, PredictOptions(csv=full, progress=False))
    text = full.read_text()
    lines = text.splitlines(keepends=True)
    torn = "".join(lines[:3]) + lines[3][:40]  # header, 2 rows, a torn third row
    out = tmp_path / "sub.csv"
    out.with_name("sub.csv.partial").write_text(torn)
    summary = predict_to_files(engine, refs, PredictOptions(csv=out, resume=True, progress=False))
    assert summary.resumed == 2 and out.read_text() == text


def test_skip_bad_lists_and_continues(engine, data, tmp_path):
    folder = _copy_images(data, tmp_path)
    (folder / "test_0002.png").write_bytes(b"not a png at all")
    out = tmp_path / "sub.csv"
    summary = predict_to_files(engine, list_images(folder), PredictOptions(csv=out, skip_bad=True, progress=False))
    assert [s[0] for s in summary.skipped] == ["test_0002.png"]
    assert len(_rows(out)) == 1 + 5


def test_cli_predict_end_to_end(built, data, tmp_path):
    out = tmp_path / "sub.csv"
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "predict", str(data["test"].images), "--build", str(built["dir"]),
                           "-o", str(out), "--save-masks", str(tmp_path / "m"), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "predicted 6 of 6" in done.stdout and len(_rows(out)) == 7
    missing = subprocess.run([sys.executable, "-m", "segensemble.cli", "predict", str(tmp_path / "nope"), "--build", str(built["dir"])],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "nope" in missing.stderr


def test_png_format_writes_into_the_folder_save_masks_names(built, data, tmp_path):
    """--format png with --save-masks DIR (no -o) once wrote ./masks in the working directory instead."""
    (tmp_path / "cwd").mkdir()
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "predict", str(data["test"].images), "--build", str(built["dir"]),
                           "--format", "png", "--save-masks", str(tmp_path / "m"), "--quiet"], capture_output=True, text=True,
                          cwd=tmp_path / "cwd")
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "m").glob("*.png"))) == 6 and not any((tmp_path / "cwd").iterdir())


def test_engine_ray_without_ray_says_how_to_install(built, data, tmp_path):
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'ray':\n"
        "            raise ModuleNotFoundError('No module named ' + repr(name), name=name)\n"  # as in a venv without it
        "sys.meta_path.insert(0, Block())\n"
        "from segensemble.cli import main\n"
        f"sys.exit(main(['predict', {str(data['test'].images)!r}, '--build', {str(built['dir'])!r}, '--engine', 'ray', "
        f"'-o', {str(tmp_path / 's.csv')!r}, '--quiet']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2 and "pip install 'segensemble[dist]'" in done.stderr, done.stderr
    assert not (tmp_path / "s.csv").exists()


def test_two_workers_keep_order_and_results(engine, data, tmp_path):
    import copy

    folder = _copy_images(data, tmp_path)
    (folder / "test_0003.png").write_bytes(b"broken")
    refs = list_images(folder)
    parallel = copy.copy(engine)
    parallel.workers = 2
    outs = []
    for name, eng in (("one", engine), ("two", parallel)):
        out = tmp_path / f"{name}.csv"
        summary = predict_to_files(eng, refs, PredictOptions(csv=out, skip_bad=True, progress=False))
        assert [s[0] for s in summary.skipped] == ["test_0003.png"]
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_contest_rows_wider_than_the_csv_default_are_read_back(tmp_path):
    """11 classes (the trash contest's): a 256x256 row of 2-digit ids is 196 608 characters, past the csv module's
    default limit of 131 072. check-submission failed on it, and --resume took such rows for torn ones."""
    import csv

    from PIL import Image

    from segensemble.formats.images import ImageRef
    from segensemble.formats.submission import _complete_rows
    from segensemble.jobs.check_submission import check_submission

    limit = csv.field_size_limit(131072)  # the default, whatever an earlier test set
    try:
        ids = " ".join(["10"] * 256 * 256)
        text = "".join(f"{name},{ids}\r\n" for name in ("image_id", "a.jpg", "b.jpg")).replace(f"image_id,{ids}", "image_id,PredictionString")
        assert [row[0] for row in _complete_rows(text)] == ["image_id", "a.jpg", "b.jpg"]
        refs = []
        for name in ("a.jpg", "b.jpg"):
            Image.new("RGB", (512, 512)).save(tmp_path / name)
            refs.append(ImageRef(name, tmp_path / name))
        (tmp_path / "sub.csv").write_text(text, newline="")
        report = check_submission(tmp_path / "sub.csv", "contest-csv", refs, [f"c{i}" for i in range(11)], None)
        assert report.valid, report.problems
    finally:
        csv.field_size_limit(limit)
