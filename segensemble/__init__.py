"""segensemble: ensembles of segmentation models, exported to ONNX, soft-voted, predicted and served.

The runtime (``segensemble.ensemble``, ``segensemble.outputs``, ``segensemble.serve``) never imports torch;
torch and segmentation-models-pytorch are needed only by ``segensemble.models`` and ``segensemble.export``.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
