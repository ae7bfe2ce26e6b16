"""Jobs on multilabel and binary builds: evaluate's Dice equals a direct computation (COCO ground truth with
overlapping annotations, and mask files), pseudo-label keeps and drops images by the rule and writes
overlapping annotations, and the server answers what predict writes."""

from __future__ import annotations

import io
import json
import zipfile

import httpx
import numpy as np
import pytest
from conftest import SIGMOID_CLASSES, read_png, running_server
from PIL import Image

from segensemble.formats.coco import category_map, class_masks, load_coco
from segensemble.formats.images import list_images, read_image
from segensemble.jobs.evaluate import evaluate, evaluate_mask_files
from segensemble.jobs.predict import PredictOptions, predict_to_files
from segensemble.jobs.pseudo_label import PseudoOptions, pseudo_label
from segensemble.jobs.pseudo_rule import PseudoRule, decide_masks
from segensemble.runtime.engine import MASKS, MEMBERS, Engine, Want


def _dice(gt: np.ndarray, pred: np.ndarray) -> float:
    g, p = gt.sum(), pred.sum()
    return 1.0 if g + p == 0 else 2 * (gt & pred).sum() / (g + p)


def test_evaluate_dice_equals_a_direct_computation(multilabel_built, sigmoid_data):
    engine = Engine.from_build(multilabel_built)
    test = sigmoid_data["test"]
    report = evaluate(engine, test.coco, test.images)
    coco = load_coco(test.coco)
    cats = category_map(coco, SIGMOID_CLASSES, "test")
    assert any((class_masks(coco, i, cats, 3).sum(0) > 1).any() for i in coco.imgs)  # the ground truth overlaps
    per_image, members = [], {m.name: [] for m in engine.members}
    for img in coco.dataset["images"]:
        gt = class_masks(coco, img["id"], cats, 3)
        pred = engine.predict([read_image(test.images / img["file_name"])], Want({MASKS, MEMBERS}))[0]
        per_image.append([_dice(gt[c], pred.masks[c].astype(bool)) for c in range(3)])
        for name, p in pred.members.items():
            members[name].append([_dice(gt[c], p[c] > t) for c, t in enumerate([0.4, 0.5, 0.6])])
    assert report["ensemble"]["dice"] == pytest.approx(np.mean(per_image), abs=1e-12)
    assert report["ensemble"]["dice_per_class"]["ulna"] == pytest.approx(np.mean(per_image, 0)[1], abs=1e-12)
    for name, scores in members.items():
        assert report["members"][name]["dice"] == pytest.approx(np.mean(scores), abs=1e-12)
    assert report["ensemble"]["dice"] > 0.5  # trained members, not noise


def test_evaluate_reads_mask_files_as_ground_truth(binary_built, sigmoid_data, tmp_path):
    """Binary ground truth written as mask files (x.png.png, 0/1): the same figures as from the COCO file."""
    from segensemble.formats.masks import save_masks
    from segensemble.runtime.engine import Prediction

    engine = Engine.from_build(binary_built)
    test = sigmoid_data["test"]
    coco = json.loads(test.coco.read_text())
    for img, masks in zip(coco["images"], test.masks):
        save_masks(tmp_path, img["file_name"], Prediction(masks=masks[:1]), None, engine.classes, "binary")
    from_files = evaluate_mask_files(engine, test.images, tmp_path)
    direct = []
    for img, masks in zip(coco["images"], test.masks):
        pred = engine.predict([read_image(test.images / img["file_name"])], Want({MASKS}))[0]
        direct.append(_dice(masks[0].astype(bool), pred.masks[0].astype(bool)))
    assert from_files["ensemble"]["dice"] == pytest.approx(np.mean(direct), abs=1e-12)


def test_pseudo_rule_on_masks_counts_claimed_pixels():
    p = np.zeros((2, 1, 10), np.float32)
    p[0, 0, :4] = 0.95  # confident class 0
    p[1, 0, 3:5] = 0.5  # class 1 unsure at pixels 3 and 4 (pixel 3 overlaps the confident class 0)
    decision = decide_masks(p, PseudoRule(min_prob=0.8, max_uncertain=0.4))
    assert (decision.foreground, decision.uncertain, decision.kept) == (5, 2, True)
    assert not decide_masks(p, PseudoRule(min_prob=0.8, max_uncertain=0.39)).kept
    assert decide_masks(np.zeros((2, 1, 4), np.float32), PseudoRule()).reason == "empty"


def test_pseudo_label_keeps_and_drops_by_the_rule_with_overlapping_annotations(multilabel_built, sigmoid_data, tmp_path):
    engine = Engine.from_build(multilabel_built)
    refs = list_images(sigmoid_data["test"].images)
    rule = PseudoRule(min_prob=0.8, max_uncertain=0.15)
    summary = pseudo_label(engine, refs, PseudoOptions(tmp_path / "pseudo.json", rule, masks_dir=tmp_path / "m", progress=False))
    expected = [decide_masks(engine.predict([read_image(r.path)], Want({"probs"}))[0].probs, rule) for r in refs]
    assert summary.kept == sum(d.kept for d in expected) and summary.dropped == sum(not d.kept for d in expected)
    coco = json.loads((tmp_path / "pseudo.json").read_text())
    assert [c["name"] for c in coco["categories"]] == SIGMOID_CLASSES  # no background left out
    kept = [r.image_id for r, d in zip(refs, expected) if d.kept]
    assert [i["file_name"] for i in coco["images"]] == kept
    from pycocotools import mask as mask_utils

    for ann in coco["annotations"]:
        name = coco["images"][ann["image_id"] - 1]["file_name"]
        saved = read_png(tmp_path / "m" / f"{name}.{SIGMOID_CLASSES[ann['category_id']]}.png")
        assert np.array_equal(mask_utils.decode({**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode()}), saved)


