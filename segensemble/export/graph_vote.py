"""The vote inside the ensemble graph, as node chains: what each view contributes under the plan's rule,
a member's probabilities, the weighted fusion, and the task's decision outputs (labels, masks or mask).

Every rule is a weighted mean of one quantity per view, then a finishing step (docs/ensemble.md):

| rule | per view q(logits) | finish(F) |
| --- | --- | --- |
| mean, majority | act(x) | F |
| logit-mean | x | act(F) |
| gmean | log act(x) | exp(F), renormalized over classes for multiclass |
| tsharpen | act(x)^t | F, renormalized over classes for multiclass |

act is softmax over classes (multiclass) or a sigmoid per class. A member's Q_m is the mean of q over its
views; the ensemble's F_c = Σ_m W_mc Q_mc with W_mc = w_m cw_mc / Σ_m' w_m' cw_m'c. ``majority`` instead
has each member vote with its probabilities (argmax, or P > threshold) and F_c is the weighted share of
votes. ``reference.py`` computes the same in numpy.
"""

from __future__ import annotations

import numpy as np

from segensemble.export.graph_ops import GraphBuilder
from segensemble.graph_io import LABELS, MASK, MASKS, PROBS, member_output
from segensemble.manifest import MemberEntry
from segensemble.task import LOG_FLOOR, VOTE_SLACK, Fusion


def fusion_weights(members: list[MemberEntry], classes: int) -> np.ndarray:
    """(members, classes) W_mc = w_m cw_mc / Σ_m' w_m' cw_m'c (MONAI MeanEnsemble's normalization)."""
    raw = np.array([[m.weight * (m.class_weights[c] if m.class_weights else 1.0) for c in range(classes)] for m in members])
    return raw / raw.sum(0, keepdims=True)


def logits_of(b: GraphBuilder, x: str, model, fusion: Fusion, source: str) -> str:
    """A model's output (``model``: its ModelEntry) as the task's logits at its input's size (``source``):
    probabilities back to logits (log p; a sigmoid's log p - log(1 - p)), another resolution resized
    bilinearly (logits, before any softmax, as Hugging Face upsamples SegFormer's), a binary task's softmax
    pair as l1 - l0."""
    if model.output == "probs":
        floor = b.f32(LOG_FLOOR)
        log_p = b.op("Log", [b.op("Max", [x, floor])], "log_p")
        x = b.op("Sub", [log_p, b.op("Log", [b.op("Max", [b.op("Sub", [b.f32(1.0), x]), floor])])], "logit") if fusion.sigmoid else log_p
    if model.resize_output:
        x = b.resize(x, b.op("Slice", [b.op("Shape", [source]), b.i64(2), b.i64(4)], "input_hw"))
    if fusion.task == "binary" and model.channels == 2:
        l0, l1 = b.op("Split", [x], "pair", outputs=2, axis=1, num_outputs=2)
        return b.op("Sub", [l1, l0], "binary_logit")
    return x


def activation(b: GraphBuilder, x: str, fusion: Fusion) -> str:
    return b.op("Sigmoid", [x], "sigmoid") if fusion.sigmoid else b.softmax(x)


def view_value(b: GraphBuilder, x: str, fusion: Fusion, rule: str | None = None) -> str:
    """q(logits) of one view under ``rule`` (default: the plan's)."""
    rule = rule or fusion.vote
    if rule == "logit-mean":
        return x
    if rule == "gmean":
        return _log_activation(b, x, fusion)
    if rule == "tsharpen":  # exp(t log p): a fast sigmoid's absolute error near 0 would grow under p^0.5
        return b.op("Exp", [b.op("Mul", [_log_activation(b, x, fusion), b.f32(fusion.tsharpen_t)])], "sharpen")
    return activation(b, x, fusion)


def _log_activation(b: GraphBuilder, x: str, fusion: Fusion) -> str:
    if fusion.sigmoid:  # log σ(x) = -softplus(-x), exact for large |x|
        return b.op("Neg", [b.op("Softplus", [b.op("Neg", [x])], "softplus")], "log_sigmoid")
    return b.log_softmax(x)


