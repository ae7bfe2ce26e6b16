"""ensemble analyze: cache scoring equals running the ensemble, selection is sound, pictures are written."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from segensemble.export.graph import build_graph
from segensemble.formats.coco import category_map, coco_images, label_map, load_coco
from segensemble.formats.images import read_image
from segensemble.jobs.analyze.report import AnalyzeOptions, analyze
from segensemble.jobs.analyze.selection import as_member_weights, class_weight_search, greedy_selection, weight_search
from segensemble.jobs.evaluate import EvaluateOptions, evaluate
from segensemble.jobs.metrics import image_miou
from segensemble.manifest import Build, GraphEntry, file_sha256
from segensemble.plan import load_plan
from segensemble.runtime.engine import Engine


@pytest.fixture(scope="module")
def report(engine, built, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    options = AnalyzeOptions(out=out, holdout=0.34, samples=2, cache_dtype="float32", progress=False)
    return analyze(engine, data["test"].coco, data["test"].images, options, load_plan(built["plan"])), out


def test_cache_scores_equal_running_the_ensemble(report, engine, built, data, tmp_path):
    rep, _ = report
    direct = evaluate(engine, data["test"].coco, data["test"].images, EvaluateOptions(progress=False))
    assert rep["full"]["miou"] == pytest.approx(direct["ensemble"]["miou"], abs=1e-9)
    rows = {r["variant"]: r for r in rep["ablation"]}
    for name, figures in direct["members"].items():
        assert rows[f"{name} alone"]["miou"] == pytest.approx(figures["miou"], abs=1e-9)
    # a variant scored from the cache equals an engine that really runs only those views
    no_tta = engine.manifest.model_copy(update={"members": [
        m.model_copy(update={"tta": ["identity" if "identity" in m.tta else m.tta[0]]}) for m in engine.manifest.members]})
    graph = build_graph(no_tta, built["dir"], tmp_path / "no_tta.onnx")
    entry = GraphEntry(file=str(graph), sha256=file_sha256(graph), cache_key="")
    no_tta = no_tta.model_copy(update={"graphs": {"": entry}})
    direct_no_tta = evaluate(Engine(Build(built["dir"], no_tta)), data["test"].coco, data["test"].images, EvaluateOptions(progress=False))
    assert rows["no TTA"]["miou"] == pytest.approx(direct_no_tta["ensemble"]["miou"], abs=1e-9)
    assert rows["no TTA"]["forward_passes"] == sum(len(m.models) * len(m.scales) for m in no_tta.members)


def test_every_axis_is_reported_with_cost(report):
    rep, _ = report
    rows = {r["variant"]: r for r in rep["ablation"]}
    for name in ("no multi-scale", "one fold", "one architecture", "no TTA", "no epoch snapshots", "no SWA"):
        assert rows[name]["miou"] is not None and rows[name]["forward_passes"] < rep["full"]["forward_passes"]
        assert rows[name]["ms_per_image"] > 0
    gains = [r["gain"] for r in rep["ablation"] if r.get("gain") is not None]
    assert gains == sorted(gains, reverse=True)


def test_vote_rules_are_scored_on_selection_and_measured_held_out(report, engine, data):
    """The search's score of the plan's own rule (mean) on the selection images equals the engine run on them."""
    from segensemble.formats.coco import category_map, coco_images, label_map, load_coco
    from segensemble.jobs.metrics import IouMeter
    from segensemble.runtime.engine import LABELS, Want
    from segensemble.task import VOTES

    rep, _ = report
    search = rep["fusion_search"]
    assert set(search["rules_on_selection"]) == set(VOTES) and search["plan"] == {"vote": "mean"}
    assert search["chosen"]["vote"] == max(VOTES, key=lambda r: (search["rules_on_selection"][r], r == "mean"))
    assert set(search["holdout"]["gain_per_class"]) == set(engine.classes)
    coco = load_coco(data["test"].coco)
    refs = coco_images(data["test"].coco, data["test"].images, coco)
    n, held = len(refs), round(0.34 * len(refs))
    select = sorted(np.random.default_rng(0).permutation(n)[held:].tolist())
    meter = IouMeter(len(engine.classes))
    cats = category_map(coco, engine.classes, "test")
    for i in select:
        pred = engine.predict([read_image(refs[i].path)], Want({LABELS}))[0]
        meter.add(label_map(coco, refs[i].coco_id, cats, 0), pred.labels)
    assert search["rules_on_selection"]["mean"] == pytest.approx(meter.summary(engine.classes)["miou"], abs=1e-9)


def test_selection_never_below_best_single_member(report):
    rep, _ = report
    sel = rep["selection"]
    assert sel["greedy"]["miou"] >= sel["best_single_miou_selection"] - 1e-12
    assert sel["chosen"]["miou_selection"] >= sel["plan_weights_miou_selection"] - 1e-12
    assert set(sel["holdout"]) == {"plan_weights", "chosen", "best_single"}


def test_greedy_on_a_known_score():
    """Scores where the best single member is 2 and adding 0 once helps; greedy must find it."""
    def score(w):
        total = sum(w)
        share = [x / total for x in w]
        return 0.6 * share[2] + 0.5 * share[0] + 0.3 * share[1] + (0.2 if 0 < share[0] < share[2] + 1e-9 else 0)

    result = greedy_selection(3, score)
    assert result["miou"] >= score([0, 0, 1]) and result["weights"][2] >= 1
    assert weight_search([1.0, 1.0, 1.0], score)["miou"] >= score([1.0, 1.0, 1.0])


def test_class_weights_let_each_class_follow_the_member_that_knows_it():
    """Two members, two classes; the score credits member 0 on class 0 and member 1 on class 1 (their shares of
    each class's vote, normalized per class as the graph does): no member-level weights reach 2, per-class ones do."""
    def score(table):
        t = np.asarray(table, float)
        share = t / t.sum(0)
        return share[0, 0] + share[1, 1]

    assert weight_search([1.0, 1.0], lambda w: score(np.repeat(np.asarray(w)[:, None], 2, 1)))["miou"] == pytest.approx(1.0)
    result = class_weight_search([1.0, 1.0], score, 2)
    assert result["miou"] == pytest.approx(2.0)
    weights, rows = as_member_weights(result["weights"])
    assert rows[0][1] == 0 and rows[1][0] == 0 and rows[0][0] == rows[1][1] == 1.0  # relative to each member's weight
    assert as_member_weights([[1.0, 1.0], [0.5, 0.5]]) == ([1.0, 0.5], [None, None])  # uniform rows say no class_weights


def test_pictures_html_json_and_tuned_plan(report, engine, data):
    rep, out = report
    pics = rep["pictures"]
    for rel in [*(w["picture"] for w in pics["worst"]), pics["iou_per_class"], pics["confusion"]]:
        path = out / rel
        assert path.is_file() and path.stat().st_size > 2000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the grids are the worst images, worst first: per-image mIoU of the ensemble really run, image by image
    coco = load_coco(data["test"].coco)
    cats = category_map(coco, engine.classes, "test")
    refs = coco_images(data["test"].coco, data["test"].images)
    preds = engine.predict([read_image(r.path) for r in refs])
    scores = {r.image_id: image_miou(label_map(coco, r.coco_id, cats, 0), p.labels, len(engine.classes)) for r, p in zip(refs, preds)}
    worst = sorted(scores, key=lambda k: (scores[k], k))[:2]
    assert [w["image"] for w in pics["worst"]] == worst
    assert [w["miou"] for w in pics["worst"]] == pytest.approx([scores[k] for k in worst], abs=1e-6)
    page = (out / "index.html").read_text()
    assert "no TTA" in page and pics["confusion"] in page and "lowest per-image mIoU" in page
    gains = [r["gain"] for r in rep["ablation"] if r.get("gain") is not None]
    assert any(f"{g:+.4f}" in page for g in gains if g > 0)  # gains keep their sign
    assert not (out / "cache").exists() and rep["cache"]["bytes"] > 0 and not rep["cache"]["kept"]
    saved = json.loads((out / "report.json").read_text())
    assert saved["full"]["miou"] == rep["full"]["miou"] and len(saved["confusion"]) == len(rep["classes"])
    tuned = load_plan(out / "plan.tuned.yaml")
    chosen = [w for w in rep["selection"]["chosen"]["weights"] if w > 0]
    assert [m.weight for m in tuned.members] == chosen


def test_picture_legends_and_undefined_classes():
    """The grid names every class colour and the TP/FP/FN coding; bars mark a class with no IoU n/a (not 0),
    leave room above 1.0 and keep the legend off the bars; the heat map marks a class absent from the truth."""
    from segensemble.jobs.analyze.pictures import bars_figure, confusion_figure, grid_figure

    names = ["Background", "General trash", "Paper", "Metal"]
    gt = np.zeros((16, 16), np.uint8)
    gt[2:8, 2:8], gt[10:14, 10:14], gt[0, :] = 2, 3, 255
    pred = gt.copy()
    pred[0, :] = 0
    pred[10:14, 10:12] = 0
    fig = grid_figure("t", np.zeros((16, 16, 3), np.uint8), gt, pred, names)
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert {"Background", "Paper", "Metal", "ignored"} <= set(legend) and "General trash" not in legend
    assert any("TP" in t for t in legend) and any("FP" in t for t in legend) and any("FN" in t for t in legend)
    fig = bars_figure(names, {"ensemble": {"Background": 1.0, "General trash": None, "Paper": 0.9, "Metal": 0.5},
                              "best": {"Background": 0.99, "General trash": None, "Paper": 0.8, "Metal": 0.0}})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts].count("n/a") == 2
    assert sorted(round(p.get_height(), 2) for p in ax.patches) == [0.0, 0.5, 0.8, 0.9, 0.99, 1.0]  # a real 0 is still a bar
    assert ax.get_ylim()[1] > 1.0
    fig.canvas.draw()
    legend_box, axes_box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend_box.y0 >= axes_box.y1 - 1  # above the plot, over no bar
    cm = np.array([[50, 0, 0, 0], [0, 0, 0, 0], [1, 0, 9, 0], [0, 0, 0, 4]])
    texts = [t.get_text() for t in confusion_figure(names, cm).axes[0].texts]
    assert texts[4:8] == ["n/a"] * 4 and texts[8] == "0.10"


def test_cli_analyze(built, data, tmp_path):
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "analyze", str(built["plan"]), "--build", str(built["dir"]),
                           "--coco", str(data["test"].coco), "--images", str(data["test"].images), "-o", str(tmp_path / "r"),
                           "--samples", "1", "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "full ensemble mIoU" in done.stdout and "no multi-scale" in done.stdout and (tmp_path / "r" / "index.html").is_file()


def test_sample_and_disk_check(engine, data, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from segensemble.errors import SegEnsembleError

    small = analyze(engine, data["test"].coco, data["test"].images,
                    AnalyzeOptions(out=tmp_path / "a", samples=1, max_images=3, progress=False))
    assert small["images"] == 3
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(SegEnsembleError, match="GiB but only .* free.*--max-images"):
        analyze(engine, data["test"].coco, data["test"].images, AnalyzeOptions(out=tmp_path / "b", progress=False))
    assert not (tmp_path / "b" / "cache").exists()  # a failed run leaves no cache behind