@pytest.mark.slow
def test_served_equals_offline_for_mask_tasks(multilabel_built, binary_built, sigmoid_data, tmp_path):
    from pycocotools import mask as mask_utils

    refs = list_images(sigmoid_data["test"].images)[:2]
    for build, task in ((multilabel_built, "multilabel"), (binary_built, "binary")):
        out = tmp_path / task
        predict_to_files(Engine.from_build(build), refs, PredictOptions(None, out, progress=False))
        with running_server(build) as (url, _):
            for ref in refs:
                body = ref.path.read_bytes()
                png = httpx.post(f"{url}/segment?format=png", content=body, headers={"content-type": "image/png"}, timeout=60)
                answer = httpx.post(f"{url}/segment?format=json", content=body, headers={"content-type": "image/png"}, timeout=60).json()
                if task == "multilabel":
                    assert png.headers["content-type"] == "application/zip"
                    archive = zipfile.ZipFile(io.BytesIO(png.content))
                    assert sorted(archive.namelist()) == sorted(f"{c}.png" for c in SIGMOID_CLASSES)
                    for c in SIGMOID_CLASSES:
                        served = np.asarray(Image.open(io.BytesIO(archive.read(f"{c}.png"))))
                        assert np.array_equal(served, read_png(out / f"{ref.image_id}.{c}.png"))
                    offline = {c: read_png(out / f"{ref.image_id}.{c}.png") for c in SIGMOID_CLASSES}
                else:
                    served = np.asarray(Image.open(io.BytesIO(png.content)))
                    assert np.array_equal(served, read_png(out / f"{ref.image_id}.png"))
                    offline = {SIGMOID_CLASSES[0]: read_png(out / f"{ref.image_id}.png")}
                got = {e["class_name"]: mask_utils.decode({**e["rle"], "counts": e["rle"]["counts"].encode()}) for e in answer["classes"]}
                assert set(got) == {c for c, m in offline.items() if m.any()}
                for c, mask in got.items():
                    assert np.array_equal(mask, offline[c])


def test_analyze_searches_vote_and_thresholds_on_mask_tasks(multilabel_built, sigmoid_data, sigmoid_ckpts, tmp_path):
    """Rules scored on the selection images (the plan's own equals evaluate on those images), thresholds from
    the grid per class, the held-out gain per class, and a tuned plan that parses with the choice in it."""
    import yaml
    from conftest import sigmoid_plan

    from segensemble.jobs.analyze.fusion_search import THRESHOLD_GRID
    from segensemble.jobs.analyze.report import AnalyzeOptions, analyze
    from segensemble.plan import parse_plan
    from segensemble.task import VOTES

    engine = Engine.from_build(multilabel_built)
    test = sigmoid_data["test"]
    plan = parse_plan(sigmoid_plan("multilabel", sigmoid_ckpts, thresholds=[0.4, 0.5, 0.6]), sigmoid_data["root"])
    options = AnalyzeOptions(out=tmp_path / "report", holdout=0.5, cache_dtype="float32", progress=False)
    report = analyze(engine, test.coco, test.images, options, plan)
    search = report["fusion_search"]
    assert set(search["rules_on_selection"]) == set(VOTES) and search["metric"] == "dice"
    assert all(t in THRESHOLD_GRID for t in search["chosen"]["thresholds"]) and len(search["chosen"]["thresholds"]) == 3
    assert set(search["holdout"]["gain_per_class"]) == set(SIGMOID_CLASSES)
    refs = list_images(test.images)
    select = sorted(np.random.default_rng(0).permutation(len(refs))[2:].tolist())
    coco = load_coco(test.coco)
    cats = category_map(coco, SIGMOID_CLASSES, "test")
    direct = []
    for i in select:
        gt = class_masks(coco, i + 1, cats, 3)
        pred = engine.predict([read_image(refs[i].path)], Want({MASKS}))[0].masks.astype(bool)
        direct.append([_dice(gt[c], pred[c]) for c in range(3)])
    assert search["rules_on_selection"]["mean"] == pytest.approx(np.mean(direct), abs=1e-3)  # float32 sums: a pixel on a threshold
    tuned = yaml.safe_load((tmp_path / "report" / "plan.tuned.yaml").read_text())
    held = search["holdout"]
    kept = search["plan"] if held["chosen"] < held["plan"] else search["chosen"]  # a choice that loses held out is not kept
    assert search["kept"] == kept
    assert tuned["task"] == "multilabel" and tuned.get("vote", "mean") == kept["vote"]
    assert tuned["thresholds"] == kept["thresholds"]
    parse_plan(tuned, tmp_path)
    assert "Vote rule and thresholds" in (tmp_path / "report" / "index.html").read_text()
