"""Architecture registry: one explicit lookup over smp's architectures, with an error listing valid names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from segensemble.errors import CheckpointError, first_line


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a network before loading weights into it."""

    arch: str
    encoder: str
    classes: int
    in_channels: int = 3
    extra: dict[str, Any] = field(default_factory=dict)  # other smp constructor kwargs (decoder_channels, ...)

    def describe(self) -> str:
        return f"{self.arch}/{self.encoder} ({self.classes} classes, {self.in_channels} in-channels)"


def _architectures() -> dict[str, type]:
    import segmentation_models_pytorch as smp

    return {cls.__name__: cls for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()}


def list_architectures() -> list[str]:
    return sorted(_architectures())


def resolve_arch(name: str) -> str:
    """Canonical smp class name for ``name`` (case-insensitive), or an error listing the valid ones."""
    archs = _architectures()
    by_lower = {k.lower(): k for k in archs}
    if name.lower() not in by_lower:
        raise CheckpointError(f"unknown architecture {name!r}; available: {', '.join(sorted(archs))}")
    return by_lower[name.lower()]


def create_model(spec: ModelSpec):
    """Build the smp model for ``spec`` with random weights (never downloads: encoder_weights=None)."""
    arch = resolve_arch(spec.arch)
    cls = _architectures()[arch]
    try:
        model = cls(
            encoder_name=spec.encoder,
            encoder_weights=None,
            in_channels=spec.in_channels,
            classes=spec.classes,
            **spec.extra,
        )
    except (KeyError, ValueError, TypeError, AttributeError, AssertionError, IndexError, RuntimeError) as exc:  # smp's own checks
        raise CheckpointError(f"cannot build {spec.describe()}: {first_line(exc)}") from None
    return model.eval()
