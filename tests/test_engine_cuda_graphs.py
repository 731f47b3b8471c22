"""CUDA graphs of the per-frame stages: the runner's bookkeeping on the CPU with a stand-in
capture, and replay against eager execution on a GPU where one is present."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from hodor.engine.backends.cuda_graphs import CudaGraphRunner, CudaGraphWarning, capture_cuda_graph
from hodor.engine.backends.torch_backend import TorchBackend
from hodor.engine.loop.session import VideoSession
from hodor.model import HodorNet
from tests.engine_fake_backend import small_config

NO_CUDA = "needs an NVIDIA GPU (torch.cuda.is_available() is False here)"


class FakeCapture:
    """Stands in for ``capture_cuda_graph``: "replaying" recomputes ``fn`` on the static inputs
    and writes into the static outputs, as a graph does; records what it was given."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.captured: list[tuple[torch.Tensor, ...]] = []

    def __call__(self, fn, static_inputs):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captured.append(static_inputs)
        static_outputs = tuple(fn(*static_inputs))

        def replay() -> None:
            for out, new in zip(static_outputs, fn(*static_inputs), strict=True):
                out.copy_(new)

        return replay, static_outputs


def stage(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (x * 2 + y, x.sum(0, keepdim=True))


def test_first_call_warms_up_second_captures_later_ones_replay():
    capture = FakeCapture()
    runner = CudaGraphRunner(enabled=True, capture=capture)
    x, y = torch.arange(6.0).reshape(2, 3), torch.ones(2, 3)
    outs = [runner("decode", stage, x + i, y) for i in range(4)]
    for i, out in enumerate(outs):
        for got, want in zip(out, stage(x + i, y), strict=True):
            assert torch.equal(got, want), f"call {i}"
    assert (runner.stats.eager, runner.stats.captures, runner.stats.replays) == (1, 1, 3)
    assert len(capture.captured) == 1


def test_replays_read_new_inputs_and_return_clones():
    capture = FakeCapture()
    runner = CudaGraphRunner(enabled=True, capture=capture)
    x, y = torch.zeros(2, 3), torch.zeros(2, 3)
    runner("encode", stage, x, y)
    second = runner("encode", stage, x + 1, y)
    third = runner("encode", stage, x + 5, y)
    # The session keeps descriptors for several frames: a replay must not change earlier results.
    assert torch.equal(second[0], torch.full((2, 3), 2.0))
    assert torch.equal(third[0], torch.full((2, 3), 10.0))
    static_inputs = capture.captured[0]
    assert torch.equal(static_inputs[0], x + 5)  # the inputs were copied into the static buffers
    assert all(a is not b for a in third for b in static_inputs)


def test_one_graph_per_stage_and_shape():
    capture = FakeCapture()
    runner = CudaGraphRunner(enabled=True, capture=capture)
    a = (torch.zeros(2, 3), torch.zeros(2, 3))
    b = (torch.zeros(4, 3), torch.zeros(4, 3))  # e.g. another object count
    c = (torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64))
    for _ in range(3):
        for inputs in (a, b, c):
            runner("encode", stage, *inputs)
        runner("decode", stage, *a)
    assert runner.stats.captures == 4  # (encode, a), (encode, b), (encode, c), (decode, a)
    assert runner.stats.eager == 4 and runner.stats.replays == 8
    assert CudaGraphRunner.key("encode", a) != CudaGraphRunner.key("decode", a)
    assert CudaGraphRunner.key("encode", a) != CudaGraphRunner.key("encode", c)


def test_shapes_seen_once_are_never_captured():
    """While the history fills up (T = 1, 2, ... window+1) every decode shape is new: no graph
    is captured for them, only for the shape that then repeats."""
    runner = CudaGraphRunner(enabled=True, capture=FakeCapture())
    for t in range(1, 5):
        runner("decode", stage, torch.zeros(t, 3), torch.zeros(t, 3))
    assert runner.stats.captures == 0 and runner.stats.eager == 4
    runner("decode", stage, torch.zeros(4, 3), torch.zeros(4, 3))
    assert runner.stats.captures == 1