def finish(b: GraphBuilder, f: str, fusion: Fusion) -> str:
    """A weighted mean of view values back to probabilities."""
    if fusion.vote == "logit-mean":
        return activation(b, f, fusion)
    if fusion.vote == "gmean":
        return b.op("Exp", [f], "gmean") if fusion.sigmoid else b.softmax(f)  # exp, renormalized = softmax of the mean log
    if fusion.vote == "tsharpen" and not fusion.sigmoid:
        return b.op("Div", [f, b.op("ReduceSum", [f, b.i64(1)], "sum", keepdims=1)], "renorm")
    return f


def vote_outputs(b: GraphBuilder, values: list[str], members: list[MemberEntry], fusion: Fusion, classes: int) -> list[str]:
    """Each member's probabilities, the ensemble's, and the task's decision; ``values`` are the members' Q_m
    at H x W. Returns the output names."""
    weights = fusion_weights(members, classes)
    names, probs, terms = [], [], []
    for value, member, w in zip(values, members, weights):
        p = finish(b, value, fusion)
        b.nodes.append(b.helper.make_node("Identity", [p], [member_output(member.name)], name=f"out/{member.name}"))
        names.append(member_output(member.name))
        probs.append(p)
        term = _vote(b, p, fusion, classes) if fusion.vote == "majority" else value
        scale = b.f32(w[0]) if np.all(w == w[0]) else b.f32(w.reshape(1, classes, 1, 1).astype(np.float32))
        terms.append(b.op("Mul", [term, scale], "weighted"))
    fused = b.total(terms, "vote")
    ensemble = fused if fusion.vote == "majority" else finish(b, fused, fusion)
    b.nodes.append(b.helper.make_node("Identity", [ensemble], [PROBS], name="out/probs"))
    return [*decision_outputs(b, fusion, classes), PROBS, *names]


def _vote(b: GraphBuilder, p: str, fusion: Fusion, classes: int) -> str:
    """A member's vote, 1.0 or 0.0 per class: its argmax (multiclass) or P > threshold."""
    if fusion.sigmoid:
        on = b.op("Greater", [p, _thresholds(b, fusion)], "votes")
    else:
        top = b.op("ArgMax", [p], "member_argmax", axis=1, keepdims=1)
        on = b.op("Equal", [top, b.const(np.arange(classes, dtype=np.int64).reshape(1, classes, 1, 1))], "votes")
    return b.op("Cast", [on], "vote", to=1)


def _thresholds(b: GraphBuilder, fusion: Fusion) -> str:
    t = np.asarray(fusion.thresholds, np.float32)
    return b.f32(t[0]) if np.all(t == t[0]) else b.f32(t.reshape(1, -1, 1, 1))


def decision_outputs(b: GraphBuilder, fusion: Fusion, classes: int) -> list[str]:
    """labels (multiclass), masks (multilabel) or mask (binary), from ``probs``."""
    if not fusion.sigmoid:
        to = 2 if classes <= 256 else 6  # UINT8, INT32
        b.nodes.append(b.helper.make_node("Cast", [b.op("ArgMax", [PROBS], "argmax", axis=1, keepdims=0)], [LABELS], name="out/labels", to=to))
        return [LABELS]
    if fusion.vote == "majority":
        on = b.op("GreaterOrEqual", [PROBS, b.f32(fusion.min_votes - VOTE_SLACK)], "on")
    else:
        on = b.op("Greater", [PROBS, _thresholds(b, fusion)], "on")
    if fusion.task == "binary":
        b.nodes.append(b.helper.make_node("Cast", [b.op("Squeeze", [on, b.i64(1)], "one")], [MASK], name="out/mask", to=2))
        return [MASK]
    b.nodes.append(b.helper.make_node("Cast", [on], [MASKS], name="out/masks", to=2))
    return [MASKS]
