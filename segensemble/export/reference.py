"""The oracle: the ensemble's semantics as a plain loop, to verify ``ensemble.onnx`` against.

View by view, batch 1, float64 numpy, a bilinear resize written out here (independent of cv2 and of ONNX's
Resize), each member file run alone in ONNX Runtime on CPU. Slow on purpose: it is the definition, not a
runtime. ``ensemble build`` checks the graph against it on a few image sizes and the tests do the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segensemble.manifest import Manifest
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

    def views(self, manifest: Manifest, image: np.ndarray):
        """Yield (member index, model index, scale, tta, (C, H, W) float64 probabilities at the image's size)."""
        H, W = image.shape[:2]
        for mi, m in enumerate(manifest.members):
            for k, model in enumerate(m.models):
                session = self._session(model.file)
                name = session.get_inputs()[0].name
                for s in m.scales:
                    padded, (h, w) = model_input(image, m, s)
                    for t in m.tta:
                        x_t = np.ascontiguousarray(TTA[t].augment(padded))[None].astype(np.float32)
                        logits = TTA[t].deaugment(session.run(None, {name: x_t})[0][0].astype(np.float64))[:, :h, :w]
                        e = np.exp(logits - logits.max(0))
                        p = e / e.sum(0)
                        yield mi, k, s, t, bilinear(p.transpose(1, 2, 0), H, W).transpose(2, 0, 1)

    def predict(self, manifest: Manifest, image: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(ensemble probabilities, {member name: member probabilities}), each (C, H, W) float64."""
        sums: dict[int, np.ndarray] = {}
        for mi, _, _, _, p in self.views(manifest, image):
            sums[mi] = sums.get(mi, 0) + p
        members = {m.name: sums[i] / m.views for i, m in enumerate(manifest.members)}
        weights = [m.weight for m in manifest.members]
        total = sum(w * members[m.name] for w, m in zip(weights, manifest.members)) / sum(weights)
        return total, members