def test_least_recently_used_graphs_are_dropped():
    runner = CudaGraphRunner(enabled=True, capture=FakeCapture(), max_graphs=2)
    shapes = [(1, 3), (2, 3), (3, 3)]
    for shape in shapes:
        for _ in range(2):
            runner("encode", stage, torch.zeros(shape), torch.zeros(shape))
    assert runner.stats.captures == 3 and runner.stats.evictions == 1
    # (1, 3) was dropped: seen again, it warms up and is captured anew.
    runner("encode", stage, torch.zeros(1, 3), torch.zeros(1, 3))
    assert runner.stats.captures == 3
    runner("encode", stage, torch.zeros(1, 3), torch.zeros(1, 3))
    assert runner.stats.captures == 4 and runner.stats.evictions == 2
    with pytest.raises(ValueError):
        CudaGraphRunner(enabled=True, max_graphs=0)


def test_a_failed_capture_falls_back_to_eager_with_one_warning():
    capture = FakeCapture(fail=True)
    runner = CudaGraphRunner(enabled=True, capture=capture)
    x, y = torch.ones(2, 3), torch.ones(2, 3)
    runner("encode", stage, x, y)
    with pytest.warns(CudaGraphWarning, match="encode stage failed.*running the stages eagerly") as caught:
        out = runner("encode", stage, x, y)
    assert len(caught) == 1
    assert torch.equal(out[0], stage(x, y)[0])
    assert "operation not permitted" in runner.failure
    capture.fail = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, and no second attempt
        for _ in range(3):
            runner("encode", stage, x, y)
            runner("decode", stage, x, y)
    assert capture.captured == [] and runner.stats.captures == 0 and runner.stats.replays == 0


def test_disabled_runner_is_eager():
    capture = FakeCapture()
    runner = CudaGraphRunner(enabled=False, capture=capture)
    for _ in range(3):
        runner("encode", stage, torch.ones(2, 3), torch.ones(2, 3))
    assert capture.captured == [] and runner.stats.eager == 3


def test_inputs_written_into_the_graphs_buffers_are_not_copied():
    """A caller that produces its next inputs in the graph's own input buffers saves the copy."""
    runner = CudaGraphRunner(enabled=True, capture=FakeCapture())
    x, y = torch.zeros(2, 3), torch.ones(2, 3)
    assert runner.input_buffers("decode", x, y) is None  # nothing captured yet
    runner("decode", stage, x, y)
    runner("decode", stage, x, y)  # captured (the inputs copied into fresh buffers)
    copies = runner.stats.input_copies
    buffers = runner.input_buffers("decode", x, y)
    assert buffers is not None and all(b is not t for b, t in zip(buffers, (x, y), strict=True))
    for i in range(3):
        buffers[0].fill_(float(i))
        buffers[1].copy_(torch.arange(6.0).reshape(2, 3))
        out = runner("decode", stage, *buffers)
        want = stage(torch.full((2, 3), float(i)), torch.arange(6.0).reshape(2, 3))
        for got, expected in zip(out, want, strict=True):
            assert torch.equal(got, expected), f"call {i}"
    assert runner.stats.input_copies == copies and runner.stats.inputs_in_place == 6
    # One input in place, the other the caller's own: only that one is copied.
    out = runner("decode", stage, buffers[0], y)
    assert torch.equal(out[0], buffers[0] * 2 + y)
    assert runner.stats.input_copies == copies + 1
    assert runner.input_buffers("decode", torch.zeros(3, 3), y) is None  # other shapes: another graph


def test_callers_that_reuse_their_tensors_are_still_copied():
    """Tensors the caller keeps and changes in place between calls: each call sees its values then."""
    runner = CudaGraphRunner(enabled=True, capture=FakeCapture())
    x, y = torch.zeros(2, 3), torch.ones(2, 3)
    kept = []
    for i in range(4):
        x.fill_(float(i))  # the same tensor, new values
        kept.append(runner("encode", stage, x, y)[0])
    for i, out in enumerate(kept):
        assert torch.equal(out, torch.full((2, 3), 2.0 * i + 1)), f"call {i}"
    assert runner.stats.replays == 3 and runner.stats.inputs_in_place == 0


def test_static_outputs_on_request():
    """``clone_outputs=False``: a replay hands out the graph's outputs, which the next replay overwrites."""
    runner = CudaGraphRunner(enabled=True, capture=FakeCapture())
    x, y = torch.zeros(2, 3), torch.zeros(2, 3)
    runner("decode", stage, x, y, clone_outputs=False)  # eager: a tensor of its own
    first = runner("decode", stage, x + 1, y, clone_outputs=False)
    second = runner("decode", stage, x + 2, y, clone_outputs=False)
    assert first[0] is second[0] and torch.equal(second[0], torch.full((2, 3), 4.0))
    cloned = runner("decode", stage, x + 3, y)
    assert cloned[0] is not second[0] and torch.equal(cloned[0], second[0])


