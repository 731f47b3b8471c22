"""The decoder's deformable convolutions in bf16 on OpenVINO: sampled columns, then one bf16 product.

OpenVINO's ``DeformableConvolution`` (what :mod:`hodor.engine.backends.native_deform_conv` hands
the decoder's deformable convolutions to) has an fp32 kernel only: with ``--precision bf16`` its
products, 37 of the decoder's 102 GFLOP at 480p, stay fp32, the largest piece of a bf16 frame.
Here each ``DeformConv`` node (as that rewrite writes it) becomes

    x -> Transpose (channels last) -> HodorDeformColumns(x, offsets) -> MatMul(weights) -> + bias -> NCHW

``HodorDeformColumns`` (``deform_columns.cpp`` beside this file) is a small OpenVINO operation that
samples every tap of every pixel bilinearly at its offset position, zeros outside, and writes the
samples channels last, in bf16; OpenVINO then runs the product with the weights ``[(i, j, c), o]``
as a bf16 matrix product. The sampling is the same function as the model's (checked against it in
``tests/test_deform_columns.py``); the sampled values and the weights are rounded to bf16 as every
other product of a bf16 stage is.

The operation is compiled on first use with the machine's C++ compiler (``$CXX``, else ``c++`` or
``g++``) against the headers and libraries the ``openvino`` package ships, for this CPU
(``-march=native``), and kept in ``$XDG_CACHE_HOME/hodor-engine/openvino-ext/`` (by default
``~/.cache/...``), keyed by the source, the OpenVINO version, the compiler and the CPU; entries no
start used for :data:`~hodor.engine.backends.export_files.CACHE_IDLE_DAYS` days are removed. Where
it cannot be built (no compiler, not Linux, a failed build), :func:`extension_library` raises
:class:`ExtensionUnavailable` and the backend keeps OpenVINO's fp32 ``DeformableConvolution``, with
a warning saying why.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hodor.engine.backends.export_files import cpu_flags, mark_used, prune_idle, writable_cache_dir
from hodor.engine.backends.onnx_edit import Replacement, rewrite_each
from hodor.engine.io.files import atomic_write
from hodor.engine.pipeline.kernel_cache import user_cache_dir

SOURCE = Path(__file__).with_name("deform_columns.cpp")
OP_TYPE = "HodorDeformColumns"
OP_DOMAIN = "ai.hodor"
CACHE_NAME = "openvino-ext"
LIBRARY_NAME = re.compile(r"deform_columns\.[0-9a-f]{16}\.so")
BUILD_TIMEOUT_S = 300

_lock = threading.Lock()


class ExtensionUnavailable(RuntimeError):
    """The columns operation cannot be built or loaded here; the message says why."""


def _compiler() -> str:
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and (found := shutil.which(candidate)):
            return found
    raise ExtensionUnavailable("no C++ compiler found (set CXX, or install g++)")


@functools.cache  # asked once per process, not at every backend's start
def _compiler_version(compiler: str) -> str:
    try:
        done = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ExtensionUnavailable(f"the C++ compiler {compiler} does not run: {exc}") from None
    return done.stdout.splitlines()[0] if done.returncode == 0 and done.stdout else compiler


def extension_library(cache_root: Path | None = None) -> Path:
    """The built operation library for this machine: found in the cache, or compiled now (a few
    seconds, once). Raises :class:`ExtensionUnavailable` when it cannot be."""
    if not sys.platform.startswith("linux"):
        raise ExtensionUnavailable(f"the columns operation is built on Linux only, not on {sys.platform}")
    import openvino

    ov_dir = Path(openvino.__file__).parent
    include = ov_dir / "include"
    libs = ov_dir / "libs"
    libraries = sorted(libs.glob("libopenvino.so.*")) + sorted(libs.glob("libtbb.so.*"))
    if not (include / "openvino" / "op" / "op.hpp").is_file() or len(libraries) < 2:
        raise ExtensionUnavailable(f"the openvino package at {ov_dir} has no C++ headers or libraries")
    compiler = _compiler()
    key_text = "\n".join(
        [SOURCE.read_text(), openvino.__version__, _compiler_version(compiler), cpu_flags(), str(ov_dir)]
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    root = cache_root if cache_root is not None else user_cache_dir() / CACHE_NAME
    with _lock:
        target = root / f"deform_columns.{key}.so"
        if target.is_file():
            mark_used(target)
            return target
        if writable_cache_dir(root) is None:
            raise ExtensionUnavailable(f"no writable directory for the built operation at {root}")
        command = [
            compiler, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w",
            "-I", str(include), str(SOURCE), *map(str, libraries), f"-Wl,-rpath,{libs}",
        ]  # fmt: skip
        try:
            with atomic_write(target) as tmp:
                done = subprocess.run(
                    [*command, "-o", str(tmp)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
                )
                if done.returncode != 0:
                    said = " ".join((done.stderr or done.stdout).split())[-400:]
                    raise ExtensionUnavailable(f"{compiler} failed to build {SOURCE.name}: {said}")
        except subprocess.TimeoutExpired:
            took = f"{compiler} took over {BUILD_TIMEOUT_S} s to build {SOURCE.name}"
            raise ExtensionUnavailable(took) from None
        except OSError as exc:
            raise ExtensionUnavailable(f"could not build {SOURCE.name} into {root}: {exc}") from None
        prune_idle(root, LIBRARY_NAME, keep=target)
        return target


def rewrite_as_columns(model: onnx.ModelProto) -> int:
    """Replace, in place, every ``DeformConv`` node of ``model`` (stride 1, dilation 1, one group, no
    mask, square odd kernel, constant weights and bias: as
    :func:`~hodor.engine.backends.native_deform_conv.rewrite_deform_convs` writes them) by the
    columns operation in bf16 and a product; returns how many. Others are left as they are."""
    count = rewrite_each(model.graph, _as_columns)
    if not count:
        return 0
    if not any(opset.domain == OP_DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(OP_DOMAIN, 1))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < 15:
            opset.version = 15  # Shape's end attribute
    return count


def _as_columns(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> Replacement | None:
    """The nodes replacing ``node`` when it is a ``DeformConv`` this rewrite takes, else None."""
    if node.op_type != "DeformConv" or node.domain not in ("", "ai.onnx"):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    weight_init = initializers.get(node.input[1])
    bias_init = initializers.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if weight_init is None or bias_init is None or (len(node.input) > 4 and node.input[4]):
        return None
    weight = numpy_helper.to_array(weight_init)
    k = int(weight.shape[2]) if weight.ndim == 4 else 0
    plain = (
        weight.ndim == 4
        and weight.shape[2] == weight.shape[3]
        and k % 2 == 1
        and list(attrs.get("strides", [1, 1])) == [1, 1]
        and list(attrs.get("dilations", [1, 1])) == [1, 1]
        and attrs.get("group", 1) == 1
        and attrs.get("offset_group", 1) == 1
        and list(attrs.get("pads", [0] * 4)) == [k // 2] * 4
    )
    if not plain:
        return None
    return _columns_nodes(node, weight, numpy_helper.to_array(bias_init).reshape(-1))


def _columns_nodes(conv: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray) -> Replacement:
    """The nodes computing the ``DeformConv`` node ``conv`` as columns and a product (NCHW in and
    out, the same tensor names), and their constants."""
    out_ch, in_ch, k = int(weight.shape[0]), int(weight.shape[1]), int(weight.shape[2])
    prefix = f"{conv.name or conv.output[0]}/columns"
    constants = {
        # the weights [O, C, i, j] as [(i, j, c), O], the columns' order
        "weight": weight.transpose(2, 3, 1, 0).reshape(k * k * in_ch, out_ch).astype(np.float32),
        "bias": bias.astype(np.float32),
        "flat": np.array([0, -1, k * k * in_ch], np.int64),
        "channels": np.array([out_ch], np.int64),
    }
    initializers = [numpy_helper.from_array(value, f"{prefix}_{what}") for what, value in constants.items()]
    nodes: list[onnx.NodeProto] = []

    def op(kind: str, inputs: list[str], what: str, output: str | None = None, **attrs: object) -> str:
        name = f"{prefix}_{what}"
        out = output or f"{name}:0"
        nodes.append(helper.make_node(kind, inputs, [out], name=name, **attrs))
        return out

    x = op("Transpose", [conv.input[0]], "nhwc", perm=[0, 2, 3, 1])
    columns = op(OP_TYPE, [x, conv.input[2]], "sample", domain=OP_DOMAIN, kernel=k, pad=k // 2, bf16=1)
    grid = op("Shape", [columns], "grid", end=3)  # [N, H, W]
    # A float32 view for the product: in the bf16 stage OpenVINO reads the bf16 columns directly.
    flat = op("Reshape", [op("Cast", [columns], "cast", to=TensorProto.FLOAT), f"{prefix}_flat"], "flat")
    product = op("Add", [op("MatMul", [flat, f"{prefix}_weight"], "matmul"), f"{prefix}_bias"], "bias")
    nhwo = op("Reshape", [product, op("Concat", [grid, f"{prefix}_channels"], "shape", axis=0)], "unflat")
    op("Transpose", [nhwo], "nchw", output=conv.output[0], perm=[0, 3, 1, 2])
    return nodes, initializers
