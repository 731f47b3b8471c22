"""The TensorRT stage engine's bookkeeping on the CPU: an execution context per CUDA stream, output
buffers, and CUDA graphs through the shared graph runner.

TensorRT and CUDA are replaced by stand-ins: a fake engine whose contexts compute ``y = 2x + 1``
from the addresses bound to them (CPU tensors, read through ctypes), fake streams, and the graph
runner's capture stand-in. What needs a GPU is in ``test_tensorrt_runtime.py``.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hodor.engine.backends.tensorrt.flavours import Flavour
from hodor.engine.backends.tensorrt.stage_engine import StageEngine
from tests.test_engine_cuda_graphs import FakeCapture

FAKE_TRT = SimpleNamespace(TensorIOMode=SimpleNamespace(INPUT="input", OUTPUT="output"))
CAPTURE = threading.local()  # .graph: the FakeGraph being captured on this thread, if any
FLAVOUR = Flavour(name="tensorrt", module=FAKE_TRT, version="0")  # type: ignore[arg-type]
MAX_ROWS = 8


def _view(address: int, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * count).from_address(address)).reshape(shape)


class FakeContext:
    """An execution context: shapes and addresses set, then ``execute_async_v3`` computes from them.
    Fails loudly if two threads use it at once (a real context would mix up their calls)."""

    def __init__(self, capturable: bool = True) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.streams: list[int] = []
        self.capturable = capturable
        self._busy = threading.Lock()

    @contextmanager
    def _exclusive(self):
        if not self._busy.acquire(blocking=False):
            raise AssertionError("two threads used one execution context at once")
        try:
            time.sleep(0.0005)  # widen the window in which a second user would be caught
            yield
        finally:
            self._busy.release()

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        with self._exclusive():
            if shape[0] > MAX_ROWS:
                return False
            if getattr(CAPTURE, "graph", None) is not None and self.shapes.get(name) != shape:
                raise AssertionError("input shapes changed inside a capture (TensorRT plans then)")
            self.shapes[name] = shape
            return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes["x"]

    def set_tensor_address(self, name: str, address: int) -> None:
        with self._exclusive():
            self.addresses[name] = address

    def execute_async_v3(self, stream: int) -> bool:
        with self._exclusive():
            shape, x, y = self.shapes["x"], self.addresses["x"], self.addresses["y"]

            def work() -> None:
                _view(y, shape)[...] = 2 * _view(x, shape) + 1

            graph = getattr(CAPTURE, "graph", None)
            if graph is not None:
                graph.work.append(work)  # recorded with these addresses, as a CUDA graph does
            else:
                work()
            self.streams.append(stream)
            return True

    def is_stream_capturable(self, stream: int) -> bool:
        return self.capturable


class FakeEngine:
    num_io_tensors = 2

    def __init__(self) -> None:
        self.contexts: list[FakeContext] = []

    def get_tensor_name(self, i: int) -> str:
        return ("x", "y")[i]

    def get_tensor_mode(self, name: str) -> str:
        return FAKE_TRT.TensorIOMode.INPUT if name == "x" else FAKE_TRT.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(name="FLOAT")

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [(1, 4), (2, 4), (MAX_ROWS, 4)]

    def create_execution_context(self) -> FakeContext:
        self.contexts.append(FakeContext())
        return self.contexts[-1]


class FakeStream:
    _handles = itertools.count(100)

    def __init__(self, device=None, handle: int | None = None) -> None:
        self.cuda_stream = next(self._handles) if handle is None else handle
        self.waited_for: list[int] = []

    def wait_stream(self, other: FakeStream) -> None:
        self.waited_for.append(other.cuda_stream)


LEGACY_DEFAULT = FakeStream(handle=0)


@pytest.fixture
def fake_streams(monkeypatch):
    """torch.cuda's stream calls, on fake streams: each thread starts on the legacy default stream."""
    current = threading.local()

    @contextmanager
    def use(stream):
        before = getattr(current, "stream", LEGACY_DEFAULT)
        current.stream = stream
        try:
            yield
        finally:
            current.stream = before

    def current_stream(device=None):
        return getattr(current, "stream", LEGACY_DEFAULT)

    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    monkeypatch.setattr(torch.cuda, "stream", use)
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    return use


class FakeGraph:
    """``torch.cuda.CUDAGraph``: replays the work recorded while it was being captured."""

    def __init__(self) -> None:
        self.work: list = []

    def replay(self) -> None:
        for work in self.work:
            work()


@pytest.fixture
def fake_graphs(monkeypatch, fake_streams):
    """torch.cuda.graph / CUDAGraph over FakeGraph: what runs inside a capture is recorded."""

    @contextmanager
    def capture(graph, stream=None, capture_error_mode="global"):
        assert capture_error_mode == "thread_local"  # other threads keep enqueueing meanwhile
        with fake_streams(stream):
            CAPTURE.graph = graph
            try:
                yield
            finally:
                CAPTURE.graph = None

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", capture)


def stage_engine(**options) -> tuple[StageEngine, FakeEngine]:
    engine = FakeEngine()
    options.setdefault("capture", FakeCapture())
    return StageEngine(FLAVOUR, engine, "fake.engine", torch.device("cpu"), **options), engine


def rows(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))


