"""What kind of segmentation a plan does and how its members are fused: one home for the task, the vote
rule and the thresholds, which the plan validates, the manifest carries, the graph and the reference loop
compute, and the jobs read.

- ``multiclass``: one label per pixel; each member's C logits go through a softmax; ``labels`` = argmax.
- ``multilabel``: C overlapping classes; each logit its own sigmoid; ``masks`` = P > threshold per class.
- ``binary``: one foreground class; one logit and a sigmoid (a 2-class softmax member is read as the
  sigmoid of l1 - l0, which equals its softmax's class 1); ``mask`` = P > threshold.

Vote rules (formulas in docs/ensemble.md): ``mean`` of probabilities, ``logit-mean``, ``gmean`` (geometric),
``tsharpen`` (mean of p^t) and ``majority`` (each member votes; a class is on where the weighted share of
votes reaches ``min_votes``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TaskName = Literal["multiclass", "multilabel", "binary"]
VoteRule = Literal["mean", "logit-mean", "gmean", "tsharpen", "majority"]
TASKS: tuple[str, ...] = TaskName.__args__  # type: ignore[attr-defined]
VOTES: tuple[str, ...] = VoteRule.__args__  # type: ignore[attr-defined]
DEFAULT_THRESHOLD = 0.5
VOTE_SLACK = 1e-6  # a vote share within this of min_votes reaches it (float32 sums of fractions in the graph)
LOG_FLOOR = 1e-12  # gmean: probabilities below this count as this (log 0 is -inf)


class Fusion(BaseModel):
    """The plan's task and vote, as the manifest carries them (thresholds resolved to one per class)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    task: TaskName = "multiclass"
    vote: VoteRule = "mean"
    min_votes: float = Field(0.5, gt=0, le=1)
    tsharpen_t: float = Field(0.5, gt=0, le=16)
    thresholds: list[float] = Field(default_factory=list)  # one per class (sigmoid tasks); empty for multiclass

    @property
    def sigmoid(self) -> bool:
        return self.task != "multiclass"

    def describe(self) -> str:
        text = f"{self.task}, vote {self.vote}"
        if self.vote == "majority":
            text += f" (min_votes {self.min_votes:g})"
        if self.vote == "tsharpen":
            text += f" (t {self.tsharpen_t:g})"
        if self.thresholds:
            same = len(set(self.thresholds)) == 1
            text += f", threshold {self.thresholds[0]:g}" if same else f", thresholds {', '.join(f'{t:g}' for t in self.thresholds)}"
        return text


def member_channels_ok(task: str, channels: int, classes: int) -> bool:
    """Whether a member with ``channels`` output logits fits the task (binary also takes a 2-class softmax)."""
    return channels == classes or (task == "binary" and channels == 2)
