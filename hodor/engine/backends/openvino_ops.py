"""The engine's own OpenVINO operations, built on first use for the OpenVINO backend.

``openvino_ops.cpp`` beside this file defines three small operations that OpenVINO runs inside a
stage's graph: ``HodorDeformColumns`` (the sampling half of a deformable convolution in bf16 stages,
used by :mod:`hodor.engine.backends.deform_columns`), and ``HodorWinogradTiles`` and
``HodorWinogradUntile`` (the transforms of a 3x3 convolution as Winograd, F(6x6, 3x3) in fp32
stages and F(3x3, 3x3) in bf16 ones, used by :mod:`hodor.engine.backends.winograd_conv`). Between
them OpenVINO runs the matrix products with its own kernels; what the operations do is move and
add values, which OpenVINO's graph operations do with more passes over memory.

The library is compiled on first use with the machine's C++ compiler (``$CXX``, else ``c++`` or
``g++``) against the headers and libraries the ``openvino`` package ships, for this CPU
(``-march=native``), and kept in ``$XDG_CACHE_HOME/hodor-engine/openvino-ext/`` (by default
``~/.cache/...``), keyed by the source, the OpenVINO version, the compiler and the CPU; entries no
start used for :data:`~hodor.engine.backends.export_files.CACHE_IDLE_DAYS` days are removed. Where
it cannot be built (no compiler, not Linux, a failed build), :func:`extension_library` raises
:class:`ExtensionUnavailable` and the backend keeps OpenVINO's own operations (in fp32 the
Winograd convolutions in graph operations, slower), with a warning saying why.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from hodor.engine.native_library import ExtensionUnavailable, build_library
from hodor.engine.pipeline.kernel_cache import user_cache_dir

SOURCE = Path(__file__).with_name("openvino_ops.cpp")
OP_DOMAIN = "ai.hodor"
CACHE_NAME = "openvino-ext"
LIBRARY_NAME = re.compile(r"(?:hodor_ops|deform_columns)\.[0-9a-f]{16}\.so")
"""The library's file names, and those of earlier versions (one operation, under another name),
pruned alike."""


def extension_library(cache_root: Path | None = None) -> Path:
    """The built operations' library for this machine: found in the cache, or compiled now (a few
    seconds, once). Raises :class:`ExtensionUnavailable` when it cannot be."""
    if not sys.platform.startswith("linux"):
        raise ExtensionUnavailable(
            f"the engine's OpenVINO operations are built on Linux only, not on {sys.platform}"
        )
    import openvino

    ov_dir = Path(openvino.__file__).parent
    include = ov_dir / "include"
    libs = ov_dir / "libs"
    libraries = sorted(libs.glob("libopenvino.so.*")) + sorted(libs.glob("libtbb.so.*"))
    if not (include / "openvino" / "op" / "op.hpp").is_file() or len(libraries) < 2:
        raise ExtensionUnavailable(f"the openvino package at {ov_dir} has no C++ headers or libraries")
    return build_library(
        SOURCE,
        "hodor_ops",
        cache_root if cache_root is not None else user_cache_dir() / CACHE_NAME,
        LIBRARY_NAME,
        "the OpenVINO operations",
        options=["-I", str(include), *map(str, libraries), f"-Wl,-rpath,{libs}"],
        key_parts=[openvino.__version__, str(ov_dir)],
    )


def declare_domain(model: onnx.ModelProto) -> None:
    """Make ``model`` import the operations' domain (once)."""
    if not any(opset.domain == OP_DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(OP_DOMAIN, 1))


def bf16_tensor(name: str, values: np.ndarray) -> onnx.TensorProto:
    """``values`` (float32) as an ONNX bfloat16 constant, rounded to nearest, ties to even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return helper.make_tensor(name, TensorProto.BFLOAT16, values.shape, rounded.tobytes(), raw=True)
