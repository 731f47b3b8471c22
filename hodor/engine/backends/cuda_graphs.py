"""CUDA graphs for per-frame stages, one per input shape that repeats (torch and TensorRT backends).

A frame's encode and decode are a few hundred small kernels; at common frame sizes
launching them costs more than running them. Once the inputs' shapes repeat (the
number of videos B in the call, the object count I, history length T and map size h×w stay
the same from frame to frame once the window is full), the stage is captured into a CUDA
graph and replayed:

- the first call with a shape runs eagerly: it compiles Triton kernels, picks cuBLAS
  and cuDNN algorithms and allocates what lazy initialisation needs, none of which may
  happen during a capture;
- the second call with that shape captures the stage on static input buffers (copies of
  this call's inputs) and replays it; later calls copy their inputs into those buffers
  and replay. Outputs are cloned before they are returned because the next replay
  overwrites the static outputs, and the runtime keeps descriptors for several frames
  (``clone_outputs=False`` hands out the static outputs themselves, for a caller that
  consumes them before its next call);
- if a capture fails, the stages run eagerly from then on, with one warning. A capture
  function may also decline one set of shapes (return ``None``): those shapes then run
  eagerly, and the others are still captured.

Copying the inputs in is the one cost a replay adds. A caller that produces its inputs
anyway can produce them in place: :meth:`CudaGraphRunner.input_buffers` hands out the
static inputs of the graph its next call will replay, and an input that *is* its static
buffer is not copied. Callers that keep or reuse their own tensors need do nothing: their
values are copied in.

Stages that feed each other can skip the copy altogether: a runner whose ``feeds_from`` is
another runner (the per-frame stages' runner, fed by the backbone's) captures an input that
*is* one of that runner's static outputs, on the same stream, as it is instead of copying it
into a buffer of its own. From then on the producing graph's replay writes straight into the
consuming graph's input, and a replay whose input is that tensor copies nothing. The producer's
outputs must have been handed out as they are (``clone_outputs=False``) for this to happen.
An input from elsewhere is still copied in, into that shared buffer: the producer's last
outputs are then overwritten, which is why only a caller that is done with them by its next
call of the consumer may take the producer's outputs uncloned.

One backend may serve several videos from several threads, each on its own CUDA stream
(as the throughput benchmark does): graphs are kept per stream, and copying into a
graph's inputs, replaying it and cloning its outputs happen under a lock, so no two
callers share static buffers in flight. Eager calls take no lock.

The capture itself is a parameter (the TensorRT backend passes its own), so the
bookkeeping is tested on the CPU with a stand-in.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

StageFn = Callable[..., tuple[torch.Tensor, ...]]
"""A stage: tensors in, a tuple of tensors out, with no host synchronisation inside."""

Capture = Callable[
    [StageFn, tuple[torch.Tensor, ...]], tuple[Callable[[], None], tuple[torch.Tensor, ...]] | None
]
"""``(fn, static_inputs) -> (replay, static_outputs)``: after ``replay()``, ``static_outputs``
hold ``fn(*static_inputs)`` for the values the static inputs hold at that time. ``None``: these
shapes cannot be captured (they run eagerly); an exception: capturing cannot work at all."""

DEFAULT_MAX_GRAPHS = 8


class CudaGraphWarning(RuntimeWarning):
    """Capturing a stage failed; the stages run eagerly (slower, same results)."""


def capture_cuda_graph(
    fn: StageFn, static_inputs: tuple[torch.Tensor, ...]
) -> tuple[Callable[[], None], tuple[torch.Tensor, ...]]:
    """Capture ``fn(*static_inputs)`` into a ``torch.cuda.CUDAGraph`` (the real :data:`Capture`).

    One warm-up run on a fresh side stream first, as ``torch.cuda.graph`` asks: it sets up
    per-stream state (cuBLAS workspaces) outside the capture. The capture runs on that same
    private stream (not the process-wide default capture stream, which another backend may be
    capturing on) and in thread-local mode, so that other threads' CUDA calls neither break
    it nor are broken by it.
    """
    device = static_inputs[0].device
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn(*static_inputs)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
        static_outputs = fn(*static_inputs)
    return graph.replay, tuple(static_outputs)


@dataclass
class _Graph:
    replay: Callable[[], None]
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]


@dataclass
class GraphStats:
    """What the runner did, for tests and benchmarks. ``input_copies``: inputs copied into static
    buffers by replays; ``inputs_in_place``: inputs that already were their static buffer."""

    eager: int = 0
    captures: int = 0
    replays: int = 0
    evictions: int = 0
    declined: int = 0
    input_copies: int = 0
    inputs_in_place: int = 0
    inputs_adopted: int = 0


class CudaGraphRunner:
    """Runs stages through CUDA graphs keyed by stage name and input shapes.

    ``enabled=False`` runs everything eagerly (the CPU, or graphs switched off). At most
    ``max_graphs`` graphs are kept, least recently used first out, so that a video whose
    object count keeps changing cannot pile up graph memory. ``feeds_from``: the runner whose
    graphs produce this one's inputs (see the module docstring); it may be set later.
    """

    def __init__(
        self,
        enabled: bool,
        capture: Capture = capture_cuda_graph,
        max_graphs: int = DEFAULT_MAX_GRAPHS,
        feeds_from: CudaGraphRunner | None = None,
    ) -> None:
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.enabled = enabled
        self.max_graphs = max_graphs
        self.stats = GraphStats()
        self._capture = capture
        self._graphs: OrderedDict[Hashable, _Graph] = OrderedDict()
        self._seen: set[Hashable] = set()  # keys run once (warmed up), not captured yet
        self._declined: set[Hashable] = set()  # keys the capture function turned down
        self._failure: str | None = None
        self._lock = threading.Lock()
        self.feeds_from = feeds_from

    @property
    def failure(self) -> str | None:
        """Why capturing was given up, or None."""
        return self._failure

    @staticmethod
    def key(stage: str, inputs: tuple[torch.Tensor, ...]) -> Hashable:
        """Stage name, the current CUDA stream (for CUDA inputs), and every input's shape, dtype
        and device: for encode the shapes vary by (B, I, h, w), for decode by (B, I, T, h, w),
        B being the videos batched in the call (padded to the batch's largest I and T), the
        rest being fixed by the model."""
        stream = _stream_of(inputs[0]) if inputs else None
        return (stage, stream, *((tuple(t.shape), t.dtype, t.device) for t in inputs))

    def __call__(
        self, stage: str, fn: StageFn, *inputs: torch.Tensor, clone_outputs: bool = True
    ) -> tuple[torch.Tensor, ...]:
        """``fn(*inputs)``, eagerly or by a graph replay. ``fn`` must compute the same function for
        every call with the same ``stage``: a captured graph replays what it was captured from.

        ``clone_outputs=False``: a replay returns the graph's own output buffers, which the next
        replay of that graph overwrites (for a caller that is done with them by then)."""
        if self.enabled and self._failure is None:
            key = self.key(stage, inputs)
            with self._lock:
                graph = self._graphs.get(key)
                if graph is not None:
                    self._graphs.move_to_end(key)
                elif key in self._seen:
                    graph = self._capture_graph(key, fn, inputs)
                elif key not in self._declined:
                    self._seen.add(key)
                if graph is not None:
                    return self._replay(graph, inputs, clone_outputs)
        return self._eager(fn, inputs)

    def input_buffers(self, stage: str, *like: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """The static inputs of the graph that a call of ``stage`` with tensors shaped like ``like``
        (same shapes, dtypes, device, current stream) replays; ``None`` while there is no such graph.

        Write the next call's inputs into these and pass them as the inputs: they are not copied.
        Only the caller that owns the current stream may do so (a replay on it reads them)."""
        with self._lock:
            graph = self._graphs.get(self.key(stage, like))
            return graph.inputs if graph is not None else None

    def static_output(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is a static output of one of this runner's graphs on the current
        stream (so that its replays rewrite it in place)."""
        stream = _stream_of(tensor)
        with self._lock:
            return any(
                key[1] == stream and any(_same_memory(out, tensor) for out in graph.outputs)
                for key, graph in self._graphs.items()
            )

    def clear(self) -> None:
        """Drop every graph (and its memory) and forget which shapes were seen."""
        with self._lock:
            self._drop_all()

    def _drop_all(self) -> None:
        self._graphs.clear()
        self._seen.clear()
        self._declined.clear()

    def _replay(
        self, graph: _Graph, inputs: tuple[torch.Tensor, ...], clone_outputs: bool
    ) -> tuple[torch.Tensor, ...]:
        for static, value in zip(graph.inputs, inputs, strict=True):
            if _same_memory(static, value):
                self.stats.inputs_in_place += 1
            else:
                static.copy_(value)
                self.stats.input_copies += 1
        graph.replay()
        self.stats.replays += 1
        if not clone_outputs:
            return graph.outputs
        return tuple(out.clone() for out in graph.outputs)

    def _eager(self, fn: StageFn, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        self.stats.eager += 1
        return tuple(fn(*inputs))

    def _capture_graph(self, key: Hashable, fn: StageFn, inputs: tuple[torch.Tensor, ...]) -> _Graph | None:
        static_inputs = tuple(t if self._adoptable(t) else t.clone() for t in inputs)
        try:
            captured = self._capture(fn, static_inputs)
        except Exception as exc:  # whatever went wrong, eager execution gives the same results
            self._failure = f"{type(exc).__name__}: {exc}"
            self._drop_all()
            warnings.warn(
                f"CUDA graph capture of the {key[0]} stage failed ({self._failure}); "
                "running the stages eagerly from now on (same results, more launch overhead)",
                CudaGraphWarning,
                stacklevel=3,
            )
            return None
        self._seen.discard(key)
        if captured is None:
            self._declined.add(key)
            self.stats.declined += 1
            return None
        replay, static_outputs = captured
        self.stats.inputs_adopted += sum(s is t for s, t in zip(static_inputs, inputs, strict=True))
        graph = _Graph(replay, static_inputs, tuple(static_outputs))
        self._graphs[key] = graph
        self.stats.captures += 1
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
            self.stats.evictions += 1
        return graph

    def _adoptable(self, tensor: torch.Tensor) -> bool:
        feeder = self.feeds_from
        return feeder is not None and feeder is not self and feeder.static_output(tensor)


def _stream_of(tensor: torch.Tensor) -> int | None:
    """The current stream of the tensor's CUDA device (as :meth:`CudaGraphRunner.key` records it)."""
    if tensor.device.type != "cuda":
        return None
    return torch.cuda.current_stream(tensor.device).cuda_stream


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``b`` is ``a`` (or a view reading exactly its elements): copying would be a no-op."""
    return (
        a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
        and a.device == b.device
    )
