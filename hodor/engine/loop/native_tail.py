"""The steady-state post-decode on the CPU as one compiled pass (``native_tail.cpp`` beside this).

:func:`~hodor.engine.loop.post_decode.masks_from_logits` in PyTorch makes each step a pass over
memory: the logits resampled to the padded frame (14 channels of 480x832 floats at 480p with 4
objects), their softmax, the frame-sized probabilities, the arg-max over them, and the softmax
upsampled again for the encoder's maps. About 24 ms a frame on two cores
(``benchmarks/cpu_tail.py``).

``native_tail.cpp`` computes the same values row by row: a padded row of probabilities is made
from two rows of logits interpolated across, soft-maxed and resampled across to the frame's
width, kept while the frame's rows that read it are made, and each frame row's arg-max is taken
as it is blended. The encoder's maps are made only where the last resampling reads them (a
sixteenth of the padded pixels). Nothing frame-sized is written but the id mask. The formulas
are PyTorch's, term for term, in the same order and fp32 rounding (bilinear weights and source
indices as PyTorch computes them, softmax as ``exp(z - max) / sum``); only ``exp`` is its own,
within about an ulp of PyTorch's. So the soft masks agree to fp32 rounding, and an id can
differ only where two channels' probabilities agree to about that precision
(``tests/test_native_tail.py``).

:func:`native_masks_from_logits` takes :func:`masks_from_logits`' arguments. It covers the
steady state: a frame with references, logits not float32 on the CPU, or a machine where the
library cannot be built (no C++ compiler; see :mod:`hodor.engine.native_library`, which builds
it on first use, once per machine) go to :func:`masks_from_logits`. ``HODOR_NATIVE_TAIL=0``
keeps PyTorch's path everywhere.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # post_decode imports this module
    from hodor.engine.loop.post_decode import DecodedMasks, FrameReferences

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native_tail.cpp")
CACHE_NAME = "native-tail"
LIBRARY_NAME = re.compile(r"native_tail\.[0-9a-f]{16}\.so")
OPT_OUT = "HODOR_NATIVE_TAIL"
"""Set to ``0`` to run the post-decode in PyTorch on the CPU too."""

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_unavailable: str | None = None  # why the library cannot be used, once known


def enabled() -> bool:
    """Whether the compiled post-decode is asked for (``HODOR_NATIVE_TAIL`` is not ``0``)."""
    return os.environ.get(OPT_OUT, "1").strip() != "0"


def library(cache_root: Path | None = None) -> ctypes.CDLL | None:
    """The compiled post-decode, built on first use; None where it cannot be (said once, as a
    warning with the reason)."""
    global _library, _unavailable
    if _library is not None or _unavailable is not None:
        return _library
    with _lock:
        if _library is None and _unavailable is None:
            try:
                _library = _load(cache_root)
            except (RuntimeError, OSError) as exc:  # ExtensionUnavailable is a RuntimeError
                _unavailable = str(exc)
                logger.warning("the CPU post-decode runs in PyTorch (slower): %s", _unavailable)
    return _library


def _load(cache_root: Path | None) -> ctypes.CDLL:
    from hodor.engine.native_library import build_library
    from hodor.engine.pipeline.kernel_cache import user_cache_dir

    root = cache_root if cache_root is not None else user_cache_dir() / CACHE_NAME
    path = build_library(
        SOURCE,
        "native_tail",
        root,
        LIBRARY_NAME,
        "the CPU post-decode",
        # Products and sums rounded as written (no fused multiply-adds): PyTorch's formulas.
        options=["-ffp-contract=off", "-pthread"],
    )
    lib = ctypes.CDLL(str(path))
    fn = lib.hodor_steady_tail
    i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    fn.argtypes = [p, i, i, i, i, p, p, i, i, i, i, i, i, i, f, f, f, f, f, f, p, p, p, i, p]
    fn.restype = ctypes.c_int
    return lib


@functools.cache
def openmp_parallel() -> int | None:
    """The address of ``GOMP_parallel`` in the OpenMP runtime PyTorch runs its CPU threads on (the
    one loaded from PyTorch's own directory, else any loaded), or None where none is found.

    The compiled pass runs its bands on that runtime's threads: they are the ones PyTorch's last
    operation left spinning, and threads of its own would have to share the cores with them (on
    two cores the second thread then gained nothing: 7.0 ms a frame at 480p against 3.5)."""
    try:
        with open("/proc/self/maps") as maps:
            loaded = {line.split()[-1] for line in maps if "/" in line}
    except OSError:
        return None
    runtimes = [path for path in loaded if _OPENMP_LIBRARY.match(os.path.basename(path))]
    torch_dir = str(Path(torch.__file__).resolve().parent)
    for path in sorted(runtimes, key=lambda path: (not path.startswith(torch_dir), path)):
        try:
            return ctypes.cast(ctypes.CDLL(path).GOMP_parallel, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
    return None


_OPENMP_LIBRARY = re.compile(r"lib(?:gomp|iomp5|omp)(?:[-.].*)?\.so(?:\.\d+)?$")


def _scale(in_size: int, out_size: int) -> float:
    """PyTorch's bilinear scale of a resize by size: ``in/out`` rounded to fp32 (as
    ``hodor.kernels.runtime_tail.resample_scale``, not imported from there: that module imports
    Triton where it is installed, 0.2 s at the first frame of a CPU session)."""
    return float(np.float32(in_size) / np.float32(out_size))


def native_masks_from_logits(
    logits: torch.Tensor,
    num_bg_channels: int,
    id_lookup: torch.Tensor,
    bg_grid: torch.Tensor,
    resized_size: tuple[int, int],
    frame_size: tuple[int, int],
    references: FrameReferences | None = None,
) -> DecodedMasks:
    """:func:`~hodor.engine.loop.post_decode.masks_from_logits` (same arguments and result), the
    steady state computed by the compiled pass where it can run (see the module)."""
    from hodor.engine.loop.post_decode import DECODER_STRIDE, ENCODER_STRIDE, DecodedMasks, masks_from_logits

    lib = None
    if (
        references is None
        and logits.device.type == "cpu"
        and logits.dtype == torch.float32
        and bg_grid.dtype == torch.float32
        and bg_grid.device.type == "cpu"
        and id_lookup.dtype == torch.uint8
        and id_lookup.device.type == "cpu"
        and logits.shape[0] == 1
        and enabled()
    ):
        lib = library()
    if lib is None:
        return masks_from_logits(
            logits, num_bg_channels, id_lookup, bg_grid, resized_size, frame_size, references
        )
    q, h, w = logits.shape[1:]
    hp, wp = h * DECODER_STRIDE, w * DECODER_STRIDE
    h8, w8 = hp // ENCODER_STRIDE, wp // ENCODER_STRIDE
    rh, rw = resized_size
    fh, fw = frame_size
    qb = bg_grid.shape[0]
    if not (0 < rh <= hp and 0 < rw <= wp and fh > 0 and fw > 0):
        raise ValueError(f"sizes do not fit: padded {(hp, wp)}, resized {resized_size}, frame {frame_size}")
    if tuple(bg_grid.shape[1:]) != (h8, w8) or id_lookup.numel() != q or not 0 <= num_bg_channels <= q:
        raise ValueError(
            f"the background grid {tuple(bg_grid.shape)}, id table ({id_lookup.numel()}) and "
            f"{num_bg_channels} background channels do not fit logits {tuple(logits.shape)}"
        )
    lg = logits[0].contiguous()
    ids = id_lookup.contiguous()
    grid = bg_grid.contiguous()
    id_mask = torch.empty(fh, fw, dtype=torch.uint8)
    fg = torch.empty(q - num_bg_channels, h8, w8, dtype=torch.float32)
    bg = torch.empty(qb, h8, w8, dtype=torch.float32)
    failed = lib.hodor_steady_tail(
        lg.data_ptr(), q, h, w, num_bg_channels, ids.data_ptr(), grid.data_ptr(), qb,
        hp, wp, rh, rw, fh, fw,
        _scale(h, hp), _scale(w, wp), _scale(rh, fh), _scale(rw, fw), _scale(hp, h8), _scale(wp, w8),
        id_mask.data_ptr(), fg.data_ptr(), bg.data_ptr(), torch.get_num_threads(), openmp_parallel(),
    )  # fmt: skip
    if failed:
        raise MemoryError("the CPU post-decode could not allocate its rows")
    return DecodedMasks(id_mask=id_mask, fg=fg, bg=bg)
