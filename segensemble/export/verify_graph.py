"""Write a build's ensemble graphs (the whole plan and each profile) and verify each against the oracle.

Verification runs the graph in ONNX Runtime (CPU) and the plain reference loop (``reference.py``) on smooth
random images of several sizes: square, non-square, and sizes that are not multiples of the stride, and a
batch of two (see ``verify``). The graph must match to ``MAX_ABS_PROB`` in every output (ensemble and members), and its decision
(labels, masks or mask) must equal the reference's wherever the reference is more than twice that tolerance from a
tie or a threshold (closer ones may flip legitimately at float32 precision; ``_settled``). An unchanged graph (same cache key) is reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segensemble.errors import ExportError
from segensemble.export.graph import build_graph, external_data
from segensemble.export.reference import Reference, decide
from segensemble.graph_io import GRAPH_FORMAT, INPUT, PROBS, decision_output, member_output, profile_file
from segensemble.manifest import GraphEntry, Manifest, Verification, file_sha256
from segensemble.synthetic.data import smooth_image
from segensemble.task import Fusion

MAX_ABS_PROB = 1e-4


def quiet_options():
    """ONNX Runtime session options that keep its warnings (a tiled graph's optional ``region`` input is one)
    off the user's terminal; errors still raise."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return so


def verification_sizes(manifest: Manifest) -> list[tuple[int, int]]:
    """Square, non-square and odd sizes around twice the largest stride (members without input_size run at them)."""
    s = max(m.stride for m in manifest.members)
    return [(2 * s, 2 * s), (2 * s + 7, 3 * s - 5), (s + 1, 2 * s + 3)]


def write_graphs(manifest: Manifest, build_dir: Path, previous: Manifest | None = None, progress=print) -> dict[str, GraphEntry]:
    """Every graph of the build, verified; reuses a previous build's graph whose cache key and file match."""
    reference = None
    entries = {}
    for profile in [None, *manifest.profiles]:
        key = _cache_key(manifest, profile)
        target = build_dir / profile_file(profile)
        old = (previous.graphs.get(profile or "") if previous else None)
        if old and old.cache_key == key and _intact(old, build_dir):
            entries[profile or ""] = old
            continue
        progress(f"graph: writing {target.name} ({'profile ' + profile if profile else 'the whole plan'}) and verifying it")
        build_graph(manifest, build_dir, target, profile=profile, cache_key=key)
        reference = reference or Reference(build_dir)
        figures = verify(target, manifest.profile(profile), reference, thorough=profile is None)
        data = {name: file_sha256(build_dir / name) for name in external_data(target)}
        entries[profile or ""] = GraphEntry(file=target.name, sha256=file_sha256(target), cache_key=key, verified=figures, data=data)
    return entries


def _intact(entry: GraphEntry, build_dir: Path) -> bool:
    """An earlier build's graph and its weights files are all there, unchanged."""
    from segensemble.errors import SegEnsembleError

    try:
        entry.verify(build_dir)
    except SegEnsembleError:
        return False
    return True


def verify(graph: Path, manifest: Manifest, reference: Reference, thorough: bool = True) -> Verification:
    """The graph vs the oracle; raises ExportError with the figures on disagreement.

    Thorough (the whole plan): a batch of two at a square size (the first image against the reference, the
    second against the graph run on it alone), one non-square odd size, and a third size when some member runs
    at the image's own size (only then does the image size change what the models see). Otherwise (a profile:
    the same builder over a subset of the views) the odd size alone."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), quiet_options(), providers=["CPUExecutionProvider"])
    fusion = manifest.fusion
    decision = decision_output(fusion.task)
    names = [decision, PROBS, *[member_output(m.name) for m in manifest.members]]
    square, odd, small = verification_sizes(manifest)
    sizes = ([square, odd] + ([small] if any(not m.input_size for m in manifest.members) else [])) if thorough else [odd]
    worst, agree, batch_gap = 0.0, 1.0, 0.0
    for i, hw in enumerate(sizes):
        batch = np.stack([smooth_image(hw, 2 * i + j) for j in range(2 if thorough and hw == square else 1)])
        got = dict(zip(names, session.run(names, {INPUT: batch})))
        want, members = reference.predict(manifest, batch[0])
        settled = _settled(want, list(members.values()), fusion)
        diffs = [np.abs(got[PROBS][0] - want)[settled.probs].max(initial=0.0)]
        diffs += [np.abs(got[member_output(k)][0] - v).max() for k, v in members.items()]
        worst = max(worst, float(max(diffs)))
        ours = got[decision][0] if fusion.task != "binary" else got[decision][0][None]
        same = ours == decide(want, fusion)
        agree = min(agree, float(same[settled.decision].mean()) if settled.decision.any() else 1.0)
        if len(batch) > 1:
            alone = session.run([PROBS], {INPUT: batch[1:]})[0]
            batch_gap = float(np.abs(alone[0] - got[PROBS][1]).max())
    figures = Verification(max_abs_prob=worst, labels_agree=agree, sizes=[list(s) for s in sizes], batch=2 if thorough else 1,
                           batch_vs_alone=batch_gap)
    if worst > MAX_ABS_PROB or agree < 1.0 or batch_gap > MAX_ABS_PROB:
        raise ExportError(f"{graph}: the ensemble graph disagrees with the reference loop: max |ΔP| {worst:.2e} "
                          f"(allowed {MAX_ABS_PROB:g}), {decision} agree on {agree:.4%} of clear pixels, batch vs alone "
                          f"{batch_gap:.2e}; sizes {sizes}")
    return figures


@dataclass(frozen=True)
class _Settled:
    probs: np.ndarray  # where the ensemble's probabilities are determined to float precision
    decision: np.ndarray  # where the decision (labels or masks) is


def _settled(want: np.ndarray, members: list[np.ndarray], fusion: Fusion) -> _Settled:
    """Pixels away from a tie or a threshold by more than twice the tolerance: only there must float32 agree
    with float64 on a discrete answer. Under ``majority`` a member's vote that sits on its edge may flip, and
    the vote share with it, so both are compared only where every member's vote is clear."""
    margin = 2 * MAX_ABS_PROB
    thresholds = np.asarray(fusion.thresholds)[:, None, None] if fusion.sigmoid else None

    def clear(p: np.ndarray) -> np.ndarray:  # (C, H, W) for sigmoid tasks, broadcast (1, H, W) for multiclass
        if fusion.sigmoid:
            return np.abs(p - thresholds) > margin
        top2 = np.sort(p, axis=0)[-2:]
        return ((top2[1] - top2[0]) > margin)[None]

    if fusion.vote != "majority":
        return _Settled(np.ones(want.shape, bool), clear(want) if fusion.sigmoid else clear(want)[0])
    votes = np.logical_and.reduce([np.broadcast_to(clear(p), want.shape) for p in members])
    if fusion.sigmoid:
        return _Settled(votes, votes)
    top2 = np.sort(want, axis=0)[-2:]
    return _Settled(votes, votes.all(0) & ((top2[1] - top2[0]) > margin))


def _cache_key(manifest: Manifest, profile: str | None) -> str:
    m = manifest.profile(profile)
    fields = {"format": GRAPH_FORMAT, "classes": m.classes, "profile": profile, "fusion": m.fusion.model_dump(mode="json"),
              "members": [member.model_dump(mode="json") for member in m.members]}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def describe(entries: dict[str, GraphEntry]) -> list[str]:
    """One line per graph: file and verification figures."""
    lines = []
    for name, e in entries.items():
        v = e.verified
        sizes = ", ".join(f"{h}x{w}" for h, w in v.sizes)
        batch = f" and a batch of {v.batch}" if v.batch > 1 else ""
        lines.append(f"{e.file}{' (profile ' + name + ')' if name else ''}: vs reference loop max |ΔP| {v.max_abs_prob:.1e}, "
                     f"labels agree on {v.labels_agree:.2%} of the pixels clear of a tie (top two classes, or P and a "
                     f"threshold, more than {2 * MAX_ABS_PROB:g} apart), at {sizes}{batch}")
    return lines
