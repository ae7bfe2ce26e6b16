"""Write a build's ensemble graphs (the whole plan and each profile) and verify each against the oracle.

Verification runs the graph in ONNX Runtime (CPU) and the plain reference loop (``reference.py``) on smooth
random images of several sizes: square, non-square, and sizes that are not multiples of the stride, and a
batch of two (see ``verify``). The graph must match to ``MAX_ABS_PROB`` in every output (ensemble and members), and its labels
must equal the reference argmax wherever the reference's top-two margin exceeds twice that tolerance (closer
ties may flip legitimately at float32 precision). An unchanged graph (same cache key) is reused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from segensemble.errors import ExportError
from segensemble.export.graph import build_graph, external_data
from segensemble.export.reference import Reference
from segensemble.graph_io import GRAPH_FORMAT, INPUT, LABELS, PROBS, member_output, profile_file
from segensemble.manifest import GraphEntry, Manifest, Verification, file_sha256
from segensemble.synthetic.data import smooth_image

MAX_ABS_PROB = 1e-4


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

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    names = [LABELS, PROBS, *[member_output(m.name) for m in manifest.members]]
    square, odd, small = verification_sizes(manifest)
    sizes = ([square, odd] + ([small] if any(not m.input_size for m in manifest.members) else [])) if thorough else [odd]
    worst, agree, batch_gap = 0.0, 1.0, 0.0
    for i, hw in enumerate(sizes):
        batch = np.stack([smooth_image(hw, 2 * i + j) for j in range(2 if thorough and hw == square else 1)])
        got = dict(zip(names, session.run(names, {INPUT: batch})))
        want, members = reference.predict(manifest, batch[0])
        diffs = [np.abs(got[PROBS][0] - want).max()] + [np.abs(got[member_output(k)][0] - v).max() for k, v in members.items()]
        worst = max(worst, float(max(diffs)))
        top2 = np.sort(want, axis=0)[-2:]
        clear = (top2[1] - top2[0]) > 2 * MAX_ABS_PROB
        agree = min(agree, float((got[LABELS][0] == want.argmax(0))[clear].mean()) if clear.any() else 1.0)
        if len(batch) > 1:
            alone = session.run([PROBS], {INPUT: batch[1:]})[0]
            batch_gap = float(np.abs(alone[0] - got[PROBS][1]).max())
    figures = Verification(max_abs_prob=worst, labels_agree=agree, sizes=[list(s) for s in sizes], batch=2 if thorough else 1,
                           batch_vs_alone=batch_gap)
    if worst > MAX_ABS_PROB or agree < 1.0 or batch_gap > MAX_ABS_PROB:
        raise ExportError(f"{graph}: the ensemble graph disagrees with the reference loop: max |ΔP| {worst:.2e} "
                          f"(allowed {MAX_ABS_PROB:g}), labels agree on {agree:.4%} of clear pixels, batch vs alone "
                          f"{batch_gap:.2e}; sizes {sizes}")
    return figures


def _cache_key(manifest: Manifest, profile: str | None) -> str:
    m = manifest.profile(profile)
    fields = {"format": GRAPH_FORMAT, "classes": m.classes, "profile": profile,
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
                     f"labels {v.labels_agree:.2%} of clear pixels, at {sizes}{batch}")
    return lines
