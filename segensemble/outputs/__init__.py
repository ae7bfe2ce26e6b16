"""Outputs of the engine: submission CSV, label-map PNGs, probabilities, COCO RLE, metrics, pseudo-labels.

Every file is written to a temporary name and renamed, so an interrupted run never leaves a half file.
"""
