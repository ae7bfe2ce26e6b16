"""The pseudo-label rule, as pure functions on one image's probabilities.

Image-level rule (default): among pixels predicted as non-background, count those whose max probability
is <= min_prob; if that count is more than max_uncertain of the non-background pixels, drop the image,
else keep its whole label map. With no background class every pixel counts. An image with no
non-background pixel is kept (as all background) only with keep_empty. Pixel-level option
(ignore_uncertain): in kept images, pixels whose max probability is <= min_prob become ignore_index.

Multilabel and binary tasks (``decide_masks``), the same rule on overlapping classes: the pixels counted
are those some class claims (its P > 1 - min_prob), and a counted pixel is uncertain when any class's P
lies in (1 - min_prob, min_prob]; a kept image keeps its masks as predicted.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from segensemble.errors import SegEnsembleError


class RuleError(SegEnsembleError):
    """A rule field out of range; ``field`` names it."""

    def __init__(self, field: str, detail: str):
        super().__init__(f"{field} {detail}" if detail[0].isdigit() else f"{field}: {detail}")
        self.field, self.detail = field, detail


@dataclass(frozen=True)
class PseudoRule:
    min_prob: float = 0.8
    max_uncertain: float = 0.1
    background: int | None = 0
    keep_empty: bool = False
    ignore_uncertain: bool = False
    ignore_index: int = 255

    def validate(self, classes: int) -> None:
        """RuleError naming the field at fault (the pseudo-label command words it as its flag)."""
        if not 0 < self.min_prob <= 1:
            raise RuleError("min_prob", f"must be in (0, 1], got {self.min_prob}")
        if not 0 <= self.max_uncertain <= 1:
            raise RuleError("max_uncertain", f"must be in [0, 1], got {self.max_uncertain}")
        if self.background is not None and not 0 <= self.background < classes:
            raise RuleError("background", f"{self.background} is not a class id of this plan (0..{classes - 1}, or none)")
        if self.ignore_uncertain and self.ignore_index < classes:
            raise RuleError("ignore_index", f"{self.ignore_index} collides with a class id (0..{classes - 1})")


@dataclass(frozen=True)
class Decision:
    foreground: int  # pixels the rule looks at (non-background, or all without a background class)
    uncertain: int  # of those, pixels with max probability <= min_prob
    kept: bool
    reason: str

    @property
    def share(self) -> float:
        return self.uncertain / self.foreground if self.foreground else 0.0


def decide(probs: np.ndarray, rule: PseudoRule) -> tuple[Decision, np.ndarray]:
    """Apply the rule to (C, H, W) probabilities; returns the decision and the label map to keep."""
    labels = probs.argmax(0)
    confidence = probs.max(0)
    uncertain_px = confidence <= np.asarray(rule.min_prob, dtype=probs.dtype)  # compared in the probabilities' precision
    counted = labels != rule.background if rule.background is not None else np.ones(labels.shape, bool)
    foreground = int(counted.sum())
    uncertain = int((uncertain_px & counted).sum())
    if foreground == 0:
        decision = Decision(0, 0, rule.keep_empty, "empty (kept: --keep-empty)" if rule.keep_empty else "empty")
    else:
        # exact decimal arithmetic: a share equal to max_uncertain is kept, whatever float rounding says
        kept = uncertain <= Fraction(str(rule.max_uncertain)) * foreground
        decision = Decision(foreground, uncertain, kept, "confident" if kept else "too uncertain")
    out = labels.astype(np.uint8 if probs.shape[0] <= 255 else np.uint16)
    if decision.kept and rule.ignore_uncertain:
        out = out.astype(np.uint16) if rule.ignore_index > 255 else out
        out[uncertain_px] = rule.ignore_index
    return decision, out


def decide_masks(probs: np.ndarray, rule: PseudoRule) -> Decision:
    """The image rule on (C, H, W) sigmoid probabilities (multilabel, binary)."""
    p = probs
    low, high = np.asarray(1 - rule.min_prob, dtype=p.dtype), np.asarray(rule.min_prob, dtype=p.dtype)
    claimed = (p > low).any(0)
    uncertain_px = ((p > low) & (p <= high)).any(0)
    foreground, uncertain = int(claimed.sum()), int((uncertain_px & claimed).sum())
    if foreground == 0:
        return Decision(0, 0, rule.keep_empty, "empty (kept: --keep-empty)" if rule.keep_empty else "empty")
    kept = uncertain <= Fraction(str(rule.max_uncertain)) * foreground
    return Decision(foreground, uncertain, kept, "confident" if kept else "too uncertain")


def share_histogram(shares: list[float], bins: int = 10) -> str:
    """A text histogram of uncertain shares, for the summary on screen."""
    if not shares:
        return "(no images with non-background pixels)"
    counts, edges = np.histogram(shares, bins=bins, range=(0.0, 1.0))
    width = max(counts.max(), 1)
    return "\n".join(f"  {edges[i]:.1f}-{edges[i + 1]:.1f} {'#' * int(40 * c / width):<40} {c}" for i, c in enumerate(counts))
