"""HTTP serving of a build: FastAPI app, micro-batching, limits and metrics. Runtime only, no torch."""
