"""Choosing and opening a backend for a model path (``hodor-run --model/--backend/--device``).

A ``.pth`` file is an official checkpoint and runs on the torch backend. A directory
is an export (``hodor-export``): ONNX graphs and TensorRT engines with a manifest;
the backends that run those register in ``EXPORT_BACKENDS``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hodor.config import config_beside
from hodor.engine.backends.base import Backend, ConfigOverrides, ExportOpener
from hodor.engine.backends.onnxruntime_backend import open_onnxruntime_backend
from hodor.engine.backends.openvino_backend import PRECISIONS as OPENVINO_PRECISIONS
from hodor.engine.backends.openvino_backend import open_openvino_backend
from hodor.engine.backends.tensorrt_backend import open_tensorrt_backend
from hodor.engine.backends.torch_backend import TorchOptions, open_torch_backend
from hodor.errors import HodorError

BACKEND_CHOICES = ("auto", "torch", "onnxruntime", "openvino", "tensorrt")


EXPORT_BACKENDS: dict[str, ExportOpener] = {
    # TensorRT first: ``--backend auto`` prefers engines that run on this GPU. Then ONNX Runtime,
    # which also runs on a GPU; on the CPU OpenVINO goes before it (CPU_FIRST).
    "tensorrt": open_tensorrt_backend,
    "onnxruntime": open_onnxruntime_backend,
    "openvino": open_openvino_backend,
}
"""Export-directory backends by name, in the order ``--backend auto`` tries them where a GPU may
be used. Each opener imports its runtime (onnxruntime, openvino, tensorrt) only when called."""

CPU_FIRST = "openvino"
"""On the CPU (``--device cpu``, or no GPU) ``--backend auto`` tries this backend before ONNX
Runtime, in fp32 as in bf16. On a quiet 2-core machine OpenVINO ran whole 480p frames 1.14-1.29x
ONNX Runtime's rate (Winograd 3x3 convolutions, its own deformable convolution, fixed-shape
compilations), 1.06x with the cores shared; it starts about 0.5 s later once its cache is warm and
compiles the steady state's shapes once (under 1 s) (benchmarks/RESULTS.md). Where it is not
installed, ONNX Runtime."""

RUNTIME_PRECISIONS: dict[str, tuple[str, ...]] = {
    # OpenVINO compiles the fp32 graphs in either precision; ONNX Runtime picks the export's fp32 or
    # fp16 graphs (fp16 only where hodor-export --precision fp16 wrote them).
    "openvino": OPENVINO_PRECISIONS,
    "onnxruntime": ("fp32", "fp16"),
}
"""Export backends that take ``--precision`` when they open an export, and the precisions each
takes; their openers accept ``precision=``. TensorRT engines run the precision they were built in."""


def open_backend(
    model_path: str | Path,
    backend: str = "auto",
    device: str | None = None,
    overrides: ConfigOverrides | None = None,
    torch_options: TorchOptions | None = None,
) -> Backend:
    """Open ``model_path`` (a ``.pth`` checkpoint or an export directory) on ``backend``/``device``.

    ``overrides`` change the model's config (``--config``, ``--min-dim``, ``--max-dim``);
    ``torch_options`` say how the torch backend runs a checkpoint and are refused for an export.
    """
    path = Path(model_path)
    overrides = overrides or ConfigOverrides()
    torch_options = torch_options or TorchOptions()
    if backend not in BACKEND_CHOICES:
        raise HodorError(f"unknown backend {backend!r}: choose one of {', '.join(BACKEND_CHOICES)}")
    if path.is_dir():
        given = torch_options.given()
        if torch_options.kernels is not None or torch_options.cuda_graphs is False:
            raise HodorError(
                f"{' and '.join(given)} choose how the torch backend runs a .pth checkpoint, but {path} "
                "is an export directory, whose precision is fixed when it is built "
                "(hodor-export --precision): leave them out, or pass the checkpoint with --model"
            )
        return _open_export(path, backend, device, overrides, torch_options.precision)
    if not path.exists():
        raise HodorError(f"model not found: {path}")
    if backend not in ("auto", "torch"):
        raise HodorError(
            f"--backend {backend} runs an export directory, but {path} is a checkpoint file; "
            f"export it first (hodor-export {path}) or use --backend torch"
        )
    cfg = overrides.apply(config_beside(path, overrides.config_path))
    return open_torch_backend(
        path,
        cfg,
        device,
        kernels=torch_options.kernels,
        dtype=torch_options.precision,
        cuda_graphs=torch_options.cuda_graphs,
        backbone=torch_options.backbone,
    )


def _auto_order(device: str | None) -> list[str]:
    names = list(EXPORT_BACKENDS)
    on_cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    if on_cpu and CPU_FIRST in names and "onnxruntime" in names:
        names.remove(CPU_FIRST)
        names.insert(names.index("onnxruntime"), CPU_FIRST)
    return names


def _open_export(
    path: Path, backend: str, device: str | None, overrides: ConfigOverrides, precision: str | None
) -> Backend:
    if backend == "torch":
        raise HodorError(f"--backend torch needs a .pth checkpoint, but {path} is a directory (an export)")
    names = _auto_order(device) if backend == "auto" else [backend]
    if precision is not None:
        takers = [n for n in names if precision in RUNTIME_PRECISIONS.get(n, ())]
        if not takers:
            choices = "; ".join(f"{n}: {', '.join(p)}" for n, p in RUNTIME_PRECISIONS.items())
            which = (
                "no export backend takes it"
                if backend == "auto"
                else f"the {backend} backend does not take it"
            )
            raise HodorError(
                f"--precision {precision} with an export directory: {which} (precisions by backend: "
                f"{choices}; TensorRT engines run the precision they were built in, "
                "hodor-export --precision): "
                "choose another --precision or --backend, or pass the checkpoint with --model"
            )
        names = takers
    available = [n for n in names if n in EXPORT_BACKENDS]
    if not available:
        wanted = (
            "an onnxruntime, openvino or tensorrt backend" if backend == "auto" else f"the {backend} backend"
        )
        raise HodorError(
            f"{path} is an export directory, but {wanted} is not available in this installation; "
            "pass a .pth checkpoint with --model to run on the torch backend"
        )
    errors = []
    for name in available:
        try:
            if precision is not None:
                return EXPORT_BACKENDS[name](path, device, overrides, precision=precision)  # type: ignore[call-arg]
            return EXPORT_BACKENDS[name](path, device, overrides)
        except HodorError as exc:
            if backend != "auto":
                raise
            errors.append(f"{name}: {exc}")
    raise HodorError(f"no backend could open {path} ({'; '.join(errors)})")
