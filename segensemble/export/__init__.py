"""Torch side: PyTorch -> ONNX export with parity verification and metadata, and building a plan."""

from segensemble.export.onnx_export import ExportOptions, ExportReport, export_onnx

__all__ = ["ExportOptions", "ExportReport", "export_onnx"]
