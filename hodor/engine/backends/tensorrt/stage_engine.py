"""One deserialised engine at run time: a context per CUDA stream, output buffers, CUDA graphs.

Device memory and streams belong to PyTorch: inputs and outputs are CUDA tensors bound by
address, and the engine runs on the caller's current torch stream.

An execution context holds the input shapes and tensor addresses of the call being enqueued
(and, with TensorRT for RTX, the CUDA graphs it captures), so two calls in flight must not share
one: one backend may serve several videos from several threads, each on its own stream (as the
throughput benchmark does). Each stream therefore gets its own context, created on its first
call, and calls on one stream from several threads enqueue one at a time.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from hodor.engine.backends.cuda_graphs import Capture, CudaGraphRunner, StageFn
from hodor.engine.backends.tensorrt.flavours import Flavour
from hodor.errors import HodorError

logger = logging.getLogger(__name__)

# TensorRT data types by enum name: the two flavours have distinct enum classes.
TORCH_DTYPES: dict[str, torch.dtype] = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
}

ShapeKey = tuple[tuple[int, ...], ...]


@dataclass
class StreamContext:
    """What the calls on one stream use: an execution context, the input shapes last set on it
    (a context re-plans when one changes), and output buffers reused per input shapes."""

    context: Any
    # Held while a call sets shapes, binds and enqueues; re-entrant so that a capture can hold it
    # across its warm-up enqueue and the captured one.
    lock: threading.RLock = field(default_factory=threading.RLock)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    outputs: OrderedDict[ShapeKey, list[torch.Tensor]] = field(default_factory=OrderedDict)


class StageEngine:
    """One deserialised engine: ``__call__`` takes CUDA tensors by input name and returns the
    outputs in engine order.

    With ``reuse_outputs`` the outputs are buffers kept per stream and input shapes, overwritten
    by the next call on that stream with the same shapes; without, every call returns tensors of
    its own (allocated from torch's caching allocator).

    CUDA graphs: TensorRT for RTX captures them itself (its whole-graph strategy, per shape,
    after the shape-specialised kernels are compiled). With TensorRT, repeating shapes go
    through a :class:`~hodor.engine.backends.cuda_graphs.CudaGraphRunner` (``graphs``): the
    second call at a set of shapes on a stream is captured, later ones copy their inputs in and
    replay. ``capture`` replaces the capture function (tests run the bookkeeping on the CPU).
    """

    #: Distinct input-shape sets whose output buffers and graphs are kept (each, per stream).
    CACHE_SHAPES = 8

    def __init__(
        self,
        flavour: Flavour,
        engine: Any,
        name: str,
        device: torch.device,
        *,
        runtime_cache: Any = None,
        cuda_graphs: bool = True,
        reuse_outputs: bool = True,
        capture: Capture | None = None,
    ) -> None:
        trt = flavour.module
        self.flavour = flavour
        self.name = name
        self.device = device
        self.engine = engine
        self.reuse_outputs = reuse_outputs
        self.runtime_config = None
        if flavour.name == "rtx":
            config = engine.create_runtime_config()
            if runtime_cache is not None:
                config.set_runtime_cache(runtime_cache)
            if cuda_graphs:
                config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            self.runtime_config = config

        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes = {n: TORCH_DTYPES[engine.get_tensor_dtype(n).name] for n in names}

        self._contexts: dict[int, StreamContext] = {}
        self._contexts_lock = threading.Lock()
        # Made now, so that an engine that cannot have a context fails when it is loaded; it
        # goes to the first stream that calls.
        self._spare: StreamContext | None = StreamContext(self._new_context())
        self._private_stream: torch.cuda.Stream | None = None
        self.graphs = CudaGraphRunner(
            enabled=cuda_graphs and flavour.name == "tensorrt",
            capture=capture or self._capture,
            max_graphs=self.CACHE_SHAPES,
        )

    @property
    def contexts(self) -> int:
        """How many execution contexts exist (one per stream that has called, at least one)."""
        return len(self._contexts) + (self._spare is not None)

    def profile(self, name: str) -> list[tuple[int, ...]]:
        """``[min, opt, max]`` shapes of input ``name`` (profile 0)."""
        return [tuple(d) for d in self.engine.get_tensor_profile_shape(name, 0)]

    def __call__(self, **inputs: torch.Tensor) -> list[torch.Tensor]:
        stream, caller = self._stream()
        if caller is not None:
            stream.wait_stream(caller)
        with torch.cuda.stream(stream):
            tensors = self._prepare(inputs)
            run: StageFn = functools.partial(self._run, self._context_for(stream))
            outputs = self.graphs(self.name, run, *tensors, clone_outputs=not self.reuse_outputs)
        if caller is not None:
            caller.wait_stream(stream)
        return list(outputs)

    # ------------------------------------------------------------------ streams and contexts

    def _stream(self) -> tuple[torch.cuda.Stream, torch.cuda.Stream | None]:
        """The stream to run on, and the caller's stream to order with when they differ.

        TensorRT synchronises the whole device when handed the legacy default stream
        (handle 0), and nothing can be captured there; so in that case a private stream is
        used, ordered after the caller's work and before whatever the caller does next.
        """
        current = torch.cuda.current_stream(self.device)
        if current.cuda_stream != 0:
            return current, None
        with self._contexts_lock:
            if self._private_stream is None:
                self._private_stream = torch.cuda.Stream(self.device)
        return self._private_stream, current

    def _new_context(self) -> Any:
        # A context allocates its activation memory on the current device: make it the engine's,
        # whichever device the calling thread has current.
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            if self.runtime_config is not None:
                context = self.engine.create_execution_context(self.runtime_config)
            else:
                context = self.engine.create_execution_context()
        if context is None:
            raise HodorError(f"{self.flavour.label} could not create an execution context for {self.name}")
        return context

    def _context_for(self, stream: torch.cuda.Stream) -> StreamContext:
        with self._contexts_lock:
            state = self._contexts.get(stream.cuda_stream)
            if state is None:
                if self._spare is not None:
                    state, self._spare = self._spare, None
                else:
                    state = StreamContext(self._new_context())
                self._contexts[stream.cuda_stream] = state
            return state

    # ------------------------------------------------------------------ one execution

    def _prepare(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        if set(inputs) != set(self.input_names):
            raise ValueError(f"{self.name}: expected inputs {self.input_names}, got {sorted(inputs)}")
        ready = []
        for name in self.input_names:
            t = inputs[name]
            if t.device.type != self.device.type:
                raise ValueError(f"{self.name}: input {name} is on {t.device}; engines take CUDA tensors")
            ready.append(t.to(device=self.device, dtype=self.dtypes[name]).contiguous())
        return ready

    def _run(self, state: StreamContext, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Enqueue the engine on the current stream with ``state``'s context (what the graph
        runner calls eagerly, and inside a capture)."""
        with state.lock:
            self._set_shapes(state, tensors)
            if self.reuse_outputs:
                outputs = self._kept_outputs(state, tuple(tuple(t.shape) for t in tensors))
            else:
                outputs = self._new_outputs(state)
            for name, t in zip(self.input_names + self.output_names, [*tensors, *outputs], strict=True):
                state.context.set_tensor_address(name, t.data_ptr())
            if not state.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
                raise RuntimeError(f"{self.name}: {self.flavour.label} could not run the engine")
        return tuple(outputs)

    def _set_shapes(self, state: StreamContext, tensors: tuple[torch.Tensor, ...]) -> None:
        for name, t in zip(self.input_names, tensors, strict=True):
            shape = tuple(t.shape)
            # Only on change: a new shape makes the context re-plan before its next run.
            if state.shapes.get(name) != shape:
                if not state.context.set_input_shape(name, shape):
                    raise ValueError(
                        f"{self.name}: {name} of shape {shape} is outside the engine's profile "
                        f"(min, opt, max) {self.profile(name)}"
                    )
                state.shapes[name] = shape

    def _new_outputs(self, state: StreamContext) -> list[torch.Tensor]:
        buffers = []
        for name in self.output_names:
            shape = tuple(state.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"{self.name}: output {name} has unresolved shape {shape}")
            buffers.append(torch.empty(shape, dtype=self.dtypes[name], device=self.device))
        return buffers

    def _kept_outputs(self, state: StreamContext, key: ShapeKey) -> list[torch.Tensor]:
        """The stream's output buffers for these input shapes, least recently used dropped first."""
        outputs = state.outputs.get(key)
        if outputs is None:
            outputs = state.outputs[key] = self._new_outputs(state)
            while len(state.outputs) > self.CACHE_SHAPES:
                state.outputs.popitem(last=False)
        state.outputs.move_to_end(key)
        return outputs

    def _capture(
        self, fn: StageFn, static_inputs: tuple[torch.Tensor, ...]
    ) -> tuple[Any, tuple[torch.Tensor, ...]] | None:
        """The graph runner's capture for TensorRT: ``fn`` (an enqueue on the current stream's
        context) recorded on a side stream into a torch CUDA graph.

        One enqueue outside the capture first: it applies these shapes to the context (other
        shapes may have run on it since their first call), and TensorRT plans on the first
        enqueue after a shape change, which a capture must not contain. A context that says it
        cannot be captured on a stream, or a capture that fails, declines these shapes only
        (they run eagerly), as TensorRT may refuse some plans and not others.
        """
        stream = torch.cuda.current_stream(self.device)
        state = self._context_for(stream)
        capture_stream = torch.cuda.Stream(self.device)
        capturable = getattr(state.context, "is_stream_capturable", None)
        if capturable is not None and not capturable(capture_stream.cuda_stream):
            return None
        graph = torch.cuda.CUDAGraph()
        # No other call may change the context's shapes between the two enqueues.
        with state.lock:
            capture_stream.wait_stream(stream)
            with torch.cuda.stream(capture_stream):
                fn(*static_inputs)
            try:
                # Thread-local: other threads may be enqueueing on their own streams meanwhile.
                with torch.cuda.graph(graph, stream=capture_stream, capture_error_mode="thread_local"):
                    static_outputs = fn(*static_inputs)
            except RuntimeError as e:
                logger.info("%s: CUDA graph capture failed (%s); running without one", self.name, e)
                return None
            finally:
                stream.wait_stream(capture_stream)
        return graph.replay, tuple(static_outputs)
