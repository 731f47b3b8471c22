"""Torch -> ONNX stage graphs and their manifest (``hodor-export``); TensorRT engines build on these."""
