"""Torch side: the architecture registry, checkpoint loading in every common save form, SWA averaging.

Imports torch and segmentation-models-pytorch; the runtime never imports this package.
"""

from segensemble.models.checkpoints import LoadedModel, file_sha256, load_checkpoint
from segensemble.models.registry import ModelSpec, create_model, list_architectures

__all__ = ["ModelSpec", "create_model", "list_architectures", "LoadedModel", "load_checkpoint", "file_sha256"]
