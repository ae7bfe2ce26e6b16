"""Torch side: the architecture registry, checkpoint loading in every common save form, SWA averaging.

Imports torch and segmentation-models-pytorch (inside the functions that need them); nothing from
``runtime`` on imports this package.
"""
