"""Tasks and vote rules: multilabel and binary members really trained, every task x rule built into the graph,
verified against the reference loop at build time, and checked here against the rule's formula written out
on the members' own outputs; thresholds and class weights act; plan errors name the field."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SIGMOID_CLASSES, build_plan, sigmoid_plan

from segensemble.errors import PlanError
from segensemble.export.reference import Reference, decide
from segensemble.plan import parse_plan
from segensemble.runtime.engine import MASKS, MEMBERS, PROBS, Engine, Want
from segensemble.synthetic.data import smooth_image

VOTES = ["mean", "logit-mean", "gmean", "tsharpen", "majority"]


def _logit(p):
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def _by_formula(members: dict, weights: np.ndarray, vote: str, thresholds: np.ndarray, t: float = 0.5) -> np.ndarray:
    """The sigmoid-task ensemble from the member outputs, written out: each member output is finish(Q_m)."""
    p = [v.astype(np.float64) for v in members.values()]
    w = weights[:, :, None, None]
    if vote == "logit-mean":  # member output = σ(mean logit): its logit is Q_m
        return 1 / (1 + np.exp(-sum(wi * _logit(pi) for wi, pi in zip(w, p))))
    if vote == "gmean":  # member output = exp(mean log σ): its log is Q_m
        return np.exp(sum(wi * np.log(np.maximum(pi, 1e-30)) for wi, pi in zip(w, p)))
    if vote == "majority":
        return sum(wi * (pi > thresholds[:, None, None]) for wi, pi in zip(w, p))
    return sum(wi * pi for wi, pi in zip(w, p))  # mean, tsharpen (member output = mean of p^t)


@pytest.fixture(scope="module")
def vote_dirs(tmp_path_factory):
    return {task: tmp_path_factory.mktemp(f"votes-{task}") for task in ("multilabel", "binary")}


@pytest.mark.parametrize("task", ["multilabel", "binary"])
@pytest.mark.parametrize("vote", VOTES)
def test_every_task_and_rule_agrees_with_reference_and_formula(task, vote, vote_dirs, sigmoid_ckpts, sigmoid_data):
    thresholds = [0.4, 0.5, 0.6] if task == "multilabel" else [0.45]
    raw = sigmoid_plan(task, sigmoid_ckpts, vote=vote, thresholds=thresholds if task == "multilabel" else 0.45, min_votes=0.6)
    result = build_plan(raw, vote_dirs[task], sigmoid_data["root"])  # exports reused; the graph is rewritten and verified
    verified = result.manifest.graphs[""].verified
    assert verified.max_abs_prob <= 1e-4 and verified.labels_agree == 1.0

    engine = Engine.from_build(vote_dirs[task])
    image = smooth_image((45, 70), 11)
    got = engine.predict([image], Want({MASKS, PROBS, MEMBERS}))[0]
    want, _ = Reference(vote_dirs[task]).predict(engine.manifest, image)
    members = got.members
    weights = np.array([[m.weight * (m.class_weights[c] if m.class_weights else 1) for c in range(len(thresholds))]
                        for m in engine.members])
    weights = weights / weights.sum(0)
    formula = _by_formula(members, weights, vote, np.array(thresholds))
    if vote == "majority":  # a member's vote on its threshold may flip at float32
        settled = np.logical_and.reduce([np.abs(p - np.array(thresholds)[:, None, None]) > 1e-3 for p in members.values()])
    else:  # a float32 probability saturated at 0 or 1 has lost the logit the formula recovers from it
        settled = np.logical_and.reduce([(p > 1e-4) & (p < 1 - 1e-4) for p in members.values()])
    assert np.abs(got.probs - formula)[settled].max() < 1e-4  # float32 member outputs, logits recovered from them
    assert np.abs(got.probs - want)[settled].max() < 1e-5
    assert got.masks.shape == (len(thresholds), 45, 70) and got.masks.dtype == np.uint8
    on = (formula >= 0.6 - 1e-6) if vote == "majority" else formula > np.array(thresholds)[:, None, None]
    clear = settled & ((np.abs(formula - 0.6) > 1e-4) if vote == "majority" else (np.abs(formula - np.array(thresholds)[:, None, None]) > 1e-4))
    assert np.array_equal(got.masks.astype(bool)[clear], on[clear])
    assert np.array_equal(got.masks.astype(bool)[clear], decide(want, engine.fusion)[clear])


def test_binary_graph_outputs_one_channel_and_a_mask(binary_built):
    import onnxruntime as ort

    session = ort.InferenceSession(str(binary_built / "ensemble.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names[:2] == ["mask", "probs"]
    mask, probs = session.run(["mask", "probs"], {"image": smooth_image((40, 52), 3)[None]})
    assert mask.shape == (1, 40, 52) and probs.shape == (1, 1, 40, 52) and mask.dtype == np.uint8
    assert np.array_equal(mask[0].astype(bool), probs[0, 0] > 0.45)


def test_a_softmax_pair_is_read_as_its_class_one(binary_built):
    """The 2-class member's binary probability is softmax(l)[1]: computed here from its own ONNX file."""
    import onnxruntime as ort

    from segensemble.export.reference import model_input

    engine = Engine.from_build(binary_built)
    pair = next(m for m in engine.members if m.name == "pair")
    image = smooth_image((64, 64), 5)
    got = engine.predict([image], Want({MEMBERS}))[0].members["pair"][0]
    session = ort.InferenceSession(str(binary_built / pair.models[0].file), providers=["CPUExecutionProvider"])
    x, _ = model_input(image, pair)
    views = []
    for flip in (False, True):
        xi = x[..., ::-1] if flip else x
        logits = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(xi)[None].astype(np.float32)})[0][0]
        logits = logits[..., ::-1] if flip else logits
        e = np.exp(logits - logits.max(0))
        views.append((e / e.sum(0))[1])
    assert np.abs(got - np.mean(views, 0)).max() < 1e-5