def test_shapes_the_capture_declines_run_eagerly_and_others_are_still_captured():
    """A capture function may turn down one set of shapes (TensorRT refusing a plan): no warning,
    those shapes run eagerly from then on, and other shapes are captured."""

    class Picky(FakeCapture):
        def __call__(self, fn, static_inputs):
            if static_inputs[0].shape[0] == 4:
                return None
            return super().__call__(fn, static_inputs)

    runner = CudaGraphRunner(enabled=True, capture=Picky())
    big, small = torch.ones(4, 3), torch.ones(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(4):
            assert torch.equal(runner("encode", stage, big, big)[0], big * 3)
            assert torch.equal(runner("encode", stage, small, small)[0], small * 3)
    assert runner.failure is None and runner.stats.declined == 1
    assert (runner.stats.captures, runner.stats.replays) == (1, 3)
    assert runner.stats.eager == 4 + 1  # big: every call; small: the warm-up


def test_a_fed_runner_reads_its_feeders_outputs_in_place():
    """Stages that feed each other: the consumer captures the producer's static outputs as its own
    inputs, so that later replays copy nothing, and an input from elsewhere is still copied in."""
    producer = CudaGraphRunner(enabled=True, capture=FakeCapture())
    consumer = CudaGraphRunner(enabled=True, capture=FakeCapture(), feeds_from=producer)

    def produce(x):
        return (x + 1, x * 3)

    def frame(i):
        a, b = producer("backbone", produce, torch.full((2, 3), float(i)), clone_outputs=False)
        return a, b, consumer("decode", stage, a, b)

    for i in range(6):
        a, b, out = frame(i)
        want = stage(torch.full((2, 3), i + 1.0), torch.full((2, 3), 3.0 * i))
        for got, expected in zip(out, want, strict=True):
            assert torch.equal(got, expected), f"frame {i}"
    # Both eager at frame 0 (the first call with a shape); at frame 1 the producer is captured and
    # hands out its static outputs, and the consumer is captured with those as its inputs:
    # replayed in place from then on.
    assert consumer.stats.inputs_adopted == 2 and consumer.stats.input_copies == 0
    assert consumer.stats.replays == 5 and consumer.stats.inputs_in_place == 2 * 5
    assert producer.static_output(a) and not producer.static_output(a.clone())
    # Inputs from elsewhere are copied into the shared buffers and computed on correctly.
    x, y = torch.full((2, 3), 7.0), torch.full((2, 3), 5.0)
    assert torch.equal(consumer("decode", stage, x, y)[0], x * 2 + y)
    assert consumer.stats.input_copies == 2
    a, b, out = frame(9)  # and the producer's next replay is read in place again
    assert torch.equal(out[0], torch.full((2, 3), 10.0) * 2 + 27.0)


def test_a_runner_does_not_adopt_tensors_it_was_not_fed():
    """Without ``feeds_from``, or for tensors that are not the feeder's static outputs (clones, views
    of a part), inputs are copied into buffers of the graph's own."""
    producer = CudaGraphRunner(enabled=True, capture=FakeCapture())
    consumer = CudaGraphRunner(enabled=True, capture=FakeCapture(), feeds_from=producer)
    unfed = CudaGraphRunner(enabled=True, capture=FakeCapture())
    for _ in range(3):
        (out,) = producer("backbone", lambda x: (x + 1,), torch.zeros(4, 3), clone_outputs=False)
        consumer("decode", stage, out[:2], out[2:])  # views of parts of the output: copied
        unfed("decode", stage, out, out)
    for runner in (consumer, unfed):
        assert runner.stats.replays == 2 and runner.stats.inputs_adopted == 0
        assert runner.stats.input_copies == 2 * 2 and runner.stats.inputs_in_place == 0


def tiny_backend(graphs: CudaGraphRunner | None, **options) -> TorchBackend:
    cfg = small_config(min_dim=32, max_dim=64)  # 32×48 frames, padded to 32×64: a 4×8 map at 1/8
    cfg = type(cfg)(
        input=cfg.input,
        model=type(cfg.model)(**{**cfg.model.__dict__, "encoder_layers": 1, "decoder_layers": 1}),
    )
    torch.manual_seed(0)
    return TorchBackend(HodorNet(cfg.model), cfg, torch.device("cpu"), graphs=graphs, **options)


def clip(n: int) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
    frames = []
    for t in range(n):
        f = np.full((32, 48, 3), 40, np.uint8)
        f[2:18, 2 + 2 * t : 18 + 2 * t] = (230, 50, 50)
        f[14:30, 30 - 2 * t : 46 - 2 * t] = (40, 200, 60)
        frames.append(f)
    mask = np.zeros((32, 48), np.uint8)
    mask[2:18, 2:18] = 1
    mask[14:30, 30:46] = 2
    return frames, {0: mask}


def test_torch_backend_through_the_runner_matches_eager_over_a_video():
    """The whole loop with graphed stages: every result equal to the eager run, graphs replayed.
    Without the copies into static inputs or the clones of outputs, later frames would differ."""
    frames, masks = clip(5)
    # A window of 2: frame t decodes with descriptors encoded at t - 2, which the encode replay
    # at t - 1 would have overwritten, were outputs not cloned.
    eager = list(VideoSession(tiny_backend(None), temporal_window=2).run(frames, masks))
    runner = CudaGraphRunner(enabled=True, capture=FakeCapture())
    graphed = list(VideoSession(tiny_backend(runner), temporal_window=2).run(frames, masks))
    for t, (a, b) in enumerate(zip(eager, graphed, strict=True)):
        assert np.array_equal(a, b), f"frame {t}"
    # encode (2 objects): seen at frame 0, captured at 1, replayed at 1..4;
    # decode: T = 2 at frame 1, T = 3 from frame 2 on: seen at 2, captured at 3, replayed at 3..4
    assert (runner.stats.captures, runner.stats.replays) == (2, 4 + 2)


def test_batched_stages_get_graphs_of_their_own_and_match_eager():
    """A batch of sessions through the runner: calls over two videos are captured apart from calls
    over one (the batch is part of the shapes), and every video's masks equal the eager batch's."""
    from hodor.engine import BatchSession

    frames, masks = clip(6)
    second = [f[:, ::-1].copy() for f in frames]  # another video of the same size
    flipped = masks[0][:, ::-1]
    references = {("a", 0): masks[0], ("b", 1): np.where(flipped == 2, flipped, 0)}  # b: one object

    def run(graphs: CudaGraphRunner | None) -> list[dict]:
        batch = BatchSession(tiny_backend(graphs), temporal_window=2)
        batch.add("a")
        batch.add("b")
        out = []
        for t in range(len(frames)):
            step_masks = {k: m for (k, at), m in references.items() if at == t}
            out.append(batch.step({"a": frames[t], "b": second[t]}, step_masks))
        return out

    eager = run(None)
    capture = FakeCapture()
    runner = CudaGraphRunner(enabled=True, capture=capture)
    graphed = run(runner)
    for t, (a, b) in enumerate(zip(eager, graphed, strict=True)):
        for k in ("a", "b"):
            assert np.array_equal(a[k], b[k]), f"video {k}, frame {t}"
    assert np.unique(graphed[-1]["b"]).tolist() == [0, 2]  # b tracks its one object
    captured_batches = [inputs[0].shape[0] for inputs in capture.captured]
    assert 1 in captured_batches and captured_batches.count(2) == 2  # encode and decode over both
    assert runner.stats.replays > 0 and runner.failure is None


def test_graphed_backbone_feeds_the_stages_in_place_and_matches_eager():
    """With the backbone in graphs, a frame stepped by the loop hands the backbone graph's own
    outputs to decode (and encode): their graphs read them without a copy. Masks equal the eager
    run's, also when stepping alternates with whole-clip runs (chunked features, copied in) and
    with another video on the same backend."""
    frames, masks = clip(8)
    other = [f[:, ::-1].copy() for f in frames]
    other_masks = {0: masks[0][:, ::-1].copy()}

    def run(backend: TorchBackend) -> list[np.ndarray]:
        a = VideoSession(backend, temporal_window=2)
        b = VideoSession(backend, temporal_window=2)
        out = [a.step(frames[t], masks.get(t)) for t in range(5)]
        for t in range(5):  # two videos stepped in turn on one backend
            out.append(b.step(other[t], other_masks.get(t)))
            out.append(a.step(frames[5 + t % 3]))
        out += list(VideoSession(backend, temporal_window=2, chunk=3).run(frames, masks))
        out += [b.step(other[5 + t]) for t in range(3)]
        return out

    eager = run(tiny_backend(None))
    runner = CudaGraphRunner(enabled=True, capture=FakeCapture())
    backbone_runner = CudaGraphRunner(enabled=True, capture=FakeCapture())
    backend = tiny_backend(runner, backbone="graphs", backbone_graphs=backbone_runner)
    assert runner.feeds_from is backbone_runner
    graphed = run(backend)
    for k, (x, y) in enumerate(zip(eager, graphed, strict=True)):
        assert np.array_equal(x, y), f"output {k}"
    assert runner.stats.inputs_adopted >= 2  # decode's f4 and f8 are the backbone graph's outputs
    assert runner.stats.inputs_in_place > 0 and backbone_runner.stats.replays > 0


# --------------------------------------------------------------------------- on a GPU


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_capture_cuda_graph_replays_new_inputs():
    x = torch.zeros(4, 8, device="cuda")
    y = torch.ones(4, 8, device="cuda")
    replay, (out, total) = capture_cuda_graph(stage, (x, y))
    x.copy_(torch.arange(32.0, device="cuda").reshape(4, 8))
    replay()
    torch.testing.assert_close(out, x * 2 + y, rtol=0, atol=0)
    torch.testing.assert_close(total, x.sum(0, keepdim=True), rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_graph_replay_equals_eager_on_cuda(parity_checkpoint, kernels):
    """Real captures of the parity model's encode and decode. Same kernels on the same inputs;
    held to a relative error of 1e-6 rather than bit equality, because a library may choose
    another algorithm for the capture stream."""
    from hodor.config import config_beside
    from hodor.engine.backends.torch_backend import open_torch_backend
    from hodor.kernels.testing import relative_error

    if kernels == "triton":
        pytest.importorskip("triton", reason="the fused kernels need the triton package")
    cfg = config_beside(parity_checkpoint)
    eager = open_torch_backend(parity_checkpoint, cfg, "cuda", kernels=kernels, cuda_graphs=False)
    graphed = open_torch_backend(parity_checkpoint, cfg, "cuda", kernels=kernels, cuda_graphs=True)
    g = torch.Generator().manual_seed(3)
    f4, f8 = eager.backbone(torch.randn(1, 3, 128, 224, generator=g).cuda())
    h, w = f8.shape[-2:]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CudaGraphWarning)
        for step in range(4):  # warm-up, capture + replay, replay, replay
            fg = (torch.rand(1, 3, h, w, generator=g) > 0.7).float().cuda()
            bg = torch.rand(1, 9, h, w, generator=g).cuda()
            for a, b in zip(graphed.encode(f8, fg, bg), eager.encode(f8, fg, bg), strict=True):
                assert relative_error(a, b) <= 1e-6, f"encode, call {step}"
            fg_hist = torch.randn(1, 3, 4, 256, generator=g).cuda()
            bg_hist = torch.randn(1, 9, 4, 256, generator=g).cuda()
            fg_invalid = torch.zeros(1, 3, 4, dtype=torch.bool, device="cuda")
            fg_invalid[0, step % 3, 0] = True
            bg_invalid = torch.zeros(1, 9, 4, dtype=torch.bool, device="cuda")
            bg_invalid[..., -1] = True
            args = (f4, f8, fg_hist, bg_hist, fg_invalid, bg_invalid)
            assert relative_error(graphed.decode(*args), eager.decode(*args)) <= 1e-6, f"decode, call {step}"
    assert graphed.graphs.failure is None
    assert graphed.graphs.stats.captures == 2 and graphed.graphs.stats.replays == 6


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_backbone_graph_feeds_the_stage_graphs_on_cuda(parity_checkpoint):
    """Real captures, backbone included, stepped frame by frame as a live source is: decode's
    graph reads the backbone graph's outputs in place, and the masks are those of the eager run
    (the same kernels on the same inputs; a library may pick another algorithm for a capture
    stream, so a rare pixel at a near tie may differ)."""
    from hodor.config import config_beside
    from hodor.engine.backends.torch_backend import open_torch_backend

    cfg = config_beside(parity_checkpoint)
    frames, masks = clip(6)
    runs = []
    for graphs in (False, True):
        backend = open_torch_backend(parity_checkpoint, cfg, "cuda", kernels="torch", cuda_graphs=graphs)
        session = VideoSession(backend, temporal_window=2)
        with warnings.catch_warnings():
            warnings.simplefilter("error", CudaGraphWarning)
            runs.append([session.step(f, masks.get(t)) for t, f in enumerate(frames)])
    for t, (a, b) in enumerate(zip(*runs, strict=True)):
        assert np.mean(a == b) >= 0.99, f"frame {t}"
    assert backend.backbone_mode == "graphs" and backend.graphs.feeds_from is backend.backbone_graphs
    assert backend.graphs.stats.inputs_adopted >= 2 and backend.graphs.stats.inputs_in_place > 0
