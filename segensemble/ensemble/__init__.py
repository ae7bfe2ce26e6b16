"""Runtime: ONNX Runtime sessions, TTA/scale views, soft voting and the one engine loop.

Never imports torch (a test checks it): predict, evaluate, pseudo-label and serve all run on this.
"""
