"""Runtime: ONNX Runtime sessions over the build's ensemble graph, the engine that streams images through
it, and the TTA view registry. Never imports torch (a test checks it)."""
