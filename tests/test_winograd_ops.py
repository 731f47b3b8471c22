"""Dense 3x3 convolutions as Winograd through the engine's OpenVINO operations
(:func:`hodor.engine.backends.winograd_conv.rewrite_winograd_ops`): F(6x6, 3x3) for fp32 stages,
F(3x3, 3x3) for bf16 ones, F(2x2, 3x3) and F(4x4, 3x3) on request; channels last or, with
``nchw``, first.

The operations are built here with the machine's C++ compiler (as the backend builds them on first
use). With every value kept float32 (``bf16=False``) the rewritten graph is the convolution to
float32 rounding: within 1e-5 of float64 (``max |a - b| / max |b|``) for F(2x2, 3x3), whose
transforms only add and subtract, 2e-5 for F(3x3, 3x3) and F(4x4, 3x3) (their transforms scale
values up and back), 5e-5 for F(6x6, 3x3) (which scales them further: about 2x F(4x4, 3x3)'s
error), at sizes odd and even, down to 1x1, batches of several. In bf16 F(2x2, 3x3)
within 1e-2 (about 6e-3 seen on these inputs), F(3x3, 3x3) within 5e-2, the bf16 stage limit
(2.6e-2 and 3.6e-2 seen by this max-based measure; about 6x a direct bf16 convolution's error);
the backend's stages in bf16 are held to 5e-2 by ``tests/test_openvino_backend.py`` and
``tests/test_deform_columns.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

pytest.importorskip("openvino", reason="the operations run in OpenVINO")

import openvino  # noqa: E402

from hodor.engine.backends.openvino_backend import cpu_supports_bf16  # noqa: E402
from hodor.engine.backends.openvino_ops import bf16_tensor  # noqa: E402
from hodor.engine.backends.winograd_conv import (  # noqa: E402
    MIN_CHANNELS,
    TILES,
    rewrite_winograd_ops,
    transformed_weights_for,
)
from tests.test_winograd_conv import OTHER_CONVOLUTIONS  # noqa: E402
from tests.test_winograd_conv import _conv_model as conv_model  # noqa: E402

needs_bf16 = pytest.mark.skipif(
    not cpu_supports_bf16(openvino.Core()), reason="this CPU has neither AVX-512 BF16 nor AMX"
)


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def _conv_model(out_ch: int, in_ch: int, bias: bool, seed: int = 0, **attrs) -> onnx.ModelProto:
    """``y = Relu(Conv(x))``, weights scaled as a trained layer's would be."""
    return conv_model(out_ch, in_ch, bias, seed, trained_scale=True, **attrs)


