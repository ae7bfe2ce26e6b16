"""Offline side: member export with parity (torch, ``onnx_export``), the build, and the ensemble graph
(``graph``, onnx only) with its verification against the reference loop. Import the submodules directly:
the runtime imports ``graph`` without pulling in torch."""
