"""No host-device synchronisation in the per-frame loop once a video is in its steady state.

On the CPU, a recorder watches every tensor call the loop makes and lists those that would move
data between host and device, or make the host wait for the device, had the tensors been on a
GPU: reading values back (``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()``, truth tests),
tensors built from host data (``torch.tensor``, list indices), data-dependent shapes
(``nonzero``, ``unique``, boolean-mask indexing) and explicit moves (``.to(device)``). Frames
between references must make none of them. On a GPU, ``torch.cuda.set_sync_debug_mode("error")``
proves the same for real.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from hodor.engine.backends.cuda_graphs import CudaGraphRunner, CudaGraphWarning
from hodor.engine.loop.session import VideoSession
from tests.engine_fake_backend import FakeBackend, small_config

NO_CUDA = "needs an NVIDIA GPU (torch.cuda.is_available() is False here)"
H, W = 60, 90
WINDOW = 2
WARM_UP = 6  # frames until the window is full (and, on CUDA, every graph is captured)


def clip(n: int) -> list[np.ndarray]:
    frames = []
    for t in range(n):
        f = np.full((H, W, 3), 40, np.uint8)
        f[..., 2] = np.linspace(0, 120, W)[None].astype(np.uint8)
        f[10:30, 5 + 3 * t : 25 + 3 * t] = (250, 30, 30)
        f[35:55, max(0, 60 - 2 * t) : 80 - 2 * t] = (30, 250, 30)
        frames.append(f)
    return frames


def reference(boxes: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    for object_id, (y0, y1, x0, x1) in boxes.items():
        m[y0:y1, x0:x1] = object_id
    return m


MASKS = {0: reference({1: (10, 30, 5, 25)}), 3: reference({2: (35, 55, 54, 74)})}


# --------------------------------------------------------------------------- the recorder

_HOST_FUNCTIONS = {
    "cpu",
    "numpy",
    "tolist",
    "item",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "unique",
    "unique_consecutive",
    "nonzero",
    "argwhere",
    "masked_select",
    "tensor",
    "as_tensor",
    "cuda",
    "pin_memory",
}
_HOST_OPS = {
    "lift_fresh",  # a tensor made from host data (a list, a numpy array, a list index)
    "lift_fresh_copy",
    "_local_scalar_dense",  # a value read back
    "nonzero",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "masked_select",
    "equal",
    "is_nonzero",
}


def _name(func) -> str:
    return getattr(func, "__name__", str(func))


def _has_device_argument(args, kwargs) -> bool:
    return "device" in kwargs or any(isinstance(a, (str, torch.device)) for a in args[1:])


@dataclass
class HostTransfers:
    """What the watched code did that a GPU would have to synchronise or transfer for."""

    calls: list[str] = field(default_factory=list)

    def record(self, what: str) -> None:
        self.calls.append(what)

    @staticmethod
    @contextmanager
    def unwatched() -> Iterator[None]:
        """Stop watching (and slowing down) the calls made inside."""
        with torch._C.DisableTorchFunction(), _disable_current_modes():
            yield


class _FunctionRecorder(TorchFunctionMode):
    def __init__(self, log: HostTransfers) -> None:
        super().__init__()
        self.log = log

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        if name in _HOST_FUNCTIONS or (name == "to" and _has_device_argument(args, kwargs)):
            self.log.record(name)
        return func(*args, **kwargs)


class _OpRecorder(TorchDispatchMode):
    def __init__(self, log: HostTransfers) -> None:
        super().__init__()
        self.log = log

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in _HOST_OPS:
            self.log.record(f"aten.{name}")
        elif name in ("index", "index_put", "index_put_"):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(i is not None and i.dtype == torch.bool for i in indices):
                self.log.record(f"aten.{name} (boolean mask)")
        elif name == "_to_copy" and "device" in kwargs and kwargs["device"] != args[0].device:
            self.log.record("aten._to_copy (device)")
        return func(*args, **kwargs)


@contextmanager
def host_transfers() -> Iterator[HostTransfers]:
    log = HostTransfers()
    with _FunctionRecorder(log), _OpRecorder(log):
        yield log


@dataclass
class Unwatched:
    """A backend whose own calls the recorder does not count (the loop is under test, not the network)."""

    inner: object
    log: HostTransfers

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name not in ("backbone", "backbone_transient", "encode", "decode", "check_limits"):
            return attr

        def call(*args, **kwargs):
            with self.log.unwatched():
                return attr(*args, **kwargs)

        return call


def tiny_torch_backend(device: torch.device, **options):
    from hodor.engine.backends.torch_backend import TorchBackend
    from hodor.model import HodorNet

    cfg = small_config(min_dim=64, max_dim=96)
    model = type(cfg.model)(**{**cfg.model.__dict__, "encoder_layers": 1, "decoder_layers": 1})
    cfg = type(cfg)(input=cfg.input, model=model)
    torch.manual_seed(0)
    return TorchBackend(HodorNet(cfg.model).to(device), cfg, device, **options)


# --------------------------------------------------------------------------- the recorder itself


@pytest.mark.parametrize(
    "probe",
    [
        lambda x: x.sum().item(),
        lambda x: x.tolist(),
        lambda x: x.numpy(),
        lambda x: x.cpu(),
        lambda x: x.to("cpu"),
        lambda x: bool(x[0]),
        lambda x: torch.tensor([1, 2]),
        lambda x: x[[0, 2]],
        lambda x: x[x > 2],
        lambda x: x.nonzero(),
        lambda x: torch.unique(x),
    ],
    ids=[
        *("item", "tolist", "numpy", "cpu", "to", "bool"),
        *("tensor", "list-index", "mask-index", "nonzero", "unique"),
    ],
)
def test_the_recorder_sees_what_a_gpu_would_wait_for(probe):
    with host_transfers() as log:
        probe(torch.arange(6.0))
    assert log.calls


def test_the_recorder_lets_device_work_pass():
    x = torch.arange(6.0)
    with host_transfers() as log:
        y = torch.softmax(F.interpolate(x.reshape(1, 1, 2, 3), size=(4, 6), mode="bilinear"), 1)
        y.masked_fill_(y > 0.5, 0.0)
        y[0, 0, 1].fill_(2.0)
        y.argmax(0).roll(1, 1)
        torch.zeros(3, dtype=torch.uint8)[y.argmax(1)]
    assert log.calls == []


# --------------------------------------------------------------------------- the loop on the CPU


@pytest.mark.parametrize("network", ["stand-in", "torch"])
def test_the_steady_state_moves_nothing_between_host_and_device(network):
    device = torch.device("cpu")
    log = HostTransfers()
    inner = FakeBackend() if network == "stand-in" else tiny_torch_backend(device)
    session = VideoSession(Unwatched(inner, log), temporal_window=WINDOW)
    # The window is full from frame 2; objects last change at frame 3. The network is slow on the CPU.
    frames = [torch.from_numpy(f).to(device) for f in clip(11 if network == "stand-in" else 7)]
    per_frame: list[list[str]] = []
    with _FunctionRecorder(log), _OpRecorder(log):
        for t, frame in enumerate(frames):
            before = len(log.calls)
            session.step_device(frame, MASKS.get(t))
            per_frame.append(log.calls[before:])
    for t in MASKS:
        assert per_frame[t], f"frame {t} carries a reference: the recorder should see it read the mask"
    steady = {t: calls for t, calls in enumerate(per_frame) if t not in MASKS and t > max(MASKS)}
    assert steady and all(not calls for calls in steady.values()), steady


def test_step_hands_the_mask_over_once():
    """``step`` = ``step_device`` + the one download of the finished mask."""
    log = HostTransfers()
    session = VideoSession(Unwatched(FakeBackend(), log), temporal_window=WINDOW)
    frames = [torch.from_numpy(f) for f in clip(WARM_UP + 2)]
    with _FunctionRecorder(log), _OpRecorder(log):
        for t, frame in enumerate(frames[:WARM_UP]):
            session.step(frame, MASKS.get(t))
        before = len(log.calls)
        out = session.step(frames[WARM_UP])
    assert log.calls[before:] == ["cpu", "numpy"]
    assert isinstance(out, np.ndarray) and out.shape == (H, W) and out.dtype == np.uint8


def test_the_ring_and_the_id_lookup_are_not_rebuilt_per_frame():
    session = VideoSession(FakeBackend(), temporal_window=WINDOW)
    frames = clip(WARM_UP + 6)
    seen = []
    for t, frame in enumerate(frames):
        session.step_device(frame, MASKS.get(t))
        descriptors, invalid = session.ring.storage
        lookup = session._id_lookup(session.ring.ids)
        seen.append((descriptors.data_ptr(), invalid.data_ptr(), id(lookup)))
    steady = seen[max(MASKS) + 1 :]
    assert len(set(steady)) == 1, "the ring or the id lookup was re-created in the steady state"
    assert seen[0] != seen[-1]  # object 2 joining at frame 3 does rebuild them (rows change)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_device_api_gives_the_masks_of_step_and_run(as_tensor):
    frames = clip(10)
    given = [torch.from_numpy(f) for f in frames] if as_tensor else frames
    stepped = VideoSession(FakeBackend(), temporal_window=WINDOW)
    expected = [stepped.step(f, MASKS.get(t)) for t, f in enumerate(frames)]
    session = VideoSession(FakeBackend(), temporal_window=WINDOW)
    on_device = [session.step_device(f, MASKS.get(t)) for t, f in enumerate(given)]
    ran = list(VideoSession(FakeBackend(), temporal_window=WINDOW, chunk=4).run_device(given, MASKS))
    ran_numpy = list(VideoSession(FakeBackend(), temporal_window=WINDOW, chunk=4).run(frames, MASKS))
    assert expected[-1].any() and len(np.unique(expected[-1])) == 3  # both objects tracked
    for t in range(len(frames)):
        for got in (on_device[t], ran[t]):
            assert isinstance(got, torch.Tensor) and got.dtype == torch.uint8 and got.shape == (H, W)
            assert got.device == session.device
        assert np.array_equal(on_device[t].numpy(), expected[t]), f"frame {t}"
        assert np.array_equal(ran[t].numpy(), ran_numpy[t]), f"frame {t}"
    # Each frame's mask is its own tensor: later frames never write into an earlier one.
    assert len({m.data_ptr() for m in on_device}) == len(on_device)


# --------------------------------------------------------------------------- the loop on a GPU


class DeviceStandIn(FakeBackend):
    """The CPU stand-in network with its weights on a GPU (its stages make their tensors on the
    device of their inputs)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.w4 = self.w8 = self.w4.to(self.device)
        self.bias = self.bias.to(self.device)