def test_each_stream_gets_its_own_context(fake_streams):
    stage, engine = stage_engine(cuda_graphs=False)
    assert stage.contexts == 1  # made at load, so that an engine without contexts fails there
    a, b = FakeStream(), FakeStream()
    for stream in (a, b, a):
        with fake_streams(stream):
            stage(x=rows(2, 0))
    stage(x=rows(2, 0))  # the legacy default stream: a private stream, ordered with the caller's
    assert stage.contexts == len(engine.contexts) == 3
    used = [sorted(set(c.streams)) for c in engine.contexts]
    assert used[0] == [a.cuda_stream] and used[1] == [b.cuda_stream]
    private = used[2]
    assert len(private) == 1 and private[0] not in (0, a.cuda_stream, b.cuda_stream)
    assert LEGACY_DEFAULT.waited_for[-1] == private[0]


def test_results_and_output_buffers(fake_streams):
    """Kept outputs: one buffer per stream and shapes, overwritten by the next call there. Fresh
    outputs: every call its own tensor. Both right for every call."""
    kept, _ = stage_engine(cuda_graphs=False, reuse_outputs=True)
    fresh, _ = stage_engine(cuda_graphs=False, reuse_outputs=False)
    a, b = FakeStream(), FakeStream()
    with fake_streams(a):
        (first,) = kept(x=rows(3, 1))
        torch.testing.assert_close(first, 2 * rows(3, 1) + 1)
        (again,) = kept(x=rows(3, 2))
        assert again.data_ptr() == first.data_ptr()
        torch.testing.assert_close(again, 2 * rows(3, 2) + 1)
        (other_shape,) = kept(x=rows(2, 3))
        assert other_shape.data_ptr() != first.data_ptr()
    with fake_streams(b):
        (on_b,) = kept(x=rows(3, 4))
        assert on_b.data_ptr() != first.data_ptr()
    with fake_streams(a):
        (f1,) = fresh(x=rows(3, 5))
        (f2,) = fresh(x=rows(3, 6))
    assert f1.data_ptr() != f2.data_ptr()
    torch.testing.assert_close(f1, 2 * rows(3, 5) + 1)
    with pytest.raises(ValueError, match="outside the engine's profile"):
        fresh(x=rows(MAX_ROWS + 1, 0))


@pytest.mark.parametrize("reuse_outputs", [False, True])
def test_repeating_shapes_are_captured_and_replayed_by_the_graph_runner(fake_streams, reuse_outputs):
    capture = FakeCapture()
    stage, _ = stage_engine(capture=capture, reuse_outputs=reuse_outputs)
    with fake_streams(FakeStream()):
        results = []
        for call, n in enumerate([2, 2, 2, 3, 2, 3, 3]):
            (y,) = stage(x=rows(n, call))
            torch.testing.assert_close(y, 2 * rows(n, call) + 1, msg=f"call {call}")
            results.append(y.clone())
    stats = stage.graphs.stats
    # n=2: warm-up, capture + replay, replay, replay; n=3: warm-up, capture + replay, replay.
    assert (stats.eager, stats.captures, stats.replays) == (2, 2, 5)
    assert len(capture.captured) == 2


def test_graphs_off_for_tensorrt_for_rtx(fake_streams):
    """TensorRT for RTX captures its own graphs: the runner stays eager for it."""
    engine = FakeEngine()
    engine.create_runtime_config = lambda: SimpleNamespace()  # type: ignore[attr-defined]
    engine.create_execution_context = lambda config=None: FakeContext()  # type: ignore[method-assign]
    module = SimpleNamespace(**vars(FAKE_TRT), CudaGraphStrategy=SimpleNamespace(WHOLE_GRAPH_CAPTURE="whole"))
    rtx = Flavour(name="rtx", module=module, version="0")  # type: ignore[arg-type]
    stage = StageEngine(rtx, engine, "fake.engine", torch.device("cpu"), capture=FakeCapture())
    assert not stage.graphs.enabled and stage.runtime_config.cuda_graph_strategy == "whole"


def test_threads_on_their_own_streams_never_share_a_context(fake_streams):
    stage, engine = stage_engine(cuda_graphs=False, reuse_outputs=True)
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def video(seed: int) -> None:
        try:
            with fake_streams(FakeStream()):
                start.wait()
                for call in range(30):
                    x = rows(2 + call % 3, seed * 100 + call)
                    (y,) = stage(x=x)
                    torch.testing.assert_close(y, 2 * x + 1)
        except BaseException as exc:  # re-raised below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=video, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert stage.contexts == 3 and len(engine.contexts) == 3


@pytest.mark.parametrize("reuse_outputs", [False, True])
def test_the_engines_own_capture_applies_shapes_before_capturing(fake_graphs, fake_streams, reuse_outputs):
    """The TensorRT capture (not the stand-in): shapes that ran since a set's first call are
    re-applied by an enqueue outside the capture, so nothing is planned inside it; replays of
    the recorded work compute each call's inputs."""
    stage, engine = stage_engine(capture=None, reuse_outputs=reuse_outputs)
    with fake_streams(FakeStream()):
        for call, n in enumerate([2, 3, 2, 2, 3, 3, 2]):
            (y,) = stage(x=rows(n, call))
            torch.testing.assert_close(y, 2 * rows(n, call) + 1, msg=f"call {call}")
    stats = stage.graphs.stats
    assert (stats.eager, stats.captures, stats.replays, stats.declined) == (2, 2, 5, 0)


def test_shapes_tensorrt_cannot_capture_run_eagerly(fake_graphs, fake_streams):
    stage, engine = stage_engine(capture=None)
    for context in engine.contexts:
        context.capturable = False
    with fake_streams(FakeStream()):
        for call in range(4):
            (y,) = stage(x=rows(2, call))
            torch.testing.assert_close(y, 2 * rows(2, call) + 1)
    stats = stage.graphs.stats
    assert (stats.declined, stats.captures, stats.eager) == (1, 0, 4) and stage.graphs.failure is None
