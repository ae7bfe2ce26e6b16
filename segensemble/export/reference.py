"""The oracle: the ensemble's semantics as a plain loop, to verify ``ensemble.onnx`` against.

View by view, batch 1, float64 numpy, a bilinear resize written out here (independent of cv2 and of ONNX's
Resize), each member file run alone in ONNX Runtime on CPU. Slow on purpose: it is the definition, not a
runtime. ``ensemble build`` checks the graph against it on a few image sizes and the tests do the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segensemble.manifest import Manifest
from segensemble.task import LOG_FLOOR, VOTE_SLACK, Fusion
from segensemble.tiles import importance_map, padding, starts
from segensemble.views import TTA, bilinear


def model_input(image: np.ndarray, member, scale: float = 1.0) -> tuple[np.ndarray, tuple[int, int]]:
    """What a member's model sees of an (H, W, 3) uint8 image at ``scale``: resized (to input_size x scale, or the
    image's own size x scale), normalized, zero-padded bottom/right to the stride; (3, ph, pw) float64 and (h, w)."""
    H, W = image.shape[:2]
    bh, bw = member.input_size or (H, W)
    h, w = max(1, int(np.floor(bh * scale + 0.5))), max(1, int(np.floor(bw * scale + 0.5)))
    x = bilinear(image.astype(np.float64), h, w)
    x = (x / 255.0 - np.array(member.mean)) / np.array(member.std)
    ph, pw = -(-h // member.stride) * member.stride, -(-w // member.stride) * member.stride
    padded = np.zeros((3, ph, pw))
    padded[:, :h, :w] = x.transpose(2, 0, 1)
    return padded, (h, w)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(0))
    return e / e.sum(0)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shift = x - x.max(0)
    return shift - np.log(np.exp(shift).sum(0))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


def view_value(logits: np.ndarray, fusion: Fusion, rule: str | None = None) -> np.ndarray:
    """What one view contributes to the vote (C, h, w): its probabilities, logits, log-probabilities or p^t."""
    rule = rule or fusion.vote
    if rule == "logit-mean":
        return logits
    if rule == "gmean":
        return -np.logaddexp(0.0, -logits) if fusion.sigmoid else _log_softmax(logits)
    p = _sigmoid(logits) if fusion.sigmoid else _softmax(logits)
    return p ** fusion.tsharpen_t if rule == "tsharpen" else p


def finish(f: np.ndarray, fusion: Fusion) -> np.ndarray:
    """A weighted mean of view values back to probabilities (C, H, W)."""
    act = _sigmoid if fusion.sigmoid else _softmax
    if fusion.vote == "logit-mean":
        return act(f)
    if fusion.vote == "gmean":
        return np.exp(f) if fusion.sigmoid else np.exp(f) / np.exp(f).sum(0)
    if fusion.vote == "tsharpen" and not fusion.sigmoid:
        return f / f.sum(0)
    return f


def member_votes(p: np.ndarray, fusion: Fusion) -> np.ndarray:
    """A member's votes (C, H, W) of 0.0/1.0: its argmax label, or P > threshold per class."""
    if fusion.sigmoid:
        return (p > np.asarray(fusion.thresholds)[:, None, None]).astype(np.float64)
    return (p.argmax(0)[None] == np.arange(p.shape[0])[:, None, None]).astype(np.float64)


def fuse(values: list[np.ndarray], members, fusion: Fusion) -> tuple[np.ndarray, list[np.ndarray]]:
    """(ensemble probabilities, each member's) from each member's mean view value, every rule written out."""
    classes = values[0].shape[0]
    raw = np.array([[m.weight * (m.class_weights[c] if m.class_weights else 1.0) for c in range(classes)] for m in members])
    w = raw / raw.sum(0)
    member_probs = [finish(v, fusion) for v in values]
    terms = [member_votes(p, fusion) for p in member_probs] if fusion.vote == "majority" else values
    fused = sum(w[i][:, None, None] * t for i, t in enumerate(terms))
    return (fused if fusion.vote == "majority" else finish(fused, fusion)), member_probs


def decide(probs: np.ndarray, fusion: Fusion) -> np.ndarray:
    """labels (H, W) for multiclass; masks (C, H, W) bool otherwise (the graph's binary ``mask`` is masks[0])."""
    if not fusion.sigmoid:
        return probs.argmax(0)
    if fusion.vote == "majority":
        return probs >= fusion.min_votes - VOTE_SLACK
    return probs > np.asarray(fusion.thresholds)[:, None, None]


