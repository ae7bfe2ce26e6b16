"""Which optional extra provides which import: the one place a missing package becomes the ``pip install``
that fixes it (the core install is the runtime; exporting, serving, pictures, bf16 and Ray are extras)."""

from __future__ import annotations

from segensemble.errors import SegEnsembleError

EXTRA_OF = {
    "torch": "export", "torchvision": "export", "segmentation_models_pytorch": "export", "timm": "export",
    "onnxscript": "export", "safetensors": "export", "albumentations": "export",
    "fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "python_multipart": "serve", "starlette": "serve",
    "prometheus_client": "serve", "pydantic_settings": "serve", "swagger_ui_bundle": "serve",
    "tifffile": "tiff", "imagecodecs": "tiff", "transformers": "huggingface",
    "matplotlib": "analyze", "openvino": "openvino", "ray": "dist", "pandas": "dist", "pyarrow": "dist",
}


class MissingExtra(SegEnsembleError):
    """An optional dependency is not installed; the message is the one-line fix."""


def install_hint(extra: str) -> str:
    return f"pip install 'segensemble[{extra}]'"


def missing_extra(exc: ImportError, needed_by: str) -> MissingExtra | None:
    """The one-line error for an import of a package an extra provides; None for anything else (a real bug)."""
    module = (getattr(exc, "name", None) or "").split(".")[0]
    extra = EXTRA_OF.get(module)
    if extra is None:
        return None
    return MissingExtra(f"{needed_by} needs {module}, which is not installed: {install_hint(extra)}")
