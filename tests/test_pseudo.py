"""Pseudo-labels: the image-level rule at its boundaries, the pixel-level option, COCO round trip, merge."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import CLASSES, read_png

from segensemble.errors import SegEnsembleError
from segensemble.formats.coco import load_coco
from segensemble.formats.images import ImageRef, list_images, read_image
from segensemble.jobs.pseudo_label import PseudoOptions, pseudo_label
from segensemble.jobs.pseudo_rule import PseudoRule, decide
from segensemble.runtime.engine import PROBS, Prediction, Want

F32_08 = np.float32(0.8)
JUST_ABOVE = np.nextafter(F32_08, np.float32(1))


def make_probs(fg_conf: list[float], bg_pixels: int = 6, bg_conf: float = 0.95, classes: int = 3) -> np.ndarray:
    """(C, 1, N): background pixels first, then one foreground pixel (class 1) per confidence given."""
    n = bg_pixels + len(fg_conf)
    probs = np.zeros((classes, 1, n), np.float32)
    for i in range(n):
        conf = np.float32(bg_conf) if i < bg_pixels else np.float32(fg_conf[i - bg_pixels])
        cls = 0 if i < bg_pixels else 1
        probs[:, 0, i] = (1 - conf) / (classes - 1)
        probs[cls, 0, i] = conf
    return probs


CASES = {
    "share equal to max is kept": (make_probs([F32_08] + [0.95] * 9), True, 1, 10),
    "just above the share is dropped": (make_probs([F32_08, 0.7] + [0.95] * 8), False, 2, 10),
    "exactly min-prob counts as uncertain": (make_probs([F32_08, F32_08] + [0.95] * 18), True, 2, 20),
    "a hair above min-prob is certain": (make_probs([JUST_ABOVE] * 5 + [0.95] * 5), True, 0, 10),
    "all uncertain is dropped": (make_probs([0.5] * 4), False, 4, 4),
}


@pytest.mark.parametrize("name", list(CASES))
def test_image_level_rule_boundaries(name):
    probs, kept, uncertain, fg = CASES[name]
    decision, labels = decide(probs, PseudoRule(min_prob=0.8, max_uncertain=0.1))
    assert (decision.kept, decision.uncertain, decision.foreground) == (kept, uncertain, fg)
    np.testing.assert_array_equal(labels, probs.argmax(0))


def test_share_comparison_is_exact_decimal():
    """0.29 * 100 is 28.999999999999996 in floats; 29 uncertain of 100 must still be kept."""
    probs = make_probs([0.5] * 29 + [0.95] * 71)
    assert decide(probs, PseudoRule(max_uncertain=0.29))[0].kept
    assert not decide(probs, PseudoRule(max_uncertain=0.28))[0].kept


def test_background_none_counts_every_pixel_and_empty_images():
    probs = make_probs([0.95] * 2, bg_pixels=8, bg_conf=0.6)  # uncertain background
    assert decide(probs, PseudoRule())[0].kept  # background pixels do not count
    none = decide(probs, PseudoRule(background=None))[0]
    assert (none.foreground, none.uncertain, none.kept) == (10, 8, False)
    empty = make_probs([], bg_pixels=5)
    assert not decide(empty, PseudoRule())[0].kept
    assert decide(empty, PseudoRule(keep_empty=True))[0].kept


def test_pixel_level_option_sets_uncertain_pixels_to_ignore():
    probs = make_probs([F32_08] + [0.95] * 9, bg_pixels=3, bg_conf=0.5)
    decision, labels = decide(probs, PseudoRule(ignore_uncertain=True, ignore_index=255))
    assert decision.kept
    assert labels[0].tolist() == [255, 255, 255, 255] + [1] * 9


@pytest.mark.parametrize("rule,message", [
    (PseudoRule(min_prob=0.0), "min_prob: must be in"), (PseudoRule(min_prob=1.2), "min_prob: must be in"),
    (PseudoRule(max_uncertain=-0.1), "max_uncertain: must be in"), (PseudoRule(max_uncertain=1.5), "max_uncertain"),
    (PseudoRule(background=7), "background 7 is not a class id"), (PseudoRule(ignore_uncertain=True, ignore_index=2), "ignore_index 2"),
])
def test_bad_values_are_clear_errors(rule, message):
    """The library names the rule's field; the pseudo-label command words it as its flag (test below)."""
    with pytest.raises(SegEnsembleError, match=message):
        rule.validate(4)


