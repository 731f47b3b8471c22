"""Running an exported stage's ONNX graph before and after an in-memory rewrite on the same
fresh inputs (ONNX Runtime, one thread), for the tests of the OpenVINO backend's rewrites."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
import torch

from hodor.export.onnx_export import _Bounds, example_inputs

NUM_BG = 9


def ort_session(model: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def rewrite_errors(
    original: onnx.ModelProto,
    rewritten: onnx.ModelProto,
    stage: str,
    cases: Sequence[tuple[int, int, int, int, int]],
    adjust: Callable[[dict[str, np.ndarray]], None] | None = None,
) -> list[float]:
    """Per case ``(streams, height, width, objects, history)``, random stage inputs (seeded by the
    case's index, changed in place by ``adjust``): the worst relative error
    ``max |after - before| / max |before|`` over the outputs' finite entries, the non-finite
    entries required to be the same."""
    before, after = ort_session(original), ort_session(rewritten)
    names = [i.name for i in original.graph.input]
    errors = []
    for seed, (streams, height, width, objects, history) in enumerate(cases):
        gen = torch.Generator().manual_seed(seed)
        inputs = example_inputs(stage, NUM_BG, _Bounds(1, height, width, objects, history, streams), gen)
        feeds = {name: t.numpy() for name, t in zip(names, inputs, strict=True)}
        if adjust is not None:
            adjust(feeds)
        worst = 0.0
        for want, got in zip(before.run(None, feeds), after.run(None, feeds), strict=True):
            finite = np.isfinite(want)
            assert np.array_equal(finite, np.isfinite(got)) and np.array_equal(want[~finite], got[~finite])
            worst = max(worst, float(np.abs(got - want)[finite].max() / np.abs(want[finite]).max()))
        errors.append(worst)
    return errors
