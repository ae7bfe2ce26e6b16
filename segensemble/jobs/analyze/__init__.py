"""What each member buys: per-view probability cache, per-axis ablation, ensemble selection, pictures.

Runtime only (no torch): every view runs once through the engine; every combination is scored from the
cache without running a model again.
"""
