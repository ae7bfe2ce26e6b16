"""segensemble: ensembles of segmentation models, exported to ONNX as one graph, predicted and served.

From Python (docs/python.md)::

    import segensemble as se
    ens = se.open("build/")                      # or se.open("build/", se.RunConfig(precision="bf16"))
    out = ens.predict(image)                     # RGB uint8 (H, W, 3) or a path; out.labels, out.probs on request
    result = se.build("plan.yaml", "build/")     # or a dict / se.Plan

Laid out along the data flow: ``plan`` → ``models`` + ``export`` (torch side: checkpoints → member ONNX →
``ensemble.onnx``) → ``runtime`` (one ONNX Runtime session over the graph) → ``jobs`` (predict, evaluate,
pseudo-label, analyze) → ``formats`` (CSV, masks, COCO) and ``serve`` (HTTP). Everything from ``runtime``
on never imports torch; torch and segmentation-models-pytorch are needed only by ``models`` and ``export``.
"""

__version__ = "0.1.0"
__all__ = ["Ensemble", "Plan", "Precision", "Prediction", "RunConfig", "SegEnsembleError", "__version__", "build", "load_plan",
           "open"]

_HOMES = {"open": "segensemble.api", "build": "segensemble.api", "Ensemble": "segensemble.api",
          "RunConfig": "segensemble.run_config", "Precision": "segensemble.run_config",
          "Prediction": "segensemble.runtime.engine", "Plan": "segensemble.plan", "load_plan": "segensemble.plan",
          "SegEnsembleError": "segensemble.errors"}


def __getattr__(name: str):
    """The public names, imported on first use (``import segensemble`` stays cheap for the CLI)."""
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'segensemble' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