def test_thresholds_and_class_weights_act(multilabel_built):
    engine = Engine.from_build(multilabel_built)
    assert engine.fusion.thresholds == [0.4, 0.5, 0.6]
    got = engine.predict([smooth_image((64, 64), 9)], Want({MASKS, PROBS, MEMBERS}))[0]
    for c, t in enumerate([0.4, 0.5, 0.6]):
        assert np.array_equal(got.masks[c].astype(bool), got.probs[c] > t)
    # class weights [1, 2, 0.5] on unet, weight 2 on fpn, 1 on unet-fixed: class 1 leans on unet, class 2 on the others
    p = got.members
    w = np.array([[1, 2, 0.5], [2, 2, 2], [1, 1, 1]], float)
    w /= w.sum(0)
    for c in range(3):
        want = w[0, c] * p["unet"][c] + w[1, c] * p["fpn"][c] + w[2, c] * p["unet-fixed"][c]
        assert np.abs(got.probs[c] - want).max() < 1e-5
    uniform = (p["unet"] + 2 * p["fpn"] + p["unet-fixed"]) / 4
    assert np.abs(got.probs[1] - uniform[1]).max() > 1e-4  # the class weights changed the answer


def test_classes_overlap_in_the_masks(multilabel_built, sigmoid_data):
    engine = Engine.from_build(multilabel_built)
    from segensemble.formats.images import read_image

    overlaps = 0
    for path in sorted(sigmoid_data["test"].images.glob("*.png")):
        masks = engine.predict([read_image(path)], Want({MASKS}))[0].masks
        overlaps += int((masks.sum(0) > 1).sum())
    assert overlaps > 0  # more than one class on at some pixels: no argmax took it away


@pytest.mark.parametrize("field,value,message", [
    ("task", "regression", "task: Input should be 'multiclass', 'multilabel' or 'binary'"),
    ("thresholds", [0.5, 0.5], "thresholds: 2 given for 3 classes"),
    ("thresholds", 1.5, "thresholds"),
    ("vote", "rms", "vote: Input should be 'mean', 'logit-mean', 'gmean', 'tsharpen' or 'majority'"),
    ("min_votes", 0, "min_votes: must be > 0"),
])
def test_fusion_fields_are_checked(field, value, message, sigmoid_ckpts, tmp_path):
    raw = {**sigmoid_plan("multilabel", sigmoid_ckpts), field: value}
    with pytest.raises(PlanError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_plan(raw, tmp_path)


def test_task_shape_errors_name_what_to_fix(sigmoid_ckpts, tmp_path):
    raw = sigmoid_plan("binary", sigmoid_ckpts)
    with pytest.raises(PlanError, match="a binary task names its one foreground class"):
        parse_plan({**raw, "classes": ["a", "b"]}, tmp_path)
    multi = sigmoid_plan("multilabel", sigmoid_ckpts)
    with pytest.raises(PlanError, match="thresholds: apply to multilabel and binary tasks"):
        parse_plan({**multi, "task": "multiclass", "thresholds": 0.5}, tmp_path)
    members = [dict(m) for m in multi["members"]]
    members[0]["class_weights"] = [1, 1]
    with pytest.raises(PlanError, match=r"members\[0\].class_weights: 2 weights for 3 classes"):
        parse_plan({**multi, "members": members}, tmp_path)
    for m in members:
        m["class_weights"] = [1, 0, 1]
    with pytest.raises(PlanError, match="class 1 'ulna' has class weight 0 in every member"):
        parse_plan({**multi, "members": members}, tmp_path)


def test_a_member_with_the_wrong_channels_is_refused_naming_it(sigmoid_ckpts, sigmoid_data, tmp_path):
    raw = sigmoid_plan("binary", sigmoid_ckpts)
    raw["members"] = [{"name": "three", "checkpoint": str(sigmoid_ckpts["unet"])}]
    with pytest.raises(PlanError, match=r"three.*ml_unet.pth: the model outputs 3 channels; a binary task .* needs 1 logit"):
        build_plan(raw, tmp_path / "out", sigmoid_data["root"])


def test_multilabel_members_see_every_class_name(multilabel_built):
    assert Engine.from_build(multilabel_built).classes == SIGMOID_CLASSES
