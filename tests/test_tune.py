"""``ensemble tune``: nothing is kept on pure noise, the right min_area on a planted small-blob error, the
held-out interval decides; and the command writes a plan that builds and a report."""

from __future__ import annotations

import numpy as np

from segensemble.jobs.tune import Sample, bootstrap, spec_of, tune

CLASSES = ["background", "car", "tree"]


def _planted(seed: int, h: int = 64, w: int = 64) -> Sample:
    """Truth: large car and tree regions; prediction: the truth plus small false 'tree' blobs (3x3) whose
    second most probable class is the truth's."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((h, w), np.uint8)
    r, c = rng.integers(0, h - 24, 2)
    truth[r:r + 24, c:c + 20] = 1
    r, c = rng.integers(0, h - 22, 2)
    truth[r:r + 22, c:c + 22] = 2
    pred = truth.copy()
    for _ in range(6):
        r, c = rng.integers(0, h - 3, 2)
        if (truth[r:r + 3, c:c + 3] != 2).all():
            pred[r:r + 3, c:c + 3] = 2
    probs = np.full((3, h, w), 0.1)
    rows, cols = np.indices((h, w))
    probs[truth, rows, cols] = 0.5
    probs[pred, rows, cols] = 0.8
    return Sample(str(seed), probs / probs.sum(0), pred, truth)


def test_tune_finds_the_min_area_that_removes_planted_blobs():
    samples = [_planted(s) for s in range(16)]
    result = tune(samples, CLASSES, "multiclass", holdout=0.5, seed=0)
    tree = [ch for ch in result.changes if ch.cls == "tree" and ch.step == "min_area"]
    assert tree and tree[0].kept, result.changes
    assert 16 <= tree[0].value <= 256  # above the 9 px blobs, below the 484 px trees
    assert result.steps.min_area[2] == tree[0].value
    assert result.heldout_gain > 0 and result.interval[0] > 0
    assert spec_of(result.steps, CLASSES)["min_area"]["tree"] == tree[0].value


def test_tune_keeps_nothing_on_pure_noise():
    rng = np.random.default_rng(3)
    samples = []
    for i in range(16):
        probs = rng.dirichlet(np.ones(3), (48, 48)).transpose(2, 0, 1)
        samples.append(Sample(str(i), probs, probs.argmax(0).astype(np.uint8), rng.integers(0, 3, (48, 48)).astype(np.uint8)))
    result = tune(samples, CLASSES, "multiclass", holdout=0.5, seed=0)
    assert not result.steps.active, [(c.cls, c.step, c.value, c.interval) for c in result.changes]


def test_bootstrap_interval_covers_a_shared_small_gain_and_not_a_lucky_one():
    shared = np.full(20, 0.002) + np.random.default_rng(0).normal(0, 0.0005, 20)
    assert bootstrap(shared)[0] > 0
    lucky = np.zeros(20)
    lucky[0] = 0.5
    assert bootstrap(lucky)[0] <= 0


def test_tune_command_writes_a_plan_that_builds_and_a_report(built, data, tmp_path):
    import json

    from conftest import cli

    from segensemble.plan import load_plan

    out = tmp_path / "tuned"
    test = data["test"]
    result = cli("tune", built["plan"], "--build", built["dir"], "--coco", test.coco, "--images", test.images, "-o", out, "--quiet")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "tune.json").read_text())
    assert summary["selection_images"] + summary["heldout_images"] == 6
    assert "| class | step |" in (out / "tune.md").read_text()
    tuned = load_plan(out / "plan.tuned.yaml")
    assert [m.name for m in tuned.members] == [m.name for m in load_plan(built["plan"]).members]
    chosen = summary["chosen"]
    assert (tuned.post is None) == (not chosen)
    for change in summary["changes"]:
        assert change["kept"] == (change["interval"][0] > 0)
