"""segensemble: ensembles of segmentation models, exported to ONNX as one graph, predicted and served.

Laid out along the data flow: ``plan`` → ``models`` + ``export`` (torch side: checkpoints → member ONNX →
``ensemble.onnx``) → ``runtime`` (one ONNX Runtime session over the graph) → ``jobs`` (predict, evaluate,
pseudo-label, analyze) → ``formats`` (CSV, masks, COCO) and ``serve`` (HTTP). Everything from ``runtime``
on never imports torch; torch and segmentation-models-pytorch are needed only by ``models`` and ``export``.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
