"""A member's training pipeline's own validation transform (``preprocess: val_transform.json``, the file
``A.save(transform, path)`` writes), read with albumentations' loader and mapped onto the member's input
size, normalization and stride, which the ensemble graph then computes itself.

The classic inference bug is preprocessing that differs from training; reading the file the training
notebook saved removes the copy by hand. Only what the graph reproduces exactly is accepted:

- ``Resize(height, width)`` with linear interpolation -> ``input_size``
- ``Normalize(mean, std, max_pixel_value)``, standard normalization -> ``mean``, ``std`` (of 0..1 pixels:
  albumentations computes ``(x - mean * m) / (std * m)``, the graph ``(x / 255 - mean') / std'``, so
  ``mean' = mean * m / 255`` and ``std' = std * m / 255``)
- ``PadIfNeeded`` to a divisor, bottom/right (``position="top_left"``), constant 0, after Normalize -> ``stride``
- ``ToTensorV2`` (layout only)

Anything else is refused with an error naming it, and so is a plan field set explicitly (in the member or
under ``defaults``) that contradicts the file, naming both.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from pydantic import ValidationError

from segensemble.errors import PlanError, first_line
from segensemble.extras import missing_extra
from segensemble.files import open_regular
from segensemble.plan import MemberSpec
from segensemble.yaml_guard import load_yaml

MAX_TRANSFORM_BYTES = 1 << 20
LINEAR, BORDER_CONSTANT = 1, 0  # cv2.INTER_LINEAR, cv2.BORDER_CONSTANT
DERIVED = ("input_size", "mean", "std", "stride")


def load_transforms(path: Path, where: str) -> list:
    """The transforms of a saved albumentations Compose, in order (albumentations' own loader)."""
    try:
        import albumentations as A
    except ImportError as exc:
        raise missing_extra(exc, f"{where} (an albumentations transform)") or exc from None
    if not path.exists():
        raise PlanError(f"{where}: {path}: no such file")
    with open_regular(path, MAX_TRANSFORM_BYTES, lambda reason: PlanError(f"{where}: {path}: {reason}")) as fh:
        text = fh.read().decode("utf-8", errors="replace")
    # parsed here, not by A.load: the plan's YAML guard (alias bombs) applies to this file too
    data = load_yaml(text, f"{where}: {path}") if path.suffix in (".yaml", ".yml") else _json(text, f"{where}: {path}")
    if not isinstance(data, dict):
        raise PlanError(f"{where}: {path}: not a transform saved by A.save (expected a mapping)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # albumentations warns about arguments older versions saved
            compose = A.from_dict(data)
    except RecursionError:
        raise PlanError(f"{where}: {path}: the transform is nested too deeply") from None
    except Exception as exc:  # its loader raises KeyError/ValueError/TypeError with terse messages
        raise PlanError(f"{where}: {path}: not a transform saved by A.save ({type(exc).__name__}: {exc})") from None
    if type(compose).__name__ != "Compose" or not math.isclose(getattr(compose, "p", 1.0), 1.0):
        raise PlanError(f"{where}: {path}: expected an A.Compose applied always (p=1)")
    return list(compose.transforms)


def _json(text: str, where: str):
    import json

    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PlanError(f"{where}: not a transform saved by A.save: not valid JSON ({first_line(exc)})") from None


def read_preprocess(path: Path, where: str) -> dict:
    """The member fields the file determines (only those it determines)."""
    fields: dict = {}
    seen: list[str] = []
    for i, t in enumerate(load_transforms(path, where)):
        name = type(t).__name__
        at = f"{where}: {path}: transforms[{i}] {name}"
        if not math.isclose(getattr(t, "p", 1.0), 1.0):
            raise PlanError(f"{at}: p={t.p}; a validation transform must always apply (p=1)")
        if name == "Resize":
            _resize(t, at, seen, fields)
        elif name == "Normalize":
            _normalize(t, at, fields)
        elif name == "PadIfNeeded":
            _pad(t, at, seen, fields)
        elif name != "ToTensorV2":
            raise PlanError(f"{at}: not supported; the graph reproduces only Resize, Normalize, PadIfNeeded and ToTensorV2")
        seen.append(name)
    if "mean" not in fields:
        raise PlanError(f"{where}: {path}: has no Normalize, so the normalization the model was trained with is not in it; "
                        "add it to the transform, or drop preprocess and set mean and std")
    return fields


def _resize(t, at: str, seen: list[str], fields: dict) -> None:
    if "PadIfNeeded" in seen:
        raise PlanError(f"{at}: comes after PadIfNeeded (the padding would be resized); the graph resizes first")
    if t.interpolation != LINEAR or getattr(t, "area_for_downscale", None):
        raise PlanError(f"{at}: interpolation {t.interpolation} (area_for_downscale {getattr(t, 'area_for_downscale', None)}); "
                        "the graph resizes bilinearly (cv2.INTER_LINEAR = 1)")
    fields["input_size"] = (int(t.height), int(t.width))


def _normalize(t, at: str, fields: dict) -> None:
    if getattr(t, "normalization", "standard") != "standard":
        raise PlanError(f"{at}: normalization {t.normalization!r}; only 'standard' (fixed mean and std) is a plan's normalization")
    scale = float(t.max_pixel_value if t.max_pixel_value is not None else 255.0) / 255.0
    mean, std = (_three(v, at) for v in (t.mean, t.std))
    fields["mean"] = tuple(m * scale for m in mean)
    fields["std"] = tuple(s * scale for s in std)


def _pad(t, at: str, seen: list[str], fields: dict) -> None:
    if "Normalize" not in seen:
        raise PlanError(f"{at}: comes before Normalize, so it pads raw pixels with {t.fill}; the graph pads normalized "
                        "values with 0: move PadIfNeeded after Normalize")
    if t.position != "top_left" or t.border_mode != BORDER_CONSTANT or t.fill not in (0, 0.0):
        raise PlanError(f"{at}: position {t.position!r}, border_mode {t.border_mode}, fill {t.fill}; the graph pads "
                        "bottom/right (position='top_left') with the constant 0 (border_mode=cv2.BORDER_CONSTANT)")
    if t.min_height is not None or t.min_width is not None:
        size = fields.get("input_size")
        if not size or (t.min_height or 0) > size[0] or (t.min_width or 0) > size[1]:
            raise PlanError(f"{at}: min_height/min_width pad to a fixed size; the graph pads only to a divisor "
                            "(pad_height_divisor = pad_width_divisor), or not at all after a Resize at least that large")
    divisors = {d for d in (t.pad_height_divisor, t.pad_width_divisor) if d is not None}
    if len(divisors) > 1:
        raise PlanError(f"{at}: pad_height_divisor {t.pad_height_divisor} != pad_width_divisor {t.pad_width_divisor}; "
                        "a member has one stride")
    if divisors:
        fields["stride"] = int(divisors.pop())


def _three(value, at: str) -> tuple[float, float, float]:
    values = [float(value)] * 3 if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) != 3:
        raise PlanError(f"{at}: {len(values)} values; a member takes RGB images (3)")
    return tuple(values)  # type: ignore[return-value]


def read_hf_preprocessor(path: Path, at: str) -> dict:
    """What a Hugging Face ``preprocessor_config.json`` determines: mean and std of 0..1 pixels (its rescale
    and normalize folded together) and, where it resizes to a fixed height x width, input_size."""
    config = _json(path.read_text(), f"{at}: {path}")
    if not isinstance(config, dict):
        raise PlanError(f"{at}: {path}: expected a JSON object")
    mean = _three(config.get("image_mean", [0.0, 0.0, 0.0]), f"{at}: {path}: image_mean") if config.get("do_normalize", True) else (0.0, 0.0, 0.0)
    std = _three(config.get("image_std", [1.0, 1.0, 1.0]), f"{at}: {path}: image_std") if config.get("do_normalize", True) else (1.0, 1.0, 1.0)
    factor = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
    # the model sees (pixel * factor - mean) / std; segensemble computes (pixel / 255 - m) / s: m = mean / (255 factor), s likewise
    k = 255.0 * factor
    fields: dict = {"mean": tuple(v / k for v in mean), "std": tuple(v / k for v in std)}
    size = config.get("size")
    if config.get("do_resize", True) and isinstance(size, dict):
        if set(size) >= {"height", "width"}:
            fields["input_size"] = (int(size["height"]), int(size["width"]))
        else:
            raise PlanError(f"{at}: {path}: resizes by {sorted(size)}, which a fixed input_size cannot say; set input_size "
                            "(or leave it out to run images at their own size) and remove size from the file")
    return fields


def apply_preprocess(member: MemberSpec, index: int, where: str = "") -> MemberSpec:
    """``member`` with the fields its preprocess file (or a Hugging Face folder's preprocessor_config.json)
    determines; a contradicting explicit field is an error."""
    hf = Path(member.sources[0]) / "preprocessor_config.json" if member.framework == "transformers" and member.onnx is None else None
    if member.preprocess:
        at = f"{where}members[{index}].preprocess"
        path = Path(member.preprocess)
        derived = read_preprocess(path, at)
    elif hf is not None and hf.is_file():
        at = f"{where}members[{index}]"
        path = hf
        derived = read_hf_preprocessor(path, at)
    else:
        return member
    for field in DERIVED:
        if field in derived and field in member.model_fields_set and not _same(getattr(member, field), derived[field]):
            raise PlanError(f"{where}members[{index}].{field}: {_show(getattr(member, field))} contradicts {path} "
                            f"({field} {_show(derived[field])}); drop one of them")
    try:  # the plan's own bounds (sides, std > 0, stride) hold for what the file says too
        return MemberSpec.model_validate({**member.model_dump(), **derived})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise PlanError(f"{at}: {path}: {'.'.join(map(str, err['loc']))} {err['msg'].removeprefix('Value error, ')}") from None


def _same(a, b) -> bool:
    a, b = (v if isinstance(v, tuple | list) else (v,) for v in (a, b))
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for x, y in zip(a, b))


def _show(value) -> str:
    return "[" + ", ".join(f"{v:g}" for v in value) + "]" if isinstance(value, tuple | list) else str(value)
