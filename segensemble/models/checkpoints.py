"""Checkpoint loading in the forms people actually save, safely.

Supported: a plain state_dict; a dict holding it under ``state_dict``/``model_state_dict``/``model`` (with
epoch, optimizer... beside it); keys prefixed ``module.`` (DataParallel) or ``model.`` (Lightning); an smp
``save_pretrained`` directory (config.json + weights, carries its own spec); and a whole pickled
``nn.Module``, only with ``trust_pickle=True`` because unpickling runs arbitrary code. Everything else is
read with ``weights_only=True``. Keys and shapes are checked before loading, so a mismatch is an error
naming the file and a few offending keys, never a half-loaded model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from segensemble.errors import CheckpointError, first_line
from segensemble.files import open_regular
from segensemble.manifest import file_sha256
from segensemble.models.registry import TORCHVISION_ARCHS, ModelSpec, create_model, hf_logits_module, resolve_arch, tensor_out
from segensemble.plan import MAX_CLASSES, check_model_kwargs

_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
_PREFIXES = ("module.", "model.")
_SMP_CONFIG_SKIP = {"_model_class", "encoder_name", "encoder_weights", "classes", "in_channels", "activation"}
_SHOWN = 5


@dataclass
class LoadedModel:
    model: Any  # torch.nn.Module in eval mode
    spec: ModelSpec
    source: Path
    sha256: str
    form: str  # "state_dict", "nested:<key>", "smp_dir", "pickled_module"


@dataclass(frozen=True)
class PartialSpec:
    """A caller's spec where any field may be unknown (taken from the checkpoint instead)."""

    arch: str | None = None
    encoder: str | None = None
    classes: int | None = None
    in_channels: int | None = None
    extra: dict | None = None  # smp constructor kwargs beyond the four above
    framework: str = "smp"


def load_checkpoint(path: str | Path, spec: PartialSpec | ModelSpec | None = None, *, trust_pickle: bool = False) -> LoadedModel:
    """Load ``path`` into a fresh smp model matching ``spec`` (fields left None come from the checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or directory")
    spec = _as_partial(spec)
    if spec.framework == "transformers":
        return _load_hf_dir(path, spec)
    if path.is_dir():
        return _load_smp_dir(path, spec)
    open_regular(path, fail=lambda reason: CheckpointError(f"{path}: {reason}")).close()  # torch.load would hang on a FIFO
    return _load_file(path, spec, trust_pickle)


def _as_partial(spec: PartialSpec | ModelSpec | None) -> PartialSpec:
    if spec is None:
        return PartialSpec()
    if isinstance(spec, ModelSpec):
        return PartialSpec(spec.arch, spec.encoder, spec.classes, spec.in_channels, framework=spec.framework)
    return spec


def _load_hf_dir(path: Path, want: PartialSpec) -> LoadedModel:
    """A Hugging Face ``save_pretrained`` folder of a ``*ForSemanticSegmentation`` model: safetensors weights
    only, never a download (local_files_only), never the folder's own code (trust_remote_code off)."""
    if not path.is_dir() or not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: a transformers member is a save_pretrained folder with config.json")
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{path}: no model.safetensors; save with save_pretrained(..., safe_serialization=True) "
                              "(pickled pytorch_model.bin files are not loaded)")
    try:
        from transformers import AutoConfig, AutoModelForSemanticSegmentation
    except ImportError as exc:
        from segensemble.extras import missing_extra

        raise missing_extra(exc, f"{path}: a transformers member") or exc from None
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        net = AutoModelForSemanticSegmentation.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                                               trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: transformers cannot load this folder as a semantic-segmentation model ({first_line(exc)})") from None
    classes = int(config.num_labels)
    if want.classes and want.classes != classes:
        raise CheckpointError(f"{path}: config.json has {classes} labels ({', '.join(map(str, config.id2label.values()))}); "
                              f"the plan has {want.classes} classes")
    spec = ModelSpec(type(net).__name__, "", classes, 3, {}, "transformers")
    return LoadedModel(hf_logits_module(net), spec, path, file_sha256(path), "hf_dir")