def _float64(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """What ``model`` (as :func:`_conv_model` builds it) computes, in float64."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    bias = torch.tensor(inits["b"], dtype=torch.float64) if "b" in inits else None
    y = torch.nn.functional.conv2d(
        torch.from_numpy(x).double(), torch.tensor(inits["w"], dtype=torch.float64), bias, padding=1
    )
    return torch.relu(y).numpy()


def _run(model: onnx.ModelProto, library: str, precision: str, x: np.ndarray) -> np.ndarray:
    core = openvino.Core()
    core.add_extension(library)
    compiled = core.compile_model(
        core.read_model(model.SerializeToString(), b""), "CPU", {"INFERENCE_PRECISION_HINT": precision}
    )
    return compiled.create_infer_request().infer({"x": x})[0]


@pytest.mark.parametrize("tile,tolerance", [(2, 1e-5), (3, 2e-5), (4, 2e-5), (6, 5e-5)])
@pytest.mark.parametrize(
    "out_ch,in_ch,bias,nchw",
    [(64, 64, True, False), (96, 64, False, False), (64, 128, True, True), (40, 24, True, True)],
)
def test_the_transforms_compute_the_convolution(
    openvino_ops_library, tile, tolerance, out_ch, in_ch, bias, nchw
):
    """Channels last (a ``Transpose`` either side) and channels first (the operations read and write
    NCHW themselves; 24 channels: a last block of 8 in their 16-channel copies)."""
    model = _conv_model(out_ch, in_ch, bias)
    want_model = onnx.ModelProto()
    want_model.CopyFrom(model)
    assert rewrite_winograd_ops(model, tile=tile, bf16=False, nchw=nchw, min_channels=16) == 1
    ops = [n.op_type for n in model.graph.node]
    assert "Conv" not in ops and {"HodorWinogradTiles", "HodorWinogradUntile", "MatMul"} <= set(ops)
    assert ("Transpose" in ops) != nchw
    assert {i.name for i in model.graph.initializer}.isdisjoint({"w", "b"})  # read by nothing now
    rng = np.random.default_rng(1)
    for n, h, w in [(1, 7, 11), (2, 16, 16), (1, 1, 1), (3, 13, 30), (1, 4, 5), (1, 2, 9), (1, 12, 18)]:
        x = rng.standard_normal((n, in_ch, h, w)).astype(np.float32)
        want = _float64(want_model, x)
        got = _run(model, openvino_ops_library, "f32", x)
        assert got.shape == want.shape
        assert _relative(got, want) <= tolerance, ((n, h, w), _relative(got, want))


@needs_bf16
@pytest.mark.parametrize("tile,tolerance", [(2, 1e-2), (3, 5e-2)])
@pytest.mark.parametrize("nchw", [False, True])
def test_in_bf16_within_a_bf16_products_error(openvino_ops_library, tile, tolerance, nchw):
    model = _conv_model(128, 128, True, seed=3)
    want_model = onnx.ModelProto()
    want_model.CopyFrom(model)
    assert rewrite_winograd_ops(model, tile=tile, bf16=True, nchw=nchw) == 1
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert TensorProto.BFLOAT16 in types.values()  # the transformed weights
    rng = np.random.default_rng(4)
    for shape in [(1, 128, 30, 52), (2, 128, 9, 13)]:
        x = rng.standard_normal(shape).astype(np.float32)
        error = _relative(_run(model, openvino_ops_library, "bf16", x), _float64(want_model, x))
        assert 1e-5 < error <= tolerance, (shape, error)  # bf16 really is in use, and within its limit


@pytest.mark.parametrize("case,attrs", OTHER_CONVOLUTIONS)
def test_other_convolutions_are_left_alone(case, attrs):
    model = _conv_model(64, 64, True, **attrs)
    before = model.SerializeToString()
    for tile in TILES:
        assert rewrite_winograd_ops(model, tile=tile) == 0, case
    assert model.SerializeToString() == before
    assert rewrite_winograd_ops(_conv_model(MIN_CHANNELS // 2, 256, True)) == 0  # too narrow to pay
    with pytest.raises(ValueError, match="2, 3, 4 or 6"):
        rewrite_winograd_ops(_conv_model(64, 64, True), tile=5)


def test_weight_transform_is_g_g_gt():
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((5, 3, 3, 3))
    u = transformed_weights_for(weight, 2).reshape(4, 4, 3, 5)
    g = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    assert np.allclose(u[:, :, 2, 4], g @ weight[4, 2] @ g.T, rtol=1e-6, atol=1e-6)
    assert u.dtype == np.float32


def test_bf16_constants_round_to_nearest_even():
    rng = np.random.default_rng(5)
    values = np.concatenate(
        [
            rng.standard_normal(1000) * 10.0 ** rng.integers(-8, 8, 1000),
            [0.0, -0.0, 1.0, 1 + 2**-8, 1 + 3 * 2**-8],
        ]
    ).astype(np.float32)
    tensor = bf16_tensor("t", values.reshape(5, -1))
    assert tensor.data_type == TensorProto.BFLOAT16 and list(tensor.dims) == [5, len(values) // 5]
    got = np.frombuffer(tensor.raw_data, np.uint16)
    want = torch.from_numpy(values).bfloat16().view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(got, want)
