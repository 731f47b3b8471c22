"""The parts of the TensorRT backend (``hodor.engine.backends.tensorrt_backend``), one job each.

- ``flavours``: the one adapter over the two Python modules, ``tensorrt`` (data-centre GPUs,
  engines built on the GPU that runs them) and ``tensorrt_rtx`` (TensorRT for RTX: built ahead
  of time for a list of compute capabilities, kernels compiled just in time on first use);
  TensorRT's logger.
- ``validity``: whether an engine file can run on this machine, judged from the manifest's
  record and the file's header, before anything is deserialised.
- ``loading``: engine files into engines (checked first), and TensorRT for RTX's runtime cache
  of just-in-time kernels, kept beside the engines between runs.
- ``stage_engine``: one engine at run time: an execution context per CUDA stream, output
  buffers, CUDA graphs through ``hodor.engine.backends.cuda_graphs.CudaGraphRunner``.

The build half (``hodor.export.tensorrt_build``) uses ``flavours`` and ``validity`` too; the
manifest's ``tensorrt`` section is typed in ``hodor.engine.backends.manifest``.
"""
