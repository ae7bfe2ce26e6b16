"""Runtime: ONNX Runtime sessions, the engine that runs the build's ensemble graph, and the jobs on it.

Never imports torch (a test checks it): predict, evaluate, pseudo-label and serve all run on this.
"""
