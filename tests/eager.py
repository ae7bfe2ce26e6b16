"""A member's views computed in PyTorch with the plan's arithmetic: the reference a member's engine output must
equal (resize, normalize, zero-pad to the stride, augment, the model's own forward, softmax, de-augment, crop,
resize back, mean over views). Used by the tests and by bench/smp_survey.py."""

from __future__ import annotations

import numpy as np

from segensemble.views import TTA, bilinear, padded_size, scaled_size


def eager_member(forward, image: np.ndarray, entry) -> np.ndarray:
    """(C, H, W) float64 probabilities of ``entry`` (a MemberEntry) on ``image`` (H, W, 3 uint8); ``forward`` maps
    a (1, 3, h, w) float32 tensor to logits (N, C, h', w'), resized bilinearly to h x w if smaller."""
    import torch
    import torch.nn.functional as F

    h, w = image.shape[:2]
    total = 0
    for s in entry.scales:
        vh, vw = scaled_size(tuple(entry.input_size) if entry.input_size else (h, w), s)
        x = image.astype(np.float64) if (vh, vw) == (h, w) else bilinear(image.astype(np.float64), vh, vw)
        x = (x / 255.0 - np.array(entry.mean)) / np.array(entry.std)
        ph, pw = padded_size((vh, vw), entry.stride)
        x = np.pad(x, ((0, ph - vh), (0, pw - vw), (0, 0))).transpose(2, 0, 1)
        for t in entry.tta:
            view = torch.from_numpy(np.ascontiguousarray(TTA[t].augment(x))[None].astype(np.float32))
            with torch.no_grad():
                logits = forward(view)
                if logits.shape[2:] != view.shape[2:]:
                    logits = F.interpolate(logits, size=view.shape[2:], mode="bilinear", align_corners=False)
                p = logits.double().softmax(1)[0].numpy()
            p = TTA[t].deaugment(p)[:, :vh, :vw]
            total = total + (p if (vh, vw) == (h, w) else bilinear(np.ascontiguousarray(p.transpose(1, 2, 0)), h, w).transpose(2, 0, 1))
    return total / (len(entry.scales) * len(entry.tta))
