"""The overlapped pipeline behind ``hodor-run``: decoding, the device's work and writing at once
(docs/design.md, "The run's pipeline").

:func:`run_pipeline` segments a video with a :class:`hodor.engine.VideoSession` and writes its
masks and overlay, each stage on its own thread:

- **decoder** (:mod:`.decode`): frames read ahead (PyAV's threaded decoding) into pinned host
  buffers on CUDA, plain arrays on the CPU;
- **device stage** (:mod:`.device`): asynchronous upload, the session's stages, the id mask and
  the overlay blend (:mod:`.blend`) on the device, asynchronous copies back to pinned buffers,
  one CUDA event per frame and no wait;
- **writers** (:mod:`.writers`): PNG masks from a pool of threads, the overlay video from one
  thread in frame order; each waits for its frame's event (the one host-device synchronisation
  per frame).

Bounded channels (:mod:`.control`) keep memory flat in the video's length; an error in any
stage or Ctrl-C stops them all; :mod:`.completion` counts the frames finished in order and
their latency. :mod:`.startup` and :mod:`.kernel_cache` serve the start of a run.
"""

from hodor.engine.pipeline.completion import Latency
from hodor.engine.pipeline.outputs import MASK, OVERLAY, Outputs, index_name
from hodor.engine.pipeline.run import (
    PipelineInterrupted,
    PipelineLayout,
    PipelineOptions,
    PipelineResult,
    run_pipeline,
)

__all__ = [
    "MASK",
    "OVERLAY",
    "Latency",
    "Outputs",
    "PipelineInterrupted",
    "PipelineLayout",
    "PipelineOptions",
    "PipelineResult",
    "index_name",
    "run_pipeline",
]