class _Wrapped:
    """A Runner around the real engine whose stream a test replaces (known outcomes, interruptions)."""

    def __init__(self, engine):
        self.engine = engine

    classes = property(lambda self: self.engine.classes)
    members = property(lambda self: self.engine.members)
    fusion = property(lambda self: self.engine.fusion)

    def describe(self) -> str:
        return "test runner"


def test_job_with_known_probabilities(engine, tmp_path):
    """The whole job (journal, COCO, report) on predictions whose outcome is known in advance."""
    cases = list(CASES.items())
    refs = [ImageRef(f"img_{i}.png", tmp_path / f"img_{i}.png") for i in range(len(cases))]

    class Known(_Wrapped):
        def stream(self, todo, want):
            by_id = {r.image_id: c for r, (_, c) in zip(refs, cases)}
            for ref in todo:
                probs = np.concatenate([by_id[ref.image_id][0], np.zeros((1, *by_id[ref.image_id][0].shape[1:]), np.float32)])
                yield ref, Prediction(probs=probs)

    out = tmp_path / "pseudo.json"
    summary = pseudo_label(Known(engine), refs, PseudoOptions(output=out, report=tmp_path / "r.csv", progress=False))
    want_kept = [c[1] for _, c in cases]
    assert summary.kept == sum(want_kept) and summary.dropped == len(cases) - sum(want_kept)
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [r["decision"] == "kept" for r in rows] == want_kept
    assert [int(r["uncertain_pixels"]) for r in rows] == [c[2] for _, c in cases]
    coco = json.loads(out.read_text())
    assert [i["file_name"] for i in coco["images"]] == [r.image_id for r, k in zip(refs, want_kept) if k]
    assert not out.with_name("pseudo.json.partial.jsonl").exists()


def test_cli_end_to_end_round_trips_through_pycocotools(built, data, engine, tmp_path):
    out = tmp_path / "pseudo.json"
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "pseudo-label", str(data["test"].images), "--build", str(built["dir"]),
                           "-o", str(out), "--min-prob", "0.5", "--max-uncertain", "0.2", "--merge", str(data["train"].coco),
                           "--save-masks", str(tmp_path / "m"), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "kept" in done.stdout and "uncertain share" in done.stdout
    # the reference: the same rule applied to the engine's own probabilities
    refs = list_images(data["test"].images)
    preds = engine.predict([read_image(r.path) for r in refs], Want({PROBS}))
    expected = {r.image_id: decide(p.probs, PseudoRule(0.5, 0.2)) for r, p in zip(refs, preds)}
    rows = list(csv.DictReader(open(tmp_path / "pseudo.report.csv")))
    assert {r["image"]: r["decision"] == "kept" for r in rows} == {k: v[0].kept for k, v in expected.items()}
    coco = load_coco(out)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CLASSES[1:]
    assert 0 < len(coco.imgs) == sum(v[0].kept for v in expected.values()) < len(refs)
    for img in coco.imgs.values():
        painted = np.zeros((img["height"], img["width"]), np.uint8)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            painted[coco.annToMask(ann) > 0] = ann["category_id"]
        np.testing.assert_array_equal(painted, expected[img["file_name"]][1])
        np.testing.assert_array_equal(read_png(tmp_path / "m" / (img["file_name"] + ".png")), expected[img["file_name"]][1])
    merged = json.loads((tmp_path / "pseudo.merged.json").read_text())
    train = json.loads(data["train"].coco.read_text())
    assert len(merged["images"]) == len(train["images"]) + len(coco.imgs)
    assert len({i["id"] for i in merged["images"]}) == len(merged["images"])
    assert len({a["id"] for a in merged["annotations"]}) == len(merged["annotations"])
    image_ids = {i["id"] for i in merged["images"]}
    assert all(a["image_id"] in image_ids for a in merged["annotations"])
    # train.json's names are relative to train/, the pseudo ones to test/: the merged file has one root, the folder
    # holding both, printed at the end, and every image in it opens from there (pixels equal to the originals)
    root = data["root"]
    assert f"the merged file's file_names are relative to {root}" in done.stdout
    names = [i["file_name"] for i in merged["images"]]
    assert names == [f"train/{i['file_name']}" for i in train["images"]] + [f"test/{n}" for n in (i["file_name"] for i in coco.imgs.values())]
    for name in names:
        original = data["train"].images / name[6:] if name.startswith("train/") else data["test"].images / name[5:]
        np.testing.assert_array_equal(read_image(root / name), read_image(original))


