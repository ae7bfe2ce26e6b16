"""Synthetic segmentation data (no torch), a tiny CPU trainer (torch) and the demo that chains them with
every job (``demo.py``), for tests and newcomers.

Nothing here downloads anything: data is drawn, models start from random weights.
"""