def _load_smp_dir(path: Path, want: PartialSpec) -> LoadedModel:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: a checkpoint directory must be an smp save_pretrained folder with config.json")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{config_file}: not valid JSON ({first_line(exc)})") from exc
    carried = _carried_spec(config, config_file)
    _check_agrees(path, want, carried)
    state = _read_dir_weights(path)
    return _build_and_load(path, carried, state, "smp_dir")


def _carried_spec(config, config_file: Path) -> ModelSpec:
    """The model an smp config.json describes; odd types or sizes are one-line errors naming the file."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object (smp's save_pretrained config)")
    extra = {k: v for k, v in config.items() if k not in _SMP_CONFIG_SKIP and v is not None}
    try:
        arch, encoder = config.get("_model_class", ""), config.get("encoder_name", "")
        classes, in_channels = config.get("classes", 1), config.get("in_channels", 3)
        if not (isinstance(arch, str) and isinstance(encoder, str)):
            raise ValueError("_model_class and encoder_name must be strings")
        for name, value in (("classes", classes), ("in_channels", in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CLASSES:
                raise ValueError(f"{name} must be an integer in 1..{MAX_CLASSES} (got {value!r})")
        check_model_kwargs(extra)
    except ValueError as exc:
        raise CheckpointError(f"{config_file}: {exc}") from None
    return ModelSpec(arch=arch, encoder=encoder, classes=classes, in_channels=in_channels, extra=extra)


def _read_dir_weights(path: Path) -> dict:
    """The weights file of an smp folder; a corrupt or pickled one is a one-line error (never unpickled)."""
    import torch

    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(path / "model.safetensors"))
        except Exception as exc:  # SafetensorError, OSError: a damaged or foreign file
            raise CheckpointError(f"{path / 'model.safetensors'}: not a readable safetensors file ({first_line(exc)})") from None
    for name in ("pytorch_model.bin", "model.pth", "model.pt"):
        if (path / name).is_file():
            try:
                state = torch.load(path / name, map_location="cpu", weights_only=True)
            except Exception as exc:  # UnpicklingError (pickled objects, refused), RuntimeError (not a torch file)
                what = "holds pickled Python objects, refused (weights only)" if _looks_like_pickled_object(exc) else "not a readable PyTorch file"
                raise CheckpointError(f"{path / name}: {what} ({first_line(exc)})") from None
            if not isinstance(state, dict):
                raise CheckpointError(f"{path / name}: expected a state dict of tensors, found {type(state).__name__}")
            return state
    raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin beside config.json")


def _check_agrees(path: Path, want: PartialSpec, carried: ModelSpec) -> None:
    """A spec given by the caller must match what the checkpoint carries."""
    problems = []
    if want.arch and resolve_arch(want.arch) != resolve_arch(carried.arch):
        problems.append(f"arch {carried.arch} (asked for {want.arch})")
    if want.encoder and want.encoder != carried.encoder:
        problems.append(f"encoder {carried.encoder} (asked for {want.encoder})")
    if want.classes and want.classes != carried.classes:
        problems.append(f"{carried.classes} classes (asked for {want.classes})")
    if want.in_channels and want.in_channels != carried.in_channels:
        problems.append(f"{carried.in_channels} input channels (asked for {want.in_channels})")
    if problems:
        raise CheckpointError(f"{path}: checkpoint holds " + "; ".join(problems))


def _load_file(path: Path, want: PartialSpec, trust_pickle: bool) -> LoadedModel:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for whole modules, RuntimeError for non-torch files
        if not _looks_like_pickled_object(exc):
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first_line(exc)})") from exc
        if not trust_pickle:
            raise CheckpointError(
                f"{path}: holds pickled Python objects (probably a whole model saved with torch.save(model)); "
                "unpickling runs code from the file, so it is refused by default. If you trust this file, "
                "pass --trust-pickle (trust_pickle: true in plan.yaml)."
            ) from exc
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, torch.nn.Module):
        return _from_module(path, obj, want)
    state, form, carried = _find_state_dict(path, obj)
    spec = _complete_spec(path, want, carried, state)
    return _build_and_load(path, spec, state, form)


def _looks_like_pickled_object(exc: Exception) -> bool:
    """torch's weights-only unpickler names the first class it refuses ("Unsupported global"); garbage and
    truncated files fail differently ("Unsupported operand", "invalid load key") and are not pickled objects."""
    return "Unsupported global" in str(exc)



def _smp_encoder(model) -> str | None:
    """An smp model's encoder from the name smp gives it ("fpn-resnet18", "u-tu-resnet18"): a pickled FPN is
    FPN/resnet18 like its state_dict twin, not another architecture."""
    name = getattr(model, "name", None)
    return name.split("-", 1)[1] if isinstance(name, str) and "-" in name else None


def _from_module(path: Path, model, want: PartialSpec) -> LoadedModel:
    if want.framework == "torchvision":
        return _from_torchvision_module(path, model, want)
    head = getattr(model, "segmentation_head", None)
    classes = getattr(head[0], "out_channels", None) if head is not None else None
    encoder = getattr(getattr(model, "encoder", None), "name", None) or _smp_encoder(model) or want.encoder or "unknown"
    spec = ModelSpec(
        arch=type(model).__name__,
        encoder=want.encoder or encoder,
        classes=int(want.classes or classes or 0),
        in_channels=int(want.in_channels or 3),
    )
    if want.arch and resolve_arch(want.arch) != spec.arch:
        raise CheckpointError(f"{path}: pickled model is a {spec.arch}, asked for {want.arch}")
    if want.classes and classes and want.classes != classes:
        raise CheckpointError(f"{path}: pickled model has {classes} classes, asked for {want.classes}")
    return LoadedModel(model.eval(), spec, path, file_sha256(path), "pickled_module")


def _from_torchvision_module(path: Path, model, want: PartialSpec) -> LoadedModel:
    """A whole pickled torchvision model (torch.save(model)): its class must be the plan's builder's, its classes
    and aux head read from it; its forward's ``out`` is the member's output."""
    arch = resolve_arch(want.arch or "", "torchvision") if want.arch else None
    expected = {"fcn": "FCN", "deeplabv3": "DeepLabV3", "lraspp": "LRASPP"}
    if not arch or type(model).__name__ != expected[arch.split("_")[0]]:
        raise CheckpointError(f"{path}: pickled model is a {type(model).__module__}.{type(model).__name__}; the plan's arch "
                              f"{want.arch!r} builds a torchvision {expected[arch.split('_')[0]] if arch else 'segmentation model'}")
    state = model.state_dict()
    spec = _torchvision_spec(path, PartialSpec(want.arch, None, None, 3, {}, "torchvision"), state)
    if want.classes and want.classes != spec.classes:
        raise CheckpointError(f"{path}: pickled model has {spec.classes} classes, asked for {want.classes}")
    return LoadedModel(tensor_out(model), spec, path, file_sha256(path), "pickled_module")


def _find_state_dict(path: Path, obj: Any) -> tuple[dict, str, PartialSpec]:
    """Find the tensors in the common checkpoint layouts and strip wrapper prefixes."""
    import torch

    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state_dict or a dict holding one, found {type(obj).__name__}")
    carried = PartialSpec(
        arch=obj.get("arch") if isinstance(obj.get("arch"), str) else None,
        encoder=obj.get("encoder") if isinstance(obj.get("encoder"), str) else None,
        classes=obj.get("classes") if isinstance(obj.get("classes"), int) else None,
    )
    form = "state_dict"
    state = obj
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), dict):
                state, form = obj[key], f"nested:{key}"
                break
        else:
            raise CheckpointError(
                f"{path}: no state_dict found; looked for a dict of tensors or one under "
                f"{', '.join(_NESTED_KEYS)}; top-level keys are {sorted(map(str, obj))[:_SHOWN]}"
            )
    return _strip_prefixes(state), form, carried


def _strip_prefixes(state: dict) -> dict:
    changed = True
    while changed and state:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _complete_spec(path: Path, want: PartialSpec, carried: PartialSpec, state: dict) -> ModelSpec:
    if want.framework == "torchvision":
        return _torchvision_spec(path, want, state)
    if want.framework == "factory":
        return ModelSpec(want.arch or "", "", int(want.classes or 1), 3, dict(want.extra or {}), "factory")
    arch = want.arch or carried.arch
    encoder = want.encoder or carried.encoder
    if not arch or not encoder:
        raise CheckpointError(f"{path}: a bare state_dict does not say its architecture; give --arch and --encoder")
    head = state.get("segmentation_head.0.weight")
    classes = want.classes or carried.classes or (int(head.shape[0]) if head is not None else None)
    if not classes:
        raise CheckpointError(f"{path}: cannot tell the number of classes; give --classes")
    return ModelSpec(resolve_arch(arch), encoder, int(classes), want.in_channels or 3, dict(want.extra or {}))


def _torchvision_spec(path: Path, want: PartialSpec, state: dict) -> ModelSpec:
    """A torchvision model's spec: its builder from the plan, its classes from the plan or its head, aux_loss
    as it was trained (its state_dict has an aux_classifier or not)."""
    if not want.arch:
        raise CheckpointError(f"{path}: a torchvision member names its builder in arch (one of {', '.join(TORCHVISION_ARCHS)})")
    head = state.get("classifier.4.weight", state.get("classifier.high_classifier.weight"))
    classes = want.classes or (int(head.shape[0]) if head is not None else None)
    if not classes:
        raise CheckpointError(f"{path}: cannot tell the number of classes; give --classes")
    aux = any(k.startswith("aux_classifier.") for k in state)
    return ModelSpec(resolve_arch(want.arch, "torchvision"), "", int(classes), 3, {"aux_loss": aux}, "torchvision")


def _build_and_load(path: Path, spec: ModelSpec, state: dict, form: str) -> LoadedModel:
    model = create_model(spec)
    _check_keys(path, spec, model.state_dict(), state)
    model.load_state_dict(state, strict=True)
    if spec.framework == "factory":  # its class count is what it outputs
        spec = replace(spec, classes=_probe_channels(model, path, spec))
    return LoadedModel(model.eval(), replace(spec, arch=resolve_arch(spec.arch, spec.framework)), path, file_sha256(path), form)


def _probe_channels(model, path: Path, spec: ModelSpec) -> int:
    import torch

    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, spec.in_channels, 64, 64))
    except Exception as exc:  # the team's own forward
        raise CheckpointError(f"{path}: factory {spec.arch} fails on a 1x{spec.in_channels}x64x64 input: {first_line(exc)}") from None
    if out.ndim != 4:
        raise CheckpointError(f"{path}: factory {spec.arch} outputs shape {tuple(out.shape)}; expected logits (N, C, H, W)")
    return int(out.shape[1])


def _check_keys(path: Path, spec: ModelSpec, expected: dict, got: dict) -> None:
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    mismatched = [
        f"{k} {tuple(got[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if k in got and tuple(got[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    head = next((k for k in ("segmentation_head.0.weight", "classifier.4.weight", "classifier.high_classifier.weight")
                 if k in got and k in expected and tuple(got[k].shape) != tuple(expected[k].shape)), None)
    if head and not (missing or unexpected) and tuple(got[head].shape[1:]) == tuple(expected[head].shape[1:]):
        # only the class count differs: say it in the plan's terms
        raise CheckpointError(f"{path}: the checkpoint was trained for {got[head].shape[0]} classes, but {spec.classes} are asked for "
                              f"(the plan's classes, or --classes); list the classes it was trained on, in its order")
    parts = [f"{path}: does not fit {spec.describe()}"]
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches (checkpoint vs model)", mismatched)):
        if keys:
            more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:_SHOWN])}{more}")
    parts.append("check arch, encoder and the classes (plan fields, or --arch/--encoder/--classes) against how the model was trained")
    raise CheckpointError("; ".join(parts))
