"""Synthetic segmentation data (no torch) and a tiny CPU trainer (torch), for tests and the demo.

Nothing here downloads anything: data is drawn, models start from random weights.
"""
