"""Evaluate: IoU figures against a direct computation on the generator's own ground truth."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import CLASSES

from segensemble.errors import SegEnsembleError
from segensemble.formats.coco import IGNORE, category_map, label_map, load_coco
from segensemble.formats.images import read_image
from segensemble.jobs.evaluate import EvaluateOptions, evaluate
from segensemble.runtime.engine import LABELS, MEMBERS, Want


def _miou(gts, preds, k):
    ious = []
    for c in range(k):
        inter = sum(int(((g == c) & (p == c)).sum()) for g, p in zip(gts, preds))
        union = sum(int(((g == c) | (p == c)).sum()) for g, p in zip(gts, preds))
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


def test_label_maps_equal_the_generator_masks(data):
    coco = load_coco(data["test"].coco)
    cats = category_map(coco, CLASSES, "test.json")
    for img, mask in zip(coco.dataset["images"], data["test"].masks):
        np.testing.assert_array_equal(label_map(coco, img["id"], cats, 0), mask)
        assert (label_map(coco, img["id"], cats, IGNORE)[mask == 0] == IGNORE).all()


def test_evaluate_matches_a_direct_computation(engine, data):
    report = evaluate(engine, data["test"].coco, data["test"].images, EvaluateOptions(progress=False))
    coco = json.loads(data["test"].coco.read_text())
    preds = engine.predict([read_image(data["test"].images / i["file_name"]) for i in coco["images"]], Want({LABELS, MEMBERS}))
    gts = data["test"].masks
    assert report["ensemble"]["miou"] == pytest.approx(_miou(gts, [p.labels for p in preds], len(CLASSES)))
    for name in report["members"]:
        assert report["members"][name]["miou"] == pytest.approx(_miou(gts, [p.members[name].argmax(0) for p in preds], len(CLASSES)))
    per_image = np.mean([_miou([g], [p.labels], len(CLASSES)) for g, p in zip(gts, preds)])
    assert report["ensemble"]["miou_per_image"] == pytest.approx(per_image)
    assert report["unlabeled"] == "background"


def test_unknown_category_names_both_sides(engine, data, tmp_path):
    coco = json.loads(data["test"].coco.read_text())
    coco["categories"][0]["name"] = "Cardboard"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(coco))
    with pytest.raises(SegEnsembleError, match="Cardboard.*Background"):
        evaluate(engine, bad, data["test"].images, EvaluateOptions(progress=False))


def test_cli_evaluate(built, data, tmp_path):
    out = tmp_path / "eval.json"
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "evaluate", "--coco", str(data["test"].coco), "--images",
                           str(data["test"].images), "--build", str(built["dir"]), "--json", str(out), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "ensemble" in done.stdout and "unet-ms" in done.stdout
    report = json.loads(out.read_text())
    assert set(report["members"]) == {"unet-ms", "unet-folds", "unet-epochs", "unet-swa", "fpn"}
    # one row per class, full names, the report's own figures; n/a where the IoU is undefined, and said so
    for cls, iou in report["ensemble"]["iou"].items():
        row = next(line for line in done.stdout.splitlines() if line.startswith(f"  {cls}  "))
        assert row.split()[-1] == ("n/a" if iou is None else f"{iou:.3f}")
    assert "n/a: the class is in neither" in done.stdout
