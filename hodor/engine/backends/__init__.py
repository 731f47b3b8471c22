"""Backends: the three-stage seam (:mod:`.base`), the torch backend for checkpoints, the ONNX
Runtime and TensorRT backends for export directories (with their manifest), and choosing one
for a model path (:func:`.registry.open_backend`).

A new backend implements :class:`~.base.Backend` in a module here; an export-directory backend
also registers its opener in :data:`.registry.EXPORT_BACKENDS`.
"""