def test_merge_onto_the_train_root_and_clear_errors(built, data, tmp_path):
    """Unlabelled images under the train root keep it (names rebased); a root that does not hold the train
    images is refused before any image is predicted, naming the file and the flag."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data["train"].images, root / "train")
    shutil.copytree(data["test"].images, root / "train" / "unlabelled")
    train_json = tmp_path / "annotations.json"  # names relative to data/train: neither its folder nor a folder named after it
    train_json.write_text(data["train"].coco.read_text())
    args = [sys.executable, "-m", "segensemble.cli", "pseudo-label", str(root / "train" / "unlabelled"), "--build", str(built["dir"]),
            "-o", str(tmp_path / "out" / "p.json"), "--min-prob", "0.3", "--max-uncertain", "0.9", "--merge", str(train_json), "--quiet"]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 2 and "annotations.json" in done.stderr and "--merge-root" in done.stderr
    assert not (tmp_path / "out" / "p.json").exists()
    done = subprocess.run([*args, "--merge-root", str(root / "train")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    merged = json.loads((tmp_path / "out" / "p.merged.json").read_text())
    names = [i["file_name"] for i in merged["images"]]
    train = json.loads(train_json.read_text())
    assert names[: len(train["images"])] == [i["file_name"] for i in train["images"]]
    assert len(names) > len(train["images"]) and all(n.startswith("unlabelled/") for n in names[len(train["images"]):])
    assert all((root / "train" / n).is_file() for n in names)


def test_cli_rejects_bad_values_before_loading(built, data):
    done = subprocess.run([sys.executable, "-m", "segensemble.cli", "pseudo-label", str(data["test"].images), "--build", str(built["dir"]),
                           "--min-prob", "1.5"], capture_output=True, text=True)
    assert done.returncode == 2 and "--min-prob must be in (0, 1]" in done.stderr


def test_resume_continues_the_journal(engine, data, tmp_path):
    refs = list_images(data["test"].images)
    full = tmp_path / "full.json"
    pseudo_label(engine, refs, PseudoOptions(output=full, rule=PseudoRule(0.6, 0.5), progress=False))
    out = tmp_path / "p.json"
    calls = []

    class Interrupted(_Wrapped):
        def stream(self, todo, want):
            for i, item in enumerate(engine.stream(todo, want)):
                calls.append(item[0].image_id)
                if i == 3:
                    raise KeyboardInterrupt
                yield item

    with pytest.raises(KeyboardInterrupt):
        pseudo_label(Interrupted(engine), refs, PseudoOptions(output=out, rule=PseudoRule(0.6, 0.5), progress=False))
    assert not out.exists()
    seen = []

    class Counting(_Wrapped):
        def stream(self, todo, want):
            seen.extend(r.image_id for r in todo)
            yield from engine.stream(todo, want)

    pseudo_label(Counting(engine), refs, PseudoOptions(output=out, rule=PseudoRule(0.6, 0.5), resume=True, progress=False))
    assert seen == [r.image_id for r in refs[3:]]
    assert out.read_text() == full.read_text()


def test_pseudo_label_script_names_itself():
    code = "import sys; from segensemble.cli import pseudo_label_main; sys.exit(pseudo_label_main(['--help']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.startswith("usage: pseudo-label ") and "--min-prob" in out and "--max-uncertain" in out