def cuda_backend(network: str):
    device = torch.device("cuda")
    if network == "stand-in":
        return DeviceStandIn(device=device)
    from hodor.engine.backends.torch_backend import resolve_kernels
    from hodor.errors import HodorError

    kernels = "triton" if network == "torch-triton-graphs" else "torch"
    try:
        resolve_kernels(kernels, device)
    except HodorError as exc:
        pytest.skip(str(exc))
    return tiny_torch_backend(device, kernels=kernels, graphs=CudaGraphRunner(enabled=True))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("network", ["stand-in", "torch-graphs", "torch-triton-graphs"])
def test_no_host_sync_in_the_steady_state_on_cuda(network):
    """Frames already on the GPU; after the warm-up (window full, graphs captured) any call that makes
    the host wait for the device raises."""
    backend = cuda_backend(network)
    session = VideoSession(backend, temporal_window=WINDOW)
    frames = clip(WARM_UP + 6)
    on_gpu = [torch.from_numpy(f).cuda() for f in frames]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CudaGraphWarning)  # eager stages after a failed capture
        out = [session.step_device(f, MASKS.get(t)) for t, f in enumerate(on_gpu[:WARM_UP])]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out += [session.step_device(f) for f in on_gpu[WARM_UP:]]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    if network != "stand-in":
        assert backend.graphs.failure is None and backend.graphs.stats.replays > 0

    # The same masks as step() on numpy frames, with an identical backend (graph replays of a
    # library call may pick another algorithm than its eager run: hold those to run-vs-step agreement).
    stepped = VideoSession(cuda_backend(network), temporal_window=WINDOW)
    expected = [stepped.step(f, MASKS.get(t)) for t, f in enumerate(frames)]
    assert len(np.unique(expected[-1])) == 3
    for t, (got, want) in enumerate(zip(out, expected, strict=True)):
        got = got.cpu().numpy()
        if network == "stand-in":
            assert np.array_equal(got, want), f"frame {t}"
        else:
            assert (got == want).mean() >= 0.999, f"frame {t}"
