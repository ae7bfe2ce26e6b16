"""Bytes in and out: image decoding, the submission CSV, label-map PNGs and probabilities, COCO in and out,
and the rules every written path follows (inside its folder, written to a temporary name and renamed)."""