def _value(run, x: np.ndarray, t: str, fusion: Fusion, rule: str | None) -> np.ndarray:
    """One TTA view of a model input (3, h, w): augment, run, de-augment, the vote rule's value."""
    logits = TTA[t].deaugment(run(np.ascontiguousarray(TTA[t].augment(x))))
    if fusion.task == "binary" and logits.shape[0] == 2:
        logits = logits[1:] - logits[:1]
    return view_value(logits, fusion, rule)


def tiled_value(image: np.ndarray, member, scale: float, t: str, run, fusion: Fusion, rule: str | None) -> np.ndarray:
    """A tiled member's value at the scaled size (C, h, w): MONAI's sliding window (``tiles.py``) over the
    normalized, scaled image, each tile through TTA view ``t``, tile by tile in a plain loop."""
    H, W = image.shape[:2]
    h, w = max(1, int(np.floor(H * scale + 0.5))), max(1, int(np.floor(W * scale + 0.5)))
    x = (bilinear(image.astype(np.float64), h, w) / 255.0 - np.array(member.mean)) / np.array(member.std)
    (th, tw), opts = member.tiles.size, member.tiles
    (top, bottom), (left, right) = padding(h, th), padding(w, tw)
    x = np.pad(x.transpose(2, 0, 1), ((0, 0), (top, bottom), (left, right)))
    weights = importance_map((th, tw), opts.blend, opts.sigma_scale).astype(np.float64)
    total, count = None, np.zeros(x.shape[1:])
    for r in starts(x.shape[1], th, opts.overlap):
        for c in starts(x.shape[2], tw, opts.overlap):
            q = _value(run, x[:, r:r + th, c:c + tw], t, fusion, rule)
            total = np.zeros((q.shape[0], *x.shape[1:])) if total is None else total
            total[:, r:r + th, c:c + tw] += weights * q
            count[r:r + th, c:c + tw] += weights
    return (total / count)[:, top:top + h, left:left + w]


class Reference:
    """Plain-loop ensemble probabilities of one image; member sessions opened once per file."""

    def __init__(self, build_dir: str | Path):
        self.build_dir = Path(build_dir)
        self._sessions: dict[str, object] = {}

    def _session(self, file: str):
        import onnxruntime as ort

        if file not in self._sessions:
            self._sessions[file] = ort.InferenceSession(str(self.build_dir / file), providers=["CPUExecutionProvider"])
        return self._sessions[file]

    def _runner(self, model, fusion: Fusion):
        """A member model (its ModelEntry) as a function of one (3, h, w) input: (C, h, w) float64 logits at the
        input's size (probabilities turned back into logits, another resolution resized: ``graph_vote.logits_of``)."""
        def run(x: np.ndarray) -> np.ndarray:
            session = self._session(model.file_for(x.shape[1:]))  # a per-size export: the one for this view's size
            name = session.get_inputs()[0].name
            out = session.run(None, {name: x[None].astype(np.float32)})[0][0].astype(np.float64)
            if model.output == "probs":
                log_p = np.log(np.maximum(out, LOG_FLOOR))
                out = log_p - np.log(np.maximum(1.0 - out, LOG_FLOOR)) if fusion.sigmoid else log_p
            if out.shape[1:] != x.shape[1:]:
                out = bilinear(out.transpose(1, 2, 0), *x.shape[1:]).transpose(2, 0, 1)
            return out

        return run

    def views(self, manifest: Manifest, image: np.ndarray, rule: str | None = "mean"):
        """Yield (member index, model index, scale, tta, (C, H, W) float64 view value at the image's size): the
        view's probabilities under the default ``rule`` "mean", the value the plan's vote needs under None."""
        H, W = image.shape[:2]
        fusion = manifest.fusion
        for mi, m in enumerate(manifest.members):
            for k, model in enumerate(m.models):
                run = self._runner(model, fusion)
                for s in m.scales:
                    for t in m.tta:
                        q = tiled_value(image, m, s, t, run, fusion, rule) if m.tiles else None
                        if q is None:
                            padded, (h, w) = model_input(image, m, s)
                            q = _value(run, padded, t, fusion, rule)[:, :h, :w]
                        yield mi, k, s, t, bilinear(q.transpose(1, 2, 0), H, W).transpose(2, 0, 1)

    def predict(self, manifest: Manifest, image: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(ensemble probabilities, {member name: member probabilities}), each (C, H, W) float64."""
        sums: dict[int, np.ndarray] = {}
        for mi, _, _, _, q in self.views(manifest, image, rule=None):
            sums[mi] = sums.get(mi, 0) + q
        values = [sums[i] / m.views for i, m in enumerate(manifest.members)]
        total, members = fuse(values, manifest.members, manifest.fusion)
        return total, {m.name: p for m, p in zip(manifest.members, members)}
