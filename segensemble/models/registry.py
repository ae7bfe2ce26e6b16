"""Architecture registry: one explicit lookup over smp's architectures and torchvision's segmentation builders,
with an error listing valid names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from segensemble.errors import CheckpointError, first_line
from segensemble.names import did_you_mean

FRAMEWORKS = ("smp", "torchvision", "transformers", "factory")
# torchvision.models.segmentation's builders: the backbone is part of the name; output "out" is full-size logits
TORCHVISION_ARCHS = ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large",
                     "lraspp_mobilenet_v3_large")


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a network before loading weights into it."""

    arch: str
    encoder: str
    classes: int
    in_channels: int = 3
    extra: dict[str, Any] = field(default_factory=dict)  # other constructor kwargs (smp: decoder_channels, ...; torchvision: aux_loss)
    framework: str = "smp"

    def describe(self) -> str:
        if self.framework in ("torchvision", "transformers", "factory"):
            return f"{self.framework} {self.arch} ({self.classes} classes)"
        return f"{self.arch}/{self.encoder} ({self.classes} classes, {self.in_channels} in-channels)"


def _architectures() -> dict[str, type]:
    import segmentation_models_pytorch as smp

    return {cls.__name__: cls for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()}


def list_architectures() -> list[str]:
    return sorted(_architectures())


def resolve_arch(name: str, framework: str = "smp") -> str:
    """Canonical architecture name for ``name`` (case-insensitive), or an error listing the valid ones."""
    if framework in ("transformers", "factory"):
        return name  # the class a save_pretrained folder names; a factory's "module:function"
    if framework == "torchvision":
        if name.lower() not in TORCHVISION_ARCHS:
            raise CheckpointError(f"unknown torchvision segmentation model {name!r}; available: {', '.join(TORCHVISION_ARCHS)}")
        return name.lower()
    archs = _architectures()
    by_lower = {k.lower(): k for k in archs}
    if name.lower() not in by_lower:
        raise CheckpointError(f"unknown architecture {name!r}{did_you_mean(name, sorted(archs))}; available: {', '.join(sorted(archs))}")
    return by_lower[name.lower()]


def create_model(spec: ModelSpec):
    """Build the model for ``spec`` with random weights (never downloads: encoder_weights=None, weights=None)."""
    if spec.framework == "torchvision":
        return _torchvision_model(spec)
    if spec.framework == "factory":
        return _factory_model(spec)
    if spec.framework == "transformers":
        raise CheckpointError(f"{spec.describe()}: a Hugging Face member loads its save_pretrained folder (no random build)")
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
        raise CheckpointError(f"cannot build {spec.describe()}: {_encoder_hint(spec.encoder) or first_line(exc)}") from None
    return model.eval()


def _torchvision_model(spec: ModelSpec):
    """A torchvision segmentation model whose forward returns its ``out`` head (``aux`` ignored); its state_dict
    keys are torchvision's own, so checkpoints saved from the plain model load as they are."""
    from torchvision.models import segmentation

    net = getattr(segmentation, resolve_arch(spec.arch, "torchvision"))(
        weights=None, weights_backbone=None, num_classes=spec.classes, aux_loss=bool(spec.extra.get("aux_loss", False)))
    return tensor_out(net)


def hf_logits_module(net):
    """A ``*ForSemanticSegmentation`` model as a module of pixel values returning its logits (often at 1/4 of
    the input's size: the ensemble graph resizes them to the view, as Hugging Face's post-processing does)."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(pixel_values=x).logits

    return Logits(net).eval()


def _factory_model(spec: ModelSpec):
    """A team's own model: ``module:function`` imported (from ``code_path`` when given) and called with the
    plan's factory_kwargs. The plan refuses this without ``trust_code: true``: importing code runs it."""
    import importlib
    import sys

    module_name, function = spec.arch.split(":")
    path = spec.extra.get("code_path")
    if path and path not in sys.path:
        sys.path.insert(0, path)
    try:
        factory = getattr(importlib.import_module(module_name), function)
        model = factory(**spec.extra.get("factory_kwargs", {}))
    except Exception as exc:  # the team's own code: any error, named with the factory
        raise CheckpointError(f"factory {spec.arch} (from {path or 'the Python path'}): {type(exc).__name__}: {first_line(exc)}") from None
    return tensor_out(model)


def tensor_out(net):
    """``net`` as a module returning one logits tensor (torchvision's dict, a team's model's output object)."""
    return _tensor_out_class()(net).eval()


def _tensor_out_class():
    import torch

    class TensorOut(torch.nn.Module):
        """The model's output as one logits tensor: a dict's "out", an object's .logits, or the tensor itself; the
        state_dict's keys are the model's own."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            y = self.net(x)
            if isinstance(y, dict):
                y = y["out"]
            return getattr(y, "logits", y)

        def state_dict(self, *args, **kwargs):
            return self.net.state_dict(*args, **kwargs)

        def load_state_dict(self, state, strict: bool = True, assign: bool = False):
            return self.net.load_state_dict(state, strict=strict, assign=assign)

    return TensorOut


def _encoder_hint(encoder: str) -> str | None:
    """For an encoder smp does not know: the nearest names by edit distance, not smp's list of hundreds."""
    import segmentation_models_pytorch as smp

    names = list(smp.encoders.get_encoder_names())
    if encoder in names or encoder.startswith("tu-"):
        return None
    return (f"unknown encoder {encoder!r}{did_you_mean(encoder, names)} (smp has {len(names)}; timm's as tu-<name>; list them with "
            "python -c \"import segmentation_models_pytorch as smp; print(smp.encoders.get_encoder_names())\")")
