"""The engine against a plain reference of the soft-voting semantics: loops, batch 1, numpy bilinear."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort

from segensemble.images import read_image


def ref_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize of (H, W, C), edges clamped: written out, independent of cv2."""
    h, w = x.shape[:2]

    def axis(n_out, n_in):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = np.where(lo >= n_in - 1, 0.0, src - lo)
        return lo, hi, frac

    y0, y1, fy = axis(out_h, h)
    x0, x1, fx = axis(out_w, w)
    x = x.astype(np.float64)
    top = x[y0][:, x0] * (1 - fx)[None, :, None] + x[y0][:, x1] * fx[None, :, None]
    bottom = x[y1][:, x0] * (1 - fx)[None, :, None] + x[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


TTA = {
    "identity": (lambda a: a, lambda a: a),
    "hflip": (lambda a: a[:, :, ::-1], lambda a: a[:, :, ::-1]),
    "vflip": (lambda a: a[:, ::-1, :], lambda a: a[:, ::-1, :]),
    "rot90": (lambda a: np.rot90(a, 1, (1, 2)), lambda a: np.rot90(a, -1, (1, 2))),
    "rot270": (lambda a: np.rot90(a, -1, (1, 2)), lambda a: np.rot90(a, 1, (1, 2))),
    "transpose": (lambda a: a.transpose(0, 2, 1), lambda a: a.transpose(0, 2, 1)),
}


def reference_probs(manifest: dict, build_dir, image: np.ndarray) -> np.ndarray:
    H, W = image.shape[:2]
    total, weights = 0.0, 0.0
    for m in manifest["members"]:
        views = []
        for model in m["models"]:
            sess = ort.InferenceSession(str(build_dir / model["file"]), providers=["CPUExecutionProvider"])
            for s in m["scales"]:
                bh, bw = m["input_size"] or (H, W)
                h, w = int(np.floor(bh * s + 0.5)), int(np.floor(bw * s + 0.5))
                x = ref_bilinear(image.astype(np.float64), h, w)
                x = (x / 255.0 - np.array(m["mean"])) / np.array(m["std"])
                st = m["stride"]
                ph, pw = -(-h // st) * st, -(-w // st) * st
                padded = np.zeros((3, ph, pw))
                padded[:, :h, :w] = x.transpose(2, 0, 1)
                for t in m["tta"]:
                    aug, deaug = TTA[t]
                    logits = sess.run(None, {"image": np.ascontiguousarray(aug(padded))[None].astype(np.float32)})[0][0]
                    logits = deaug(logits.astype(np.float64))[:, :h, :w]
                    e = np.exp(logits - logits.max(0))
                    p = e / e.sum(0)
                    views.append(ref_bilinear(p.transpose(1, 2, 0), H, W).transpose(2, 0, 1))
        total = total + m["weight"] * np.mean(views, axis=0)
        weights += m["weight"]
    return total / weights


def test_engine_matches_reference(built, engine, data):
    manifest = json.loads((built["dir"] / "manifest.json").read_text())
    assert {m["axis"] for m in manifest["members"]} == {"checkpoint", "folds", "epochs", "swa"}
    refs = [data["test"].images / f"test_{i:04d}.png" for i in range(3)]
    images = [read_image(p) for p in refs]
    images.append(np.ascontiguousarray(images[0][:50, :70]))  # an odd size: padding and rounding
    got = engine.predict(images)
    for img, pred in zip(images, got):
        want = reference_probs(manifest, built["dir"], img)
        assert pred.probs.shape == want.shape
        assert np.abs(pred.probs - want).max() <= 1e-4
        assert (pred.labels == want.argmax(0)).mean() >= 0.999
        np.testing.assert_allclose(pred.probs.sum(0), 1.0, atol=1e-4)


def test_per_member_probabilities_recombine(engine, data):
    image = read_image(data["test"].images / "test_0001.png")
    pred = engine.predict([image], per_member=True)[0]
    weights = {m.entry.name: m.entry.weight for m in engine.members}
    combined = sum(weights[n] * p for n, p in pred.members.items()) / sum(weights.values())
    assert np.abs(combined - pred.probs).max() <= 1e-5


def test_batching_does_not_change_results(engine, data):
    images = [read_image(data["test"].images / f"test_{i:04d}.png") for i in range(4)]
    together = engine.predict(images)
    alone = [engine.predict([img])[0] for img in images]
    for a, b in zip(together, alone):
        assert np.abs(a.probs - b.probs).max() <= 1e-5


def test_engine_ensemble_beats_chance(engine, data):
    """The tiny models really learned something: ensemble pixel accuracy well above the background share."""
    images = [read_image(data["test"].images / f"test_{i:04d}.png") for i in range(6)]
    labels = np.stack([p.labels for p in engine.predict(images)])
    gt = np.stack(data["test"].masks)
    assert (labels == gt).mean() > max(0.8, (gt == 0).mean() + 0.05)


def test_profile_is_the_reference_over_its_views(built, engine, data):
    manifest = json.loads((built["dir"] / "manifest.json").read_text())
    fast = engine.with_profile("fast")
    assert fast.forward_passes == 2 and [m.entry.name for m in fast.members] == ["unet-ms", "fpn"]
    assert fast.members[0].sessions[0] is engine.members[0].sessions[0]  # sessions are shared, not reopened
    kept = [dict(m, tta=["identity"], scales=[1.0]) for m in manifest["members"] if m["name"] in ("unet-ms", "fpn")]
    image = read_image(data["test"].images / "test_0002.png")
    want = reference_probs({"members": kept}, built["dir"], image)
    assert np.abs(fast.predict([image])[0].probs - want).max() <= 1e-4
