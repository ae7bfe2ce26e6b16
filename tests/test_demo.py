"""`ensemble demo` runs every stage to the end on data it makes itself, and its ensemble beats its best member."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

csv.field_size_limit(1 << 30)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    (out / "ckpt").mkdir(parents=True)
    (out / "ckpt" / "linknet_e40.pth").write_bytes(b"left by an earlier run with --steps 60")  # once globbed into the plan
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "demo", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for step in range(1, 9):
        assert f"[{step}/8]" in done.stdout
    assert "linknet_e40" not in (out / "plan.yaml").read_text()
    assert "ensemble mIoU" in done.stdout and "best single member" in done.stdout
    assert f"ensemble serve --build {out / 'build-tuned'}" in done.stdout and "curl" in done.stdout
    tuned = (out / "analysis" / "plan.tuned.yaml").read_text()  # the weights chosen on the tune images, not the validation ones
    assert "weight:" in tuned and (out / "build-tuned" / "ensemble.onnx").is_file()
    plan = (out / "plan.yaml").read_text()
    for key in ("folds:", "epochs:", "swa:", "scales:", "tta:", "bn_images:"):
        assert key in plan
    report = json.loads((out / "evaluation.json").read_text())
    assert set(report["members"]) == {"linknet-kfold", "linknet-epochs", "linknet-swa", "unet"}
    best = max(m["miou"] for m in report["members"].values())
    gain = report["tuned"]["ensemble"]["miou"] - best
    assert gain > 0, f"the demo's ensemble loses {-gain:.4f} to its best member on this CPU"  # what the demo exists to show
    assert f"the ensemble gains {gain:.4f}" in done.stdout
    rows = list(csv.reader(open(out / "submission.csv")))
    assert len(rows) == 13 and rows[0] == ["image_id", "PredictionString"]
    assert (out / "pseudo.json").is_file() and (out / "pseudo.report.csv").is_file()  # the CLI's default report name
    merged = json.loads((out / "pseudo.merged.json").read_text())  # train + test images, one root: data/
    assert f"relative to {out / 'data'}" in done.stdout
    assert all((out / "data" / i["file_name"]).is_file() for i in merged["images"])
    assert "train" in {i["file_name"].split("/")[0] for i in merged["images"]} <= {"train", "test"}
    assert "steps on 24 images" in done.stdout and "the demo took" in done.stdout  # progress and the time it took


@pytest.mark.slow
def test_demo_multilabel_runs_every_job(tmp_path):
    out = tmp_path / "demo-ml"
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "demo", "--task", "multilabel", "--out", str(out), "--steps", "12"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for step in range(1, 9):
        assert f"[{step}/8]" in done.stdout
    assert "ensemble mean Dice" in done.stdout and "check-submission: valid" in done.stdout
    assert "task: multilabel" in (out / "plan.yaml").read_text()
    report = json.loads((out / "evaluation.json").read_text())
    assert report["task"] == "multilabel" and 0 <= report["ensemble"]["dice"] <= 1
    rows = list(csv.reader(open(out / "submission.csv")))
    assert rows[0] == ["image_name", "class", "rle"] and len(rows) == 1 + 12 * 5
    coco = json.loads((out / "pseudo.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["radius", "ulna", "scaphoid", "lunate", "capitate"]
